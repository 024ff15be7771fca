//! The blocking front-end: [`Context`], its builder, [`Ticket`]s and
//! [`Scope`]s.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};

use aio_abi::Errno;

use crate::buf::{IoBuf, IoBufMut, IoBufs, IoBufsMut};
use crate::core::{Core, Key, Stats};
use crate::driver::{Driver, Drivers, new_eventfd};
use crate::error::Error;
use crate::op::{Operation, Read, ReadV, Write, WriteV};

/// How completions are collected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reap {
    /// From the ring, unless the process runs under valgrind (which does
    /// not see the kernel write the ring): then like [`Reap::Syscall`].
    #[default]
    Auto,
    /// From the shared `aio_ring` without a system call whenever events are
    /// there; `io_getevents` only to sleep.
    Ring,
    /// Always through `io_getevents`.
    Syscall,
}

/// Whether valgrind's preload library is in this process.
fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|v| v.to_string_lossy().contains("vgpreload"))
}

/// Configures a [`Context`].
///
/// ```
/// use aio::{Context, Driver, Reap};
///
/// let ctx = Context::builder()
///     .queue_depth(128)
///     .eventfd(true)
///     .reap(Reap::Ring)
///     .driver(Driver::Kernel)
///     .build()
///     .unwrap();
/// assert_eq!(ctx.queue_depth(), 128);
/// assert!(ctx.eventfd().is_some());
/// ```
#[derive(Clone, Debug)]
pub struct ContextBuilder {
    depth: u32,
    eventfd: bool,
    reap: Reap,
    driver: Driver,
    check_direct: bool,
    submit_batch: usize,
}

impl Default for ContextBuilder {
    fn default() -> Self {
        ContextBuilder {
            depth: 128,
            eventfd: false,
            reap: Reap::Auto,
            driver: Driver::Auto,
            check_direct: true,
            submit_batch: 0,
        }
    }
}

impl ContextBuilder {
    /// The most requests in flight at once (default 128); the argument of
    /// `io_setup`. More can be queued: they are submitted as others
    /// complete.
    pub fn queue_depth(mut self, depth: u32) -> Self {
        self.depth = depth;
        self
    }

    /// Attach an eventfd that every completion increments (default no);
    /// see [`Context::eventfd`].
    pub fn eventfd(mut self, yes: bool) -> Self {
        self.eventfd = yes;
        self
    }

    /// How completions are collected (default [`Reap::Auto`]).
    pub fn reap(mut self, reap: Reap) -> Self {
        self.reap = reap;
        self
    }

    /// What executes the requests (default [`Driver::Auto`]).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = driver;
        self
    }

    /// Whether reads and writes on `O_DIRECT` descriptors are checked for
    /// alignment before submission (default yes). The check costs nothing
    /// for 4 KiB-aligned requests, otherwise one `fcntl` per descriptor per
    /// `io_submit` batch.
    pub fn check_direct_alignment(mut self, yes: bool) -> Self {
        self.check_direct = yes;
        self
    }

    /// While the kernel completes requests after `io_submit` returns (a
    /// disk, not the page cache or a RAM disk), splits a submission of many
    /// requests into calls of `n` or a little more (default 0: one call for
    /// everything queued), as fio's `iodepth_batch_submit`. A device handed
    /// a whole queue in one call may finish it in one burst and idle while
    /// the next is prepared: on this project's virtio disk, 4 KiB
    /// `O_DIRECT` random reads at depth 32 refilled in one call made
    /// 52-55k IOPS, in calls of 8 64-65k.
    pub fn submit_batch(mut self, n: usize) -> Self {
        self.submit_batch = n;
        self
    }

    /// Creates the context.
    ///
    /// Errors explain `io_setup` failures: `aio-max-nr` exhausted (with the
    /// sysctl to raise and the current values), AIO blocked by a seccomp
    /// filter or missing from the kernel, a depth out of range.
    pub fn build(self) -> io::Result<Context> {
        let (core, eventfd) = self.build_core(self.eventfd)?;
        Ok(Context {
            core: RefCell::new(core),
            eventfd,
            depth: self.depth,
            driver: self.driver,
        })
    }

    /// The completion machinery this builder describes, with an eventfd
    /// signalled by every completion if `eventfd`.
    pub(crate) fn build_core(&self, eventfd: bool) -> io::Result<(Core, Option<OwnedFd>)> {
        let use_ring = match self.reap {
            Reap::Auto => !under_valgrind(),
            Reap::Ring => true,
            Reap::Syscall => false,
        };
        let eventfd = if eventfd { Some(new_eventfd()?) } else { None };
        // The engine's ring is memory of this process, which valgrind sees
        // written.
        let engine_ring = self.reap != Reap::Syscall;
        let drivers = Drivers::new(
            self.driver,
            self.depth,
            use_ring,
            engine_ring,
            eventfd.as_ref().map(|fd| fd.as_raw_fd()),
        )?;
        let core = Core::new(
            drivers,
            self.depth as usize,
            self.check_direct,
            self.submit_batch,
        );
        Ok((core, eventfd))
    }

    /// The queue depth set so far.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }
}

