//! The tokio front-end (feature `tokio`): futures over the same slots,
//! batching and reaping as the blocking [`Context`](crate::Context).
//!
//! ```
//! use aio::tokio::File;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let file = File::options()
//!     .read(true)
//!     .write(true)
//!     .create(true)
//!     .open(dir.path().join("data"))
//!     .await?;
//! // Buffers move into the request and come back with the result.
//! let (n, _bufs) = file
//!     .writev_at(vec![b"hello, ".to_vec(), b"world".to_vec()], 0)
//!     .await;
//! assert_eq!(n?, 12);
//! let (n, bufs) = file.readv_at(vec![vec![0u8; 5], vec![0u8; 7]], 0).await;
//! assert_eq!(n?, 12);
//! assert_eq!((&bufs[0][..], &bufs[1][..]), (&b"hello"[..], &b", world"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! # The driver
//!
//! A [`Handle`] is one AIO context whose eventfd is registered with the
//! runtime's reactor ([`AsyncFd`]) and served by a task spawned on that
//! runtime: it reaps completions from the ring and wakes the futures
//! waiting for them. [`Handle::current`] is the runtime's shared driver
//! (one per runtime, created on first use); [`Builder`] creates others.
//! Both runtime flavours are supported, and every future is `Send`.
//!
//! Requests that complete inside `io_submit` (page-cached reads, `Auto`'s
//! `RWF_NOWAIT` tries, a RAM disk such as zram) are reaped right after it,
//! by the task that submitted them, so the kernel's eventfd signal for each
//! of them would only wake the reactor and the driver for nothing. After
//! 1024 kernel requests in a row that completed that way (at once for
//! `RWF_NOWAIT` tries), reads and writes go without the signal; if one of
//! them then completes later after all, the driver polls the ring for it,
//! instead of sleeping, until it is done, and the next requests signal
//! again. [`Stats::quiet_submitted`] and
//! [`Stats::quiet_polls`] count both.
//!
//! # Batching
//!
//! A request is queued when its future is first polled. The future that
//! queues the first request of a batch asks to be polled again at once,
//! and on that second poll hands everything queued to the kernel in one
//! `io_submit`. So the requests of futures polled in the same pass (under
//! `join_all`, `FuturesUnordered`, `join!`, or in tasks scheduled one
//! after the other) reach the kernel together: [`Handle::stats`] counts
//! the `io_submit` calls. A batch also goes at once when it fills the
//! room left in the ring, when its first future is dropped, when any of
//! its futures is polled again, or when the driver task has run twice
//! since it began and found the batch no longer growing. A request of
//! another waker that joins a batch wakes the driver task for that, so a
//! first future held without being polled (the loser of
//! `futures::future::select`) or forgotten delays the requests after it by
//! two passes of the driver at most. On a multi-thread runtime the driver
//! task runs beside the worker that queues a batch, so a worker
//! descheduled in the middle of queuing can see its batch go in parts. When the ring is full,
//! the driver submits the rest, in the order queued, as completions make
//! room.
//!
//! One request at a time is not batched: while the last two batches were
//! single requests and nothing is in flight or queued, a future's first
//! poll submits its request at once (and returns its result, if the
//! kernel completed it inside `io_submit`), sparing depth-1 I/O a trip
//! through the scheduler and the reactor. Every 17th such request waits
//! for a batch instead, to find out whether other futures are issuing
//! requests too (many loops whose requests all complete inside
//! `io_submit` each find nothing in flight); the first batch of two or
//! more returns to batching.
//!
//! # Cancellation and shutdown
//!
//! Linux cannot cancel file I/O, so the request's slot in the driver, not
//! the future, owns the buffers from the first poll until the event:
//!
//! - a future dropped before its first poll drops its buffers with it;
//! - dropped while queued (not yet submitted), its request is removed from
//!   the queue and its buffers dropped: the kernel never sees it;
//! - dropped while in flight, its slot keeps the buffers until the event
//!   arrives, then drops them; a [`poll`] is cancelled with `io_cancel`
//!   and its slot released when the cancellation's event arrives;
//! - dropped after completion, before being polled again, the result and
//!   buffers are dropped.
//!
//! When the runtime shuts down, the driver task is dropped: it finishes
//! queued requests with `ECANCELED`, cancels waiting polls and waits
//! (blocking the thread that drops the runtime, for as long as the
//! in-flight I/O takes) until every request in flight has its event.
//! Futures that outlive the runtime then return their results when polled,
//! new ones fail with `ECANCELED`, and no buffer is in the kernel's hands.
//! The context itself (`io_destroy`, which also waits for in-flight
//! requests) goes when the last handle, file and future are gone.
//!
//! # No worker blocks in `io_submit`
//!
//! Linux completes buffered file I/O (and a read of an empty pipe or
//! socket) inside `io_submit`, which would block the tokio worker that
//! polls the future. Handles use [`Driver::Auto`](crate::Driver::Auto) by
//! default: `O_DIRECT` I/O, polls and syncs go to the kernel, page-cached
//! reads are copied by the kernel with `RWF_NOWAIT` (which never waits),
//! and everything that could wait — cold reads, buffered writes, pipes,
//! sockets — runs on the userspace engine's threads. With
//! [`Driver::Kernel`](crate::Driver::Kernel) only `O_DIRECT` reads and
//! writes and [`poll`] are truly asynchronous.