/// An AIO context: a queue of requests, the kernel context that runs them,
/// and the slots that own their buffers until they complete.
///
/// Requests are pushed with [`push`](Context::push), which queues them and
/// returns a [`Ticket`]; everything queued goes to the kernel in one
/// `io_submit` per driver (split only when the ring is full) at the next
/// [`submit`](Context::submit), [`wait`](Context::wait) or
/// [`Ticket::wait`].
///
/// # Threading
///
/// A context is `Send` but not `Sync`: the thread that holds it submits and
/// reaps; move it to another thread to hand both roles over. For
/// parallelism, use one context per thread.
///
/// # Dropping
///
/// Dropping a context destroys the kernel context, which returns only when
/// every submitted request has completed; only then are the buffers the
/// slots still own dropped. Requests still queued (never submitted) are
/// dropped without running: call [`drain`](Context::drain) first to run
/// them. Leaking a context (`mem::forget`) leaks its buffers, which is
/// safe.
///
/// ```
/// use aio::{Context, Read, Write};
/// use std::sync::Arc;
///
/// let file = Arc::new(tempfile::tempfile().unwrap());
/// let ctx = Context::new(32).unwrap();
/// let w = ctx.push(Write::new(file.clone(), b"hello".to_vec(), 0));
/// let x = ctx.push(Write::new(file.clone(), b"world".to_vec(), 5));
/// // Both requests are submitted together; they may run in any order.
/// ctx.submit();
/// assert_eq!(w.wait().0.unwrap(), 5);
/// assert_eq!(x.wait().0.unwrap(), 5);
/// // Wait for a write before reading what it wrote.
/// let (n, buf) = ctx.run(Read::new(&file, vec![0u8; 10], 0));
/// assert_eq!((n.unwrap(), &buf[..]), (10, &b"helloworld"[..]));
/// assert_eq!(ctx.stats().requests, 3);
/// ```
pub struct Context {
    core: RefCell<Core>,
    // Declared after `core`: closed only once the requests are done.
    eventfd: Option<OwnedFd>,
    depth: u32,
    driver: Driver,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Context");
        d.field("depth", &self.depth).field("driver", &self.driver);
        if let Ok(core) = self.core.try_borrow() {
            d.field("queued", &core.queued())
                .field("in_flight", &core.in_flight())
                .field("reaps_ring", &core.reaps_ring());
        }
        d.finish_non_exhaustive()
    }
}

fn fatal(what: &str, e: Errno) -> ! {
    // Returning would let memory the kernel may still write be reused.
    eprintln!("aio: {what}: {e}; aborting, since requests may still be in flight");
    std::process::abort()
}

impl Context {
    /// A context on the running kernel with room for `depth` requests in
    /// flight; see [`ContextBuilder::build`] for the errors.
    pub fn new(depth: u32) -> io::Result<Context> {
        Context::builder().queue_depth(depth).build()
    }

    /// A builder with the defaults.
    pub fn builder() -> ContextBuilder {
        ContextBuilder::default()
    }