mod file;

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll as TaskPoll, Waker};

use ::tokio::io::Interest;
use ::tokio::io::unix::AsyncFd;
use ::tokio::runtime;
use aio_abi::{Errno, PollEvents};

use crate::context::{ContextBuilder, Reap};
use crate::core::{Core, Key, Stats, Submitted};
use crate::driver::Driver;
use crate::erased::Erased;
use crate::error::explained;
use crate::op::{Operation, Poll};

pub use file::{File, OpenOptions};

/// Configures a [`Handle`]: a driver of its own, on the current runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = aio::tokio::Builder::new().queue_depth(256).build().unwrap();
/// assert_eq!(handle.queue_depth(), 256);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Builder {
    inner: ContextBuilder,
}

impl Builder {
    /// The defaults of [`ContextBuilder`].
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The most requests in flight at once (default 128); more are queued.
    pub fn queue_depth(mut self, depth: u32) -> Self {
        self.inner = self.inner.queue_depth(depth);
        self
    }

    /// How completions are collected (default [`Reap::Auto`]; use
    /// [`Reap::Syscall`] under tools that cannot see the kernel write the
    /// ring).
    pub fn reap(mut self, reap: Reap) -> Self {
        self.inner = self.inner.reap(reap);
        self
    }

    /// What executes the requests (default [`Driver::Auto`], under which no
    /// worker thread waits inside `io_submit`).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.inner = self.inner.driver(driver);
        self
    }

    /// See [`ContextBuilder::submit_batch`].
    pub fn submit_batch(mut self, n: usize) -> Self {
        self.inner = self.inner.submit_batch(n);
        self
    }

    /// See [`ContextBuilder::check_direct_alignment`].
    pub fn check_direct_alignment(mut self, yes: bool) -> Self {
        self.inner = self.inner.check_direct_alignment(yes);
        self
    }

    /// Creates the context and spawns its driver task on the current
    /// runtime.
    ///
    /// Errors: no runtime, or `io_setup` failing (see
    /// [`ContextBuilder::build`]).
    ///
    /// # Panics
    /// If the runtime was built without its I/O driver (`enable_io`), as
    /// tokio's `AsyncFd` does.
    pub fn build(self) -> io::Result<Handle> {
        let rt = runtime::Handle::try_current().map_err(io::Error::other)?;
        let handle = self.build_on(&rt)?;
        Ok(handle)
    }

    fn build_on(&self, rt: &runtime::Handle) -> io::Result<Handle> {
        let (mut core, eventfd) = self.inner.build_core(true)?;
        core.defer_drops();
        // Every submission is followed by a reap of the ring (`flush`), and
        // the driver polls while a quiet request is pending.
        core.quiet_completions();
        let eventfd = eventfd.expect("asked for an eventfd");
        let afd = {
            let _entered = rt.enter();
            // SAFETY: the AsyncFd owns the eventfd, which stays open and
            // is never swapped for another until the AsyncFd is dropped.
            unsafe { AsyncFd::register_with_interest(eventfd, Interest::READABLE) }?
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                core,
                closed: false,
                orphaned: false,
                backlog: false,
                driver: None,
                default_of: None,
                owed: false,
                batch: 0,
                driver_polls: 0,
                owed_since: 0,
                singles: 0,
                lone_streak: 0,
                owner: None,
                rescue: false,
                queued_at_pass: None,
            }),
            depth: self.inner.depth(),
        });
        rt.spawn(DriverTask {
            shared: shared.clone(),
            afd,
            wakers: Vec::with_capacity(self.inner.depth() as usize),
            graveyard: Vec::new(),
        });
        Ok(Handle {
            user: Arc::new(User { shared }),
        })
    }
}