    fn core(&self) -> std::cell::RefMut<'_, Core> {
        self.core
            .try_borrow_mut()
            .expect("aio::Context used re-entrantly (from a buffer's Drop?)")
    }

    /// Queues a request whose file and buffers it owns until completion
    /// (`'static`: a share of the file such as `Arc<File>`, and owned
    /// buffers; borrowed ones go through [`scope`](Context::scope) or
    /// [`run`](Context::run)). Nothing reaches the kernel before the next
    /// [`submit`](Context::submit), [`wait`](Context::wait) or
    /// [`Ticket::wait`].
    ///
    /// A read or write on an `O_DIRECT` descriptor that breaks the file's
    /// alignment is refused when it would be submitted: its ticket
    /// completes with an error naming the required alignment, and the
    /// kernel never sees it.
    #[must_use = "dropping the ticket detaches the request; call wait() for its result"]
    pub fn push<O>(&self, op: O) -> Ticket<'_, O>
    where
        O: Operation + Send + 'static,
    {
        let key = self.core().push(|iovs| op.prepare(iovs), 0);
        Ticket::new(self, key)
    }

    /// Pushes `op` and waits for it. Unlike [`push`](Context::push), the
    /// operation may borrow its file and buffers: it runs in a
    /// [`scope`](Context::scope) of its own, which returns only once the
    /// request is done.
    pub fn run<O: Operation>(&self, op: O) -> O::Output {
        self.scope(|s| s.push(op).wait())
    }

    /// Hands every queued request to the kernel: one `io_submit` for all of
    /// them when they fit in the ring, otherwise as many as fit, reaping
    /// completions (and sleeping for them if needed) to make room. Returns
    /// how many were handed over or refused by `io_submit` (those complete
    /// with the error).
    ///
    /// # Panics
    /// If waiting for room fails in `io_getevents` with anything but
    /// `EINTR` (not expected of a live context); the requests stay owned
    /// by the context.
    pub fn submit(&self) -> usize {
        let mut core = self.core();
        let before = core.queued();
        if let Err(e) = core.flush() {
            drop(core);
            panic!("aio: io_getevents failed: {e}");
        }
        before
    }

    /// Processes the completions that are ready, without sleeping; returns
    /// how many. Submits nothing new, with one exception under
    /// [`Driver::Auto`]: a buffered read the page cache could not serve
    /// goes on to the engine here (with the rest of the queue, if any),
    /// since its caller already submitted it.
    pub fn reap(&self) -> usize {
        let mut core = self.core();
        let n = core.reap_nonblocking();
        if core.take_requeued() {
            core.submit_some();
        }
        n
    }

    /// Submits what is queued, then sleeps until at least one request has
    /// completed (unless none is in flight); returns how many completions
    /// were processed.
    ///
    /// # Panics
    /// As [`submit`](Context::submit).
    pub fn wait(&self) -> usize {
        let mut core = self.core();
        let before = core.stats().completions;
        let r = core
            .drive(|c| c.stats().completions > before || (c.in_flight() == 0 && c.queued() == 0));
        if let Err(e) = r {
            drop(core);
            panic!("aio: io_getevents failed: {e}");
        }
        (core.stats().completions - before) as usize
    }

    /// Submits what is queued and waits until nothing is in flight.
    ///
    /// # Panics
    /// As [`submit`](Context::submit).
    pub fn drain(&self) {
        let mut core = self.core();
        if let Err(e) = core.drive(|c| c.in_flight() == 0 && c.queued() == 0) {
            drop(core);
            panic!("aio: io_getevents failed: {e}");
        }
    }

    /// Requests handed to the kernel whose events have not been processed.
    pub fn in_flight(&self) -> usize {
        self.core().in_flight()
    }

    /// Requests pushed but not yet handed to the kernel.
    pub fn queued(&self) -> usize {
        self.core().queued()
    }

    /// Counters of requests, `io_submit` calls, `io_getevents` calls and
    /// ring reaps.
    pub fn stats(&self) -> Stats {
        self.core().stats()
    }

    /// The queue depth given to `io_setup`.
    pub fn queue_depth(&self) -> u32 {
        self.depth
    }

    /// The driver running the requests.
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Why this context runs every request on the userspace engine
    /// although it was built with [`Driver::Auto`]: `io_setup` failed
    /// with `ENOSYS` or `EPERM` (the kernel lacks AIO, or a seccomp filter
    /// refuses it), and the error says which and why. `None` when the
    /// kernel's AIO is in use, and for [`Driver::Kernel`] and
    /// [`Driver::Engine`], which never fall back.
    ///
    /// ```
    /// let ctx = aio::Context::new(8).unwrap();
    /// if let Some(why) = ctx.kernel_unavailable() {
    ///     eprintln!("engine: {}", why.message());
    /// }
    /// ```
    pub fn kernel_unavailable(&self) -> Option<Error> {
        self.core().kernel_unavailable().cloned()
    }

    /// Whether completions are reaped from the ring without system calls.
    pub fn reaps_ring(&self) -> bool {
        self.core().reaps_ring()
    }

    /// The eventfd every completion increments, if the builder asked for
    /// one. Poll it for readability, read it to reset it, then call
    /// [`reap`](Context::reap).
    pub fn eventfd(&self) -> Option<BorrowedFd<'_>> {
        self.eventfd.as_ref().map(|fd| fd.as_fd())
    }

    /// Runs `f` with a [`Scope`] that lends borrowed buffers (stack arrays,
    /// slices of a larger buffer) to requests, and returns only after every
    /// request pushed through the scope has completed, also when `f`
    /// panics (the panic is then resumed). Requests the scope queued but
    /// never submitted are dropped if `f` panics, submitted otherwise.
    ///
    /// A [`Poll`](crate::Poll) pushed through the scope that never becomes
    /// ready keeps the scope waiting (after a panic, such polls are
    /// cancelled).
    ///
    /// Soundness does not depend on the tickets: the wait happens in this
    /// function's frame, after `f` returns, so forgetting a ticket or
    /// anything else cannot skip it.
    ///
    /// ```
    /// use aio::Context;
    /// use std::io::Write;
    ///
    /// let mut file = tempfile::tempfile().unwrap();
    /// file.write_all(b"0123456789").unwrap();
    /// let ctx = Context::new(8).unwrap();
    /// let mut head = [0u8; 4];
    /// let (mut a, mut b) = ([0u8; 3], [0u8; 3]);
    /// ctx.scope(|s| {
    ///     s.read_at(&file, &mut head, 0);
    ///     let t = s.readv_at(&file, [&mut a, &mut b], 4);
    ///     assert_eq!(t.wait().0.unwrap(), 6);
    /// });
    /// assert_eq!((&head, &a, &b), (b"0123", b"456", b"789"));
    /// ```
    pub fn scope<'env, F, T>(&'env self, f: F) -> T
    where
        F: for<'scope> FnOnce(&'scope Scope<'scope, 'env>) -> T,
    {
        let id = self.core().open_scope();
        let scope = Scope {
            ctx: self,
            id,
            _scope: PhantomData,
            _env: PhantomData,
        };
        let result = panic::catch_unwind(AssertUnwindSafe(|| f(&scope)));
        let mut payload = None;
        if result.is_err() {
            // What the scope queued but never submitted can simply be dropped.
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| self.core().abandon_scope(id)))
            {
                payload = Some(p);
            }
        }
        // Wait for every request of the scope. A panic here (from a
        // buffer's Drop) must not end the wait early.
        loop {
            let waited = panic::catch_unwind(AssertUnwindSafe(|| {
                let mut core = self.core();
                core.drive(|c| c.scope_pending(id) == 0)?;
                core.close_scope(id);
                Ok::<(), Errno>(())
            }));
            match waited {
                Ok(Ok(())) => break,
                Ok(Err(e)) => fatal("waiting for a scope's requests failed", e),
                Err(p) => {
                    payload.get_or_insert(p);
                }
            }
        }
        match result {
            Ok(value) => match payload {
                Some(p) => panic::resume_unwind(p),
                None => value,
            },
            Err(p) => panic::resume_unwind(p),
        }
    }
}

/// A pending request. [`wait`](Ticket::wait) returns its output (for reads
/// and writes the byte count and the buffers).
///
/// Dropping a ticket detaches the request: it still runs (if queued, at the
/// next submission), and its slot drops the buffers once its event has
/// arrived. Forgetting a ticket keeps its slot and buffers until the
/// context is dropped. Either way the kernel never writes freed memory,
/// because the slot, not the ticket, owns the buffers.
pub struct Ticket<'a, O: Operation> {
    ctx: &'a Context,
    key: Key,
    _op: PhantomData<fn() -> O>,
}

impl<O: Operation> fmt::Debug for Ticket<'_, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("key", &self.key).finish()
    }
}

impl<'a, O: Operation> Ticket<'a, O> {
    fn new(ctx: &'a Context, key: Key) -> Self {
        Ticket {
            ctx,
            key,
            _op: PhantomData,
        }
    }

    /// Submits what is queued if needed, waits for this request, and
    /// returns its output.
    ///
    /// # Panics
    /// If `io_getevents` fails with anything but `EINTR` (the request then
    /// stays detached, its buffers owned by the context).
    pub fn wait(self) -> O::Output {
        let this = ManuallyDrop::new(self);
        let key = this.key;
        let mut core = this.ctx.core();
        if let Err(e) = core.drive(|c| c.is_done(key)) {
            drop(core);
            drop(ManuallyDrop::into_inner(this));
            panic!("aio: io_getevents failed: {e}");
        }
        // SAFETY: the key came from `push` with this `O`, and the ticket is
        // consumed here, so it is taken once.
        unsafe { core.take::<O>(key) }
    }