/// A driver: an AIO context served by a task on a tokio runtime.
///
/// Cheap to clone (all clones share the context). Files, futures and the
/// driver's task keep the context alive; when the last handle, file and
/// future are gone, the task finishes the requests still in flight (those
/// of dropped futures) and ends.
#[derive(Clone)]
pub struct Handle {
    user: Arc<User>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("depth", &self.user.shared.depth)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One driver per running runtime, for [`Handle::current`].
static DEFAULTS: Mutex<Vec<(runtime::Id, Handle)>> = Mutex::new(Vec::new());

fn defaults() -> MutexGuard<'static, Vec<(runtime::Id, Handle)>> {
    DEFAULTS.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Handle {
    /// The current runtime's driver, created with the defaults on first
    /// use; it lives as long as the runtime.
    ///
    /// Errors and panics: as [`Builder::build`].
    pub fn current() -> io::Result<Handle> {
        let rt = runtime::Handle::try_current().map_err(io::Error::other)?;
        let id = rt.id();
        let mut defaults = defaults();
        if let Some((_, h)) = defaults.iter().find(|(i, _)| *i == id) {
            if !h.user.shared.lock().closed {
                return Ok(h.clone());
            }
        }
        let handle = Builder::new().build_on(&rt)?;
        handle.user.shared.lock().default_of = Some(id);
        // An entry left by a runtime that ended (ids are reused) goes.
        let stale = defaults
            .iter()
            .position(|(i, _)| *i == id)
            .map(|pos| defaults.swap_remove(pos));
        defaults.push((id, handle.clone()));
        drop(defaults);
        drop(stale);
        Ok(handle)
    }

    /// A driver of its own on the current runtime, with the defaults.
    pub fn new() -> io::Result<Handle> {
        Builder::new().build()
    }

    /// A builder.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Runs any operation; see the module docs for batching and
    /// cancellation. The operation owns its file handle (`Arc<File>`,
    /// `OwnedFd`, …) and buffers, which its slot keeps until the event has
    /// been processed, even if the future is dropped or forgotten.
    pub fn run<O>(&self, op: O) -> Op<O>
    where
        O: Operation + Send + 'static,
    {
        Op::new(self.clone(), op)
    }

    /// Waits until `fd` is ready for one of `events` (`IOCB_CMD_POLL`);
    /// `POLLERR` and `POLLHUP` are always reported. Dropping the future
    /// cancels the poll. The request polls a duplicate of `fd` (the same
    /// open file, so the same readiness), which it holds until its event:
    /// the caller's descriptor is borrowed only for this call. To spare
    /// the `dup`, [`run`](Handle::run) a [`Poll`] of an owned handle.
    pub fn poll(
        &self,
        fd: impl AsFd,
        events: PollEvents,
    ) -> impl Future<Output = io::Result<PollEvents>> + Send + 'static {
        let op = (fd.as_fd().try_clone_to_owned()).map(|fd| self.run(Poll::new(fd, events)));
        async move { op?.await }
    }

    /// Counters of requests, `io_submit` and `io_getevents` calls, ring
    /// reaps and completions.
    pub fn stats(&self) -> Stats {
        self.user.shared.lock().core.stats()
    }

    /// Requests handed to the kernel whose events have not been processed.
    pub fn in_flight(&self) -> usize {
        self.user.shared.lock().core.in_flight()
    }

    /// Why this driver runs every request on the userspace engine; see
    /// [`Context::kernel_unavailable`](crate::Context::kernel_unavailable).
    pub fn kernel_unavailable(&self) -> Option<crate::Error> {
        self.user.shared.lock().core.kernel_unavailable().cloned()
    }

    /// Requests queued for the next `io_submit`.
    pub fn queued(&self) -> usize {
        self.user.shared.lock().core.queued()
    }

    /// The queue depth given to `io_setup`.
    pub fn queue_depth(&self) -> u32 {
        self.user.shared.depth
    }

    /// Whether completions are reaped from the ring without system calls.
    pub fn reaps_ring(&self) -> bool {
        self.user.shared.lock().core.reaps_ring()
    }

    /// Whether the runtime the driver ran on has shut down: new requests
    /// then fail with `ECANCELED`.
    pub fn is_closed(&self) -> bool {
        self.user.shared.lock().closed
    }
}

/// Waits until `fd` is ready for one of `events`, with the current
/// runtime's driver: [`Handle::poll`] on [`Handle::current`].
///
/// ```
/// use aio::PollEvents;
/// use tokio::net::UnixStream;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (a, _b) = UnixStream::pair().unwrap();
/// let ready = aio::tokio::poll(&a, PollEvents::OUT).await.unwrap();
/// assert!(ready.contains(PollEvents::OUT));
/// # }
/// ```
pub async fn poll(fd: impl AsFd, events: PollEvents) -> io::Result<PollEvents> {
    let handle = Handle::current()?;
    handle.poll(fd, events).await
}

/// What users hold; when the last one goes, the driver task may end.
struct User {
    shared: Arc<Shared>,
}

impl Drop for User {
    fn drop(&mut self) {
        let driver = {
            let mut st = self.shared.lock();
            st.orphaned = true;
            st.driver.take()
        };
        if let Some(w) = driver {
            w.wake();
        }
    }
}

struct Shared {
    state: Mutex<State>,
    depth: u32,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The core stays consistent when a panic unwinds through it (no
        // foreign code runs under this lock but the buffers' `prepare`,
        // which runs before a slot is taken).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct State {
    core: Core,
    /// The runtime shut down: the core was drained; nothing new runs.
    closed: bool,
    /// No handle, file or future is left.
    orphaned: bool,
    /// The ring was full at the last submission: the driver submits the
    /// rest as completions make room.
    backlog: bool,
    /// The driver task, woken when the last user goes.
    driver: Option<Waker>,
    /// The runtime whose default driver this is ([`Handle::current`]).
    default_of: Option<runtime::Id>,
    /// Requests are queued and the future that queued the first of them
    /// (the batch's flusher) will submit them when it is polled again.
    owed: bool,
    /// Identifies the batch a flusher owes.
    batch: u64,
    /// Driver polls so far, and their count when the owed batch began.
    driver_polls: u64,
    owed_since: u64,
    /// Batches in a row that held one request each.
    singles: u32,
    /// Requests submitted one at a time in a row (see [`State::enqueue`]).
    lone_streak: u32,
    /// The waker of the owed batch's first future.
    owner: Option<Waker>,
    /// A request of another waker joined the owed batch: the driver task
    /// submits the batch if its first future is not polled again (see
    /// [`State::enqueue`]).
    rescue: bool,
    /// The queue's length at the driver task's last pass over the owed
    /// batch: a batch still growing is not stale.
    queued_at_pass: Option<usize>,
}

impl State {
    /// Submits what is queued (as much as the rings have room for), then
    /// processes the events already in the rings: page-cached reads
    /// complete inside `io_submit`, so their futures are woken without
    /// waiting for the driver task. Reads that missed the page cache come
    /// back to the queue and are submitted again, to the engine.
    fn flush(&mut self) {
        self.owed = false;
        match self.core.queued() {
            0 => {}
            1 => self.singles = self.singles.saturating_add(1),
            _ => self.singles = 0,
        }
        // Events already there free ring slots for this submission.
        self.core.reap_ring();
        loop {
            self.backlog = self.core.submit_some() == Submitted::Full;
            self.core.reap_ring();
            if !self.core.take_requeued() || self.backlog {
                break;
            }
        }
        if self.core.quiet_pending() {
            // A request expected to complete inside io_submit did not, and
            // will not signal the eventfd: the driver task polls for it.
            if let Some(w) = &self.driver {
                w.wake_by_ref();
            }
        }
    }