    /// The output if the request is done, otherwise the ticket back.
    /// Submits what is queued and fits in the ring, and processes the
    /// completions that are ready, without sleeping.
    pub fn try_wait(self) -> Result<O::Output, Self> {
        let mut core = self.ctx.core();
        if !core.is_done(self.key) {
            core.submit_some();
            core.reap_nonblocking();
            if !core.is_done(self.key) {
                drop(core);
                return Err(self);
            }
        }
        let key = self.key;
        drop(core);
        let this = ManuallyDrop::new(self);
        // SAFETY: as in `wait`.
        Ok(unsafe { this.ctx.core().take::<O>(key) })
    }

    /// Whether the request's result is available (no reaping).
    pub fn is_done(&self) -> bool {
        self.ctx.core().is_done(self.key)
    }
}

impl<O: Operation> Drop for Ticket<'_, O> {
    fn drop(&mut self) {
        // If the context is busy (a drop from inside its own code), keep
        // the slot: leaking it is safe.
        if let Ok(mut core) = self.ctx.core.try_borrow_mut() {
            core.detach(self.key);
        }
    }
}

/// Lends borrowed buffers to requests; see [`Context::scope`].
///
/// Buffers are borrowed for `'scope`, which ends only after the scope has
/// waited for every one of its requests.
pub struct Scope<'scope, 'env: 'scope> {
    ctx: &'env Context,
    id: u64,
    _scope: PhantomData<&'scope mut &'scope ()>,
    _env: PhantomData<&'env mut &'env ()>,
}

impl fmt::Debug for Scope<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope").field("id", &self.id).finish()
    }
}

impl<'scope, 'env> Scope<'scope, 'env> {
    /// Queues any operation whose file and buffers may be borrowed for the
    /// scope (`&File`, `&mut [u8]`, arrays or `Vec`s of slices, …); queued
    /// like [`Context::push`]. The operation, and with it every borrow,
    /// is consumed: nothing the request uses can be touched until the
    /// scope has waited for it.
    pub fn push<O: Operation + 'scope>(&'scope self, op: O) -> Ticket<'scope, O> {
        let key = self.ctx.core().push(|iovs| op.prepare(iovs), self.id);
        Ticket::new(self.ctx, key)
    }

    /// `pread`: reads into `buf` (`&mut [u8]`, `&mut [u8; N]`, or any
    /// [`IoBufMut`]) from `offset` of `fd`; the ticket gives back the
    /// count and the buffer.
    pub fn read_at<F: AsFd + 'scope, B: IoBufMut + 'scope>(
        &'scope self,
        fd: F,
        buf: B,
        offset: u64,
    ) -> Ticket<'scope, Read<F, B>> {
        self.push(Read::new(fd, buf, offset))
    }

    /// `pwrite`: writes `buf` (`&[u8]`, `&[u8; N]`, or any [`IoBuf`]) at
    /// `offset` of `fd`.
    pub fn write_at<F: AsFd + 'scope, B: IoBuf + 'scope>(
        &'scope self,
        fd: F,
        buf: B,
        offset: u64,
    ) -> Ticket<'scope, Write<F, B>> {
        self.push(Write::new(fd, buf, offset))
    }

    /// `preadv`: fills `bufs` in order from `offset`. The segments are
    /// taken by value (an array or a `Vec` of `&mut [u8]`), so the caller
    /// keeps no access to them while the request runs.
    pub fn readv_at<F: AsFd + 'scope, B: IoBufsMut + 'scope>(
        &'scope self,
        fd: F,
        bufs: B,
        offset: u64,
    ) -> Ticket<'scope, ReadV<F, B>> {
        self.push(ReadV::new(fd, bufs, offset))
    }

    /// `pwritev`: writes `bufs` in order at `offset`.
    pub fn writev_at<F: AsFd + 'scope, B: IoBufs + 'scope>(
        &'scope self,
        fd: F,
        bufs: B,
        offset: u64,
    ) -> Ticket<'scope, WriteV<F, B>> {
        self.push(WriteV::new(fd, bufs, offset))
    }

    /// Submits everything queued on the context; see [`Context::submit`].
    pub fn submit(&self) -> usize {
        self.ctx.submit()
    }

    /// The context, for owned requests alongside the scoped ones.
    pub fn context(&self) -> &'env Context {
        self.ctx
    }
}