    /// Queues the request of a future's first poll; returns the batch it
    /// must flush on its next poll, if it is the batch's first request.
    ///
    /// The first future of a batch asks to be polled again at once, and
    /// so is every future polled with the same waker (its wake-up is the
    /// same). A future of another waker that joins the batch wakes the
    /// driver task (nothing else may: the requests in flight may never
    /// complete), which submits the batch once a pass of its finds it
    /// owed and no longer growing: a first future held without being
    /// polled, or forgotten, does not strand the requests after it.
    fn enqueue<O: Operation>(&mut self, op: O, waker: &Waker) -> (Key, Option<u64>) {
        let key = self.core.push(|iovs| op.prepare(iovs), 0);
        if !self.owed
            && self.singles >= 2
            && self.core.in_flight() == 0
            && self.core.queued() == 1
            && self.lone_streak < LONE_PROBE
        {
            // One request at a time lately (two batches of one in a row:
            // one alone can be an accident of polling order among many
            // requesters), and nothing else in flight:
            // submitted now, without waiting for a batch to form (which
            // costs a trip through the scheduler and the reactor). The
            // waker is set after: one done inside io_submit wakes nobody.
            self.lone_streak += 1;
            self.flush();
            if !self.core.is_done(key) {
                self.core.set_waker(key, waker);
            }
            return (key, None);
        }
        self.core.set_waker(key, waker);
        if !self.owed {
            self.lone_streak = 0;
            self.owed = true;
            self.batch += 1;
            self.owed_since = self.driver_polls;
            match &self.owner {
                Some(w) if w.will_wake(waker) => {}
                _ => self.owner = Some(waker.clone()),
            }
            self.rescue = false;
            self.queued_at_pass = None;
            (key, Some(self.batch))
        } else {
            if self.core.queued() >= self.core.room() {
                // The batch cannot grow any more.
                self.flush();
                return (key, None);
            }
            let same_waker = self.owner.as_ref().is_some_and(|w| w.will_wake(waker));
            if !self.rescue && !same_waker {
                self.rescue = true;
                if let Some(w) = &self.driver {
                    w.wake_by_ref();
                }
            }
            (key, None)
        }
    }

    /// Wakers and buffers that this thread's submission or reap finished,
    /// to be handled once the lock is released.
    fn deferred(&mut self) -> Option<Deferred> {
        if !self.core.has_deferred() {
            return None;
        }
        let mut d = Deferred {
            wakers: SCRATCH_WAKERS.take(),
            graveyard: SCRATCH_GRAVEYARD.take(),
        };
        self.core.take_deferred(&mut d.wakers, &mut d.graveyard);
        Some(d)
    }
}

/// After this many requests submitted one at a time, the next waits for a
/// batch to form, to learn whether others are issuing requests too. Where
/// every request completes inside `io_submit`, each of many tasks (or
/// `join_all`'d loops) finds nothing in flight when it issues its next
/// request; without the probe they went one per `io_submit` for good
/// (32 loops on zram0: 0.75x the batched rate). A lone requester pays one
/// pass through the scheduler per probe.
const LONE_PROBE: u32 = 16;

thread_local! {
    // Reused across calls so that waking futures allocates nothing.
    static SCRATCH_WAKERS: Cell<Vec<Waker>> = const { Cell::new(Vec::new()) };
    static SCRATCH_GRAVEYARD: Cell<Vec<Erased>> = const { Cell::new(Vec::new()) };
}

struct Deferred {
    wakers: Vec<Waker>,
    graveyard: Vec<Erased>,
}

impl Deferred {
    fn run(mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
        self.graveyard.clear();
        SCRATCH_WAKERS.set(self.wakers);
        SCRATCH_GRAVEYARD.set(self.graveyard);
    }
}

fn closed_error() -> io::Error {
    explained(
        Errno::ECANCELED,
        "the tokio runtime of this aio driver has shut down".into(),
    )
}

/// The future of one request: `(io::Result<usize>, B)` for reads and
/// writes, `io::Result<()>` for syncs, `io::Result<PollEvents>` for polls.
///
/// The operation owns its file handle and buffers (`'static`): from the
/// first poll on, the request's slot keeps them until its event has been
/// processed, whether the future is dropped, forgotten or completed. The
/// request is queued at the first poll; see the module docs for batching
/// and for what dropping the future does.
#[must_use = "futures do nothing unless polled"]
pub struct Op<O: Operation> {
    handle: Handle,
    state: OpState<O>,
}

enum OpState<O> {
    /// Not polled yet: the future owns the operation and its buffers.
    Unpushed(O),
    /// Queued or in flight: the slot of `Key` owns the buffers. With a
    /// batch number, this future submits that batch when polled again.
    Pushed(Key, Option<u64>),
    /// The output was returned.
    Finished,
}

impl<O: Operation> fmt::Debug for Op<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            OpState::Unpushed(_) => "unpushed",
            OpState::Pushed(..) => "pushed",
            OpState::Finished => "finished",
        };
        f.debug_struct("Op").field("state", &state).finish()
    }
}

// The operation is never pinned: it is moved into the slot at the first
// poll, and the slot's buffers have stable addresses by their own contract.
impl<O: Operation> Unpin for Op<O> {}

impl<O: Operation + Send + 'static> Op<O> {
    fn new(handle: Handle, op: O) -> Self {
        Op {
            handle,
            state: OpState::Unpushed(op),
        }
    }
}

impl<O: Operation + Send + 'static> Future for Op<O> {
    type Output = O::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> TaskPoll<O::Output> {
        // Tokio's cooperative budget: a task whose requests keep completing
        // inside io_submit (page-cached reads) yields every so often, as
        // it would on tokio's own I/O, instead of starving the others.
        let coop = std::task::ready!(::tokio::task::coop::poll_proceed(cx));
        let this = &mut *self;
        let out = this.poll_state(cx);
        if out.is_ready() {
            coop.made_progress();
        }
        out
    }
}

impl<O: Operation + Send + 'static> Op<O> {
    fn poll_state(&mut self, cx: &mut TaskContext<'_>) -> TaskPoll<O::Output> {
        let this = self;
        match mem::replace(&mut this.state, OpState::Finished) {
            OpState::Unpushed(op) => {
                let mut st = this.handle.user.shared.lock();
                if st.closed {
                    drop(st);
                    // Never reaches a slot: the buffers come straight back.
                    let (_, keep) = op.prepare(&mut Vec::new());
                    return TaskPoll::Ready(O::complete(Err(closed_error()), keep));
                }
                let (key, batch) = st.enqueue(op, cx.waker());
                // Submitted at once, and done inside io_submit?
                let out = (batch.is_none() && st.core.is_done(key)).then(|| {
                    // SAFETY: `key` came from `push` with this `O`, and the
                    // state stays `Finished`, so it is taken once.
                    unsafe { st.core.take::<O>(key) }
                });
                let deferred = st.deferred();
                drop(st);
                if let Some(d) = deferred {
                    d.run();
                }
                if let Some(out) = out {
                    return TaskPoll::Ready(out);
                }
                this.state = OpState::Pushed(key, batch);
                if batch.is_some() {
                    // Submit on the next poll, after the futures polled in
                    // the same pass have queued theirs.
                    cx.waker().wake_by_ref();
                }
                TaskPoll::Pending
            }
            OpState::Pushed(key, batch) => {
                let mut st = this.handle.user.shared.lock();
                let owes = batch.is_some_and(|b| st.owed && st.batch == b);
                if owes || st.core.is_queued(key) {
                    st.flush();
                }
                let out = if st.core.is_done(key) {
                    // SAFETY: `key` came from `push` with this `O`, and the
                    // state is now `Finished`, so it is taken once.
                    Some(unsafe { st.core.take::<O>(key) })
                } else {
                    st.core.set_waker(key, cx.waker());
                    this.state = OpState::Pushed(key, None);
                    None
                };
                let deferred = st.deferred();
                drop(st);
                if let Some(d) = deferred {
                    d.run();
                }
                match out {
                    Some(out) => TaskPoll::Ready(out),
                    None => TaskPoll::Pending,
                }
            }
            OpState::Finished => panic!("aio::tokio::Op polled after completion"),
        }
    }
}

impl<O: Operation> Drop for Op<O> {
    fn drop(&mut self) {
        if let OpState::Pushed(key, batch) = self.state {
            let mut st = self.handle.user.shared.lock();
            let (keep, waker) = st.core.withdraw(key);
            // The batch this future owed goes to the kernel now.
            if batch.is_some_and(|b| st.owed && st.batch == b) {
                st.flush();
            }
            let deferred = st.deferred();
            drop(st);
            // Outside the lock: a buffer's Drop may use this driver.
            drop(waker);
            drop(keep);
            if let Some(d) = deferred {
                d.run();
            }
        }
    }
}

/// The task that serves a context: reaps completions when the eventfd
/// becomes readable, wakes the futures, submits what the ring had no room
/// for. Dropped at runtime shutdown, it drains the context.
struct DriverTask {
    shared: Arc<Shared>,
    afd: AsyncFd<OwnedFd>,
    /// Reused for the wakers and detached buffers of each reap.
    wakers: Vec<Waker>,
    graveyard: Vec<Erased>,
}

/// Reads (and so resets) an eventfd's counter.
fn read_eventfd(fd: &OwnedFd) -> io::Result<u64> {
    let mut count = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a local array.
    let n = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(count))
}

impl Future for DriverTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> TaskPoll<()> {
        let this = &mut *self;
        loop {
            // Consume the eventfd's count before reaping, so that an event
            // posted after the reap makes it readable again.
            let signalled = match this.afd.poll_read_ready(cx) {
                TaskPoll::Ready(Ok(mut guard)) => {
                    match guard.try_io(|fd| read_eventfd(fd.get_ref())) {
                        Ok(_) => {
                            // Readiness that arrives after the read has a
                            // newer tick and is not cleared by this.
                            guard.clear_ready();
                            true
                        }
                        // Spurious: readiness cleared; poll again to
                        // register for the next one.
                        Err(_would_block) => continue,
                    }
                }
                // The reactor is gone (runtime shutting down): end, which
                // drains the context in Drop.
                TaskPoll::Ready(Err(_)) => return TaskPoll::Ready(()),
                TaskPoll::Pending => false,
            };
            let mut st = this.shared.lock();
            match &st.driver {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.driver = Some(cx.waker().clone()),
            }
            st.driver_polls += 1;
            st.core.reap_nonblocking();
            // A batch owed since before the previous driver poll, and no
            // longer growing since then: its flusher is not being polled;
            // submit for it.
            let queued = st.core.queued();
            let growing = st.queued_at_pass.replace(queued) != Some(queued);
            let stale = st.owed && st.owed_since + 1 < st.driver_polls && !growing;
            if st.backlog || stale || st.core.take_requeued() {
                st.flush();
            }
            let done = st.orphaned && st.core.in_flight() == 0 && st.core.queued() == 0;
            // Nothing will signal the completion of a quiet request that
            // missed: come back at once rather than sleep on the eventfd.
            let quiet = st.core.quiet_pending();
            if quiet {
                st.core.count_quiet_poll();
            }
            // A batch that may have lost its flusher: come back until it is
            // submitted.
            let poll_again = quiet || (st.owed && st.rescue);
            st.core.take_deferred(&mut this.wakers, &mut this.graveyard);
            drop(st);
            for w in this.wakers.drain(..) {
                w.wake();
            }
            this.graveyard.clear();
            if done {
                return TaskPoll::Ready(());
            }
            if !signalled {
                if poll_again {
                    cx.waker().wake_by_ref();
                }
                return TaskPoll::Pending;
            }
        }
    }
}

impl Drop for DriverTask {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        st.driver = None;
        if let Err(e) = st.core.close() {
            // The slots keep the buffers; the context's io_destroy waits
            // for the requests before they are freed.
            eprintln!("aio::tokio: draining the context at shutdown failed: {e}");
        }
        st.core.take_deferred(&mut self.wakers, &mut self.graveyard);
        let default_of = st.default_of;
        drop(st);
        for w in self.wakers.drain(..) {
            w.wake();
        }
        self.graveyard.clear();
        if let Some(id) = default_of {
            let mut defaults = defaults();
            let mine = defaults
                .iter()
                .position(|(i, h)| *i == id && Arc::ptr_eq(&h.user.shared, &self.shared))
                .map(|pos| defaults.swap_remove(pos));
            drop(defaults);
            drop(mine);
        }
    }
}
