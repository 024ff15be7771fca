//! The userspace engine: Linux AIO for this process, in this process.
//!
//! [`Engine`] has the six AIO system calls as methods, with Linux's
//! arguments, results and errno values. Requests run on worker threads
//! (`preadv2`/`pwritev2` with the request's `RWF_*` flags, `fsync`,
//! `fdatasync`), pipes and sockets wait for readiness in one `poll(2)`
//! thread instead of blocking anybody, and events land in an `mmap`ed ring
//! with the exact `aio_ring` layout: a user-space reaper (aio-sys's
//! `RingView`, libaio's ring-reading `io_getevents`, fio, Seastar) can take
//! events from it without calling the engine — load `tail` with acquire,
//! copy, store `head` with release — and the engine counts those events as
//! consumed when it accounts slots, as Linux does.
//!
//! `io_submit` never blocks on I/O: buffered reads of cold data, pipes and
//! sockets wait in the workers or the poll thread, not in the caller (Linux
//! performs buffered I/O synchronously inside `io_submit`).
//!
//! User memory (iocbs, iovec arrays, `*ctxp`, event arrays, timeouts) is
//! accessed with `process_vm_readv`/`process_vm_writev` on the own process,
//! and data buffers only through `preadv2`/`pwritev2`, so a bad pointer is
//! `EFAULT` — synchronously or in the event, where Linux puts it — and never
//! a crash. A caller that built its iocbs itself can skip those copies with
//! [`Engine::io_submit_trusted`] (aio does).
//!
//! Each `io_submit` is one plug (see `plug.rs`): worker jobs are dispatched
//! together with one wake-up, eventfd signals of requests completed inside
//! the call are summed into one write, and a descriptor named by several
//! iocbs is resolved once. Workers run as `SCHED_BATCH`, so that their
//! wake-ups never preempt the thread that submits.
//!
//! Contexts are keyed by their ring address, as in Linux; one `Engine` is
//! one address space's AIO state, and [`Engine::global`] is the process-wide
//! one a libaio replacement needs. A context id is only ever looked up in
//! the engine's table, never read from: any id a safe call is given (zero,
//! garbage, another engine's, a destroyed one) is `EINVAL`. Destroying a
//! context unmaps its ring, which its owner may still read, so
//! [`Engine::io_destroy`] is `unsafe`.
//!
//! # Example
//!
//! ```
//! use std::os::fd::AsRawFd;
//! use aio_abi::{IoEvent, IoVec, Iocb};
//! use aio_kernel::engine::Engine;
//!
//! let path = std::env::temp_dir().join(format!("aio-kernel-doc-{}", std::process::id()));
//! let file = std::fs::OpenOptions::new()
//!     .read(true).write(true).create(true).truncate(true).open(&path)?;
//! let fd = file.as_raw_fd();
//!
//! let engine = Engine::new();
//! let ctx = engine.io_setup(8)?;
//!
//! // Write "hello world" with one PWRITEV of two segments.
//! let (a, b) = (*b"hello ", *b"world");
//! let iov = [
//!     IoVec { iov_base: a.as_ptr() as u64, iov_len: 6 },
//!     IoVec { iov_base: b.as_ptr() as u64, iov_len: 5 },
//! ];
//! let write = Iocb::pwritev(fd, iov.as_ptr() as u64, 2, 0).with_data(1);
//! // SAFETY: `write`, `iov`, `a` and `b` live until the event is reaped.
//! assert_eq!(unsafe { engine.io_submit(ctx, &[&write]) }, Ok(1));
//! let mut events = [IoEvent::default(); 1];
//! assert_eq!(engine.io_getevents(ctx, 1, &mut events, None), Ok(1));
//! assert_eq!((events[0].data, events[0].res), (1, 11));
//!
//! // Read it back with PREAD.
//! let mut buf = [0u8; 11];
//! let read = Iocb::pread(fd, buf.as_mut_ptr() as u64, 11, 0).with_data(2);
//! // SAFETY: as above, for `read` and `buf`.
//! assert_eq!(unsafe { engine.io_submit(ctx, &[&read]) }, Ok(1));
//! assert_eq!(engine.io_getevents(ctx, 1, &mut events, None), Ok(1));
//! assert_eq!(&buf, b"hello world");
//!
//! // SAFETY: this example set `ctx` up and nothing else uses it.
//! unsafe { engine.io_destroy(ctx) }?;
//! std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache_guess;
mod file;
mod memory;
mod plug;
mod poller;
mod workers;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, Ordering};
use std::time::Instant;

use aio_abi::{AioContext, Errno, IoEvent, Iocb, RwFlags};

pub use cache_guess::CacheGuess;
pub use memory::EngineRing;

use crate::Kernel;
use crate::host::{EventFd, File, Host, WaitOutcome};
use crate::wake::{Futex, Slept, Waker};
use file::Shared;

/// Settings of an [`Engine`].
#[derive(Clone, Debug)]
pub struct Config {
    /// `fs.aio-max-nr` for this engine's contexts (default: the running
    /// kernel's value, or 65536).
    pub aio_max_nr: u64,
    /// The `RWF_*` bits accepted (default: those of the running kernel's
    /// version; see [`rw_flags_for_kernel`]).
    pub rw_flags: RwFlags,
    /// The most worker threads that may block in I/O at once.
    pub max_workers: usize,
}

impl Default for Config {
    fn default() -> Config {
        let aio_max_nr = std::fs::read_to_string("/proc/sys/fs/aio-max-nr")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65536);
        let rw_flags = running_kernel()
            .map(|(a, b)| rw_flags_for_kernel(a, b))
            .unwrap_or(RwFlags::ALL_KNOWN);
        Config {
            aio_max_nr,
            rw_flags,
            max_workers: 64,
        }
    }
}

fn running_kernel() -> Option<(u32, u32)> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = rel.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `RWF_*` flags Linux `major.minor` accepts (spec §1.4).
pub fn rw_flags_for_kernel(major: u32, minor: u32) -> RwFlags {
    let v = (major, minor);
    let table = [
        ((4, 6), RwFlags::HIPRI),
        ((4, 7), RwFlags::DSYNC | RwFlags::SYNC),
        ((4, 13), RwFlags::NOWAIT),
        ((4, 16), RwFlags::APPEND),
        ((6, 9), RwFlags::NOAPPEND),
        ((6, 11), RwFlags::ATOMIC),
        ((6, 14), RwFlags::DONTCACHE),
        ((6, 17), RwFlags::NOSIGNAL),
    ];
    table
        .iter()
        .filter(|(since, _)| v >= *since)
        .fold(RwFlags::EMPTY, |acc, (_, f)| acc | *f)
}

/// The [`Host`] of the engine: this process's memory, fds and threads.
pub struct EngineHost {
    shared: Arc<Shared>,
    config: Config,
    epoch: Instant,
    /// Sleepers wait on a wake-up generation with a futex.
    waker: Waker<Generation>,
    cpus: u32,
    page: u64,
    nice: bool,
    /// This process: the engine refuses every call from a fork child
    /// before any memory is copied, so it stays right.
    pid: libc::pid_t,
}

/// This process's id, without a `getpid` per engine call (glibc no
/// longer caches it, and every call checks it to refuse fork children).
/// A `pthread_atfork` child handler forgets the cached id, so a child
/// made by `fork` (libc's, `nix`'s) reads its own; a child made by a raw
/// `clone` system call skips the handler, as it skips glibc's own fork
/// bookkeeping, and must not call into its parent's engine.
pub fn process_id() -> u32 {
    // 0: no handler yet; 1: one thread registering it; 2: registered.
    static HOOKED: AtomicU8 = AtomicU8::new(0);
    static PID: AtomicU32 = AtomicU32::new(0);
    extern "C" fn forget_pid() {
        PID.store(0, Ordering::Relaxed);
    }
    match HOOKED.load(Ordering::Acquire) {
        2 => {}
        0 if HOOKED
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok() =>
        {
            // SAFETY: registers a handler that only stores to an atomic
            // (async-signal-safe, as a fork child requires). Nothing waits
            // on `HOOKED`: a child forked while it is 1 reads the id
            // itself on every call.
            let registered = unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) } == 0;
            if !registered {
                // Never cache: every call asks the kernel.
                return std::process::id();
            }
            HOOKED.store(2, Ordering::Release);
        }
        _ => return std::process::id(),
    }
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

fn possible_cpus() -> u32 {
    let parse = |s: &str| -> Option<u32> {
        let mut n = 0;
        for range in s.trim().split(',') {
            let mut it = range.split('-');
            let a: u32 = it.next()?.parse().ok()?;
            let b: u32 = match it.next() {
                Some(b) => b.parse().ok()?,
                None => a,
            };
            n += b - a + 1;
        }
        Some(n)
    };
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse(&s))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32)
        })
        .unwrap_or(1)
}

/// `CAP_SYS_NICE` (23) or `CAP_SYS_ADMIN` (21) in the effective set.
fn capable_sys_nice() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 23 | 1 << 21) != 0)
}

/// Whether this thread is inside [`Engine::io_submit_trusted`].
pub(crate) fn trusted_call() -> bool {
    TRUSTED.with(Cell::get)
}

/// Whether the user memory of this thread's current call may be accessed
/// directly instead of through `process_vm_readv`/`writev`.
fn direct_memory() -> bool {
    trusted_call() || BORROWED.with(Cell::get)
}

std::thread_local! {
    /// Set when a signal handler ended this thread's last wait.
    static INTERRUPTED: Cell<bool> = const { Cell::new(false) };
    /// Set during [`Engine::io_submit_trusted`]: the caller vouched for
    /// every address the call reads or writes.
    static TRUSTED: Cell<bool> = const { Cell::new(false) };
    /// Set during a call whose every user address comes from a Rust
    /// borrow (the events, timeout and signal mask of
    /// [`Engine::io_getevents`] and [`Engine::io_pgetevents`]).
    static BORROWED: Cell<bool> = const { Cell::new(false) };
}

/// Sets a flag ([`TRUSTED`] or [`BORROWED`]) for one call; cleared on
/// every way out.
struct CallFlag(&'static std::thread::LocalKey<Cell<bool>>);

impl CallFlag {
    fn enter(flag: &'static std::thread::LocalKey<Cell<bool>>) -> CallFlag {
        flag.with(|t| t.set(true));
        CallFlag(flag)
    }
}

impl Drop for CallFlag {
    fn drop(&mut self) {
        self.0.with(|t| t.set(false));
    }
}

/// `io_pgetevents`' mask, installed on the calling thread for the wait and
/// restored afterwards, as `set_user_sigmask` does.
struct SigmaskGuard(libc::sigset_t);

impl SigmaskGuard {
    fn install(mask: u64) -> SigmaskGuard {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset; the
        // calls only read and write these two local sets.
        unsafe {
            let mut set: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in 1..=64 {
                if mask & (1u64 << (sig - 1)) != 0 {
                    libc::sigaddset(&mut set, sig);
                }
            }
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, &mut old);
            SigmaskGuard(old)
        }
    }
}

impl Drop for SigmaskGuard {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `install` on this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, core::ptr::null_mut()) };
    }
}

/// The wake-up generation: a futex word of this process.
struct Generation(AtomicU32);

impl Futex for Generation {
    fn load(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// `FUTEX_WAIT`: a signal handler interrupts it with `EINTR`, which
    /// gives `io_getevents` Linux's `EINTR`.
    fn wait(&self, seen: u32, timeout_ns: Option<u64>) -> Slept {
        let ts = timeout_ns.map(|left| libc::timespec {
            tv_sec: (left / 1_000_000_000) as libc::time_t,
            tv_nsec: (left % 1_000_000_000) as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(core::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: FUTEX_WAIT on our own live atomic; it sleeps only if
        // the generation still equals `seen` (no lost wake-up).
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                ts_ptr,
                core::ptr::null::<u32>(),
                0,
            )
        };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            Slept::Interrupted
        } else {
            Slept::Again
        }
    }

    fn wake_all(&self) {
        // SAFETY: FUTEX_WAKE on our own live atomic.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            )
        };
    }
}

impl EngineHost {
    fn wake_now(&self) {
        self.waker.wake_all();
    }

    /// Sends off what a plug held back: the jobs (one lock, one wake-up),
    /// each eventfd's signals in one write, one wake-up of waiters.
    fn unplug(&self, mut held: plug::Unplugged) {
        if !held.jobs.is_empty() {
            self.shared.pool.dispatch(held.jobs.drain(..));
        }
        for (fd, n) in &held.signals {
            file::eventfd_add(fd, *n);
        }
        if held.wake {
            self.wake_now();
        }
        plug::recycle(held);
    }
}

impl Host for EngineHost {
    type Ring = EngineRing;

    fn copy_from_user(&self, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
        if direct_memory() {
            // SAFETY: inside `io_submit_trusted`, whose caller guarantees
            // that the pointer array, the iocbs and their iovec arrays
            // (all the core reads) are live, readable and not written
            // during the call; or inside a getevents call, where the core
            // reads only the timeout and the signal mask, both borrowed.
            unsafe {
                core::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len())
            };
            return Ok(());
        }
        memory::copy_from_user(self.pid, addr, dst)
    }

    fn copy_to_user(&self, addr: u64, src: &[u8]) -> Result<(), Errno> {
        if direct_memory() {
            // SAFETY: inside `io_submit_trusted` the core writes only the
            // iocbs' keys, which its caller guarantees writable and not
            // otherwise accessed during the call; inside a getevents call
            // it writes only into the exclusively borrowed events.
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len()) };
            return Ok(());
        }
        // SAFETY: the core writes only where Linux would write (an iocb's
        // key, `*ctxp`, the event array): memory the engine's caller handed
        // over through an `unsafe` API whose contract covers it.
        unsafe { memory::copy_to_user(self.pid, addr, src) }
    }

    fn user_addr_limit(&self) -> u64 {
        if cfg!(target_arch = "x86_64") {
            0x7fff_ffff_f000
        } else {
            1 << 48
        }
    }

    fn fget(&self, fd: i32) -> Result<Arc<dyn File>, Errno> {
        file::fget(&self.shared, fd)
    }

    fn eventfd_get(&self, fd: i32) -> Result<Arc<dyn EventFd>, Errno> {
        file::eventfd_get(&self.shared, fd)
    }

    fn map_ring(&self, len: u64, at: Option<u64>) -> Result<EngineRing, Errno> {
        EngineRing::map(len, at)
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A futex on a wake-up generation rather than a condition variable
    /// (`Generation`): a signal handler ends the wait.
    fn wait(
        &self,
        deadline_ns: Option<u64>,
        sigmask: Option<u64>,
        ready: &mut dyn FnMut() -> bool,
    ) -> WaitOutcome {
        let _mask = sigmask.map(SigmaskGuard::install);
        INTERRUPTED.with(|i| i.set(false));
        let outcome = self.waker.wait(deadline_ns, &|| self.now_ns(), ready);
        if outcome == WaitOutcome::Interrupted {
            INTERRUPTED.with(|i| i.set(true));
        }
        outcome
    }

    fn wake_all(&self) {
        if plug::defer_wake(self.shared.id()) {
            return;
        }
        self.wake_now();
    }

    fn start_plug(&self) {
        plug::start(self.shared.id());
    }

    fn finish_plug(&self) {
        if let Some(held) = plug::finish(self.shared.id()) {
            self.unplug(held);
        }
    }

    /// Whether this thread's last wait was ended by a signal handler.
    fn signal_pending(&self) -> bool {
        INTERRUPTED.with(|i| i.get())
    }

    fn current_cpu(&self) -> u32 {
        // SAFETY: plain query.
        let c = unsafe { libc::sched_getcpu() };
        c.max(0) as u32
    }

    fn possible_cpus(&self) -> u32 {
        self.cpus
    }

    fn page_size(&self) -> u64 {
        self.page
    }

    fn aio_max_nr(&self) -> u64 {
        self.config.aio_max_nr
    }

    fn sigset_size(&self) -> u64 {
        8
    }

    fn rw_flags_supported(&self) -> RwFlags {
        self.config.rw_flags
    }

    fn capable_sys_nice(&self) -> bool {
        self.nice
    }
}

/// Linux native AIO implemented in this process. See the [module
/// docs](self).
pub struct Engine {
    kernel: Kernel<EngineHost>,
    /// The process that created the engine: a fork child has none of its
    /// threads, and Linux gives a child `EINVAL` for the parent's contexts.
    pid: u32,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    /// An engine with [`Config::default`].
    pub fn new() -> Engine {
        Engine::with_config(Config::default())
    }

    /// An engine with explicit settings.
    ///
    /// # Panics
    ///
    /// If the process cannot create the poll thread's eventfd.
    pub fn with_config(config: Config) -> Engine {
        let poller = poller::Poller::new().expect("eventfd for the engine's poll thread");
        let shared = Arc::new(Shared::new(workers::Pool::new(config.max_workers), poller));
        // SAFETY: plain query.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let host = EngineHost {
            shared,
            config,
            epoch: Instant::now(),
            waker: Waker::new(Generation(AtomicU32::new(0))),
            cpus: possible_cpus(),
            page: if page > 0 { page as u64 } else { 4096 },
            nice: capable_sys_nice(),
            pid: process_id() as libc::pid_t,
        };
        Engine {
            kernel: Kernel::new(Arc::new(host)),
            pid: process_id(),
        }
    }

    /// The engine of this process (created on first use, never dropped).
    /// A `fork` child gets an engine of its own on its first call, as it
    /// would get a fresh AIO state from Linux: the parent's has no threads
    /// in the child.
    pub fn global() -> &'static Engine {
        static GLOBAL: AtomicPtr<Engine> = AtomicPtr::new(core::ptr::null_mut());
        let pid = process_id();
        let current = |p: *mut Engine| {
            // SAFETY: a non-null pointer here was installed below from
            // `Box::into_raw` and is never freed.
            (!p.is_null())
                .then(|| unsafe { &*p })
                .filter(|e| e.pid == pid)
        };
        loop {
            let seen = GLOBAL.load(Ordering::Acquire);
            if let Some(e) = current(seen) {
                return e;
            }
            // No lock: a child forked while another thread held one would
            // wait forever. The parent's engine, if any, is leaked in the
            // child: its threads are gone.
            let new = std::boxed::Box::into_raw(std::boxed::Box::new(Engine::new()));
            match GLOBAL.compare_exchange(seen, new, Ordering::AcqRel, Ordering::Acquire) {
                // SAFETY: just leaked; never freed from now on.
                Ok(_) => return unsafe { &*new },
                // Another thread installed one first; ours has no context.
                // SAFETY: `new` came from Box::into_raw and was not shared.
                Err(_) => drop(unsafe { std::boxed::Box::from_raw(new) }),
            }
        }
    }

    /// `aio-nr` of this engine.
    pub fn aio_nr(&self) -> u64 {
        self.kernel.aio_nr()
    }

    /// The core, unless this is a fork child of the engine's process: every
    /// call there fails with `EINVAL` (Linux refuses the parent's contexts;
    /// a child that wants AIO creates an `Engine` of its own). Checked
    /// before anything else, so it is safe to call right after `fork`.
    fn k(&self) -> Result<&Kernel<EngineHost>, Errno> {
        if process_id() == self.pid {
            // A new call: no signal has interrupted it yet.
            INTERRUPTED.with(|i| i.set(false));
            Ok(&self.kernel)
        } else {
            Err(Errno::EINVAL)
        }
    }

    /// [`Engine::k`] for `io_setup` and `io_destroy`: the eventfd numbers
    /// trusted calls named may name other eventfds from now on (a
    /// destroyed context's eventfd is closed, a new context's may reuse
    /// its number), so the next lookup asks the kernel again.
    fn k_contexts_change(&self) -> Result<&Kernel<EngineHost>, Errno> {
        let k = self.k()?;
        file::distrust_eventfds(&k.host().shared);
        Ok(k)
    }

    /// `io_setup(nr_events, &ctx)`: a context whose ring holds at least
    /// `nr_events` events; the result is the ring's address.
    pub fn io_setup(&self, nr_events: u32) -> Result<AioContext, Errno> {
        let mut ctx: AioContext = 0;
        let at = &mut ctx as *mut AioContext as u64;
        self.k_contexts_change()?.io_setup(nr_events, at)?;
        Ok(ctx)
    }

    /// `io_setup` with the ring mapped at exactly `ring_addr` (the seed
    /// patch's explicit address): `EINVAL` if not page-aligned, `EEXIST` if
    /// anything is mapped there. The context is `ring_addr`.
    pub fn io_setup_at(&self, nr_events: u32, ring_addr: u64) -> Result<AioContext, Errno> {
        let mut ctx: AioContext = 0;
        let at = &mut ctx as *mut AioContext as u64;
        self.k_contexts_change()?
            .io_setup_at(nr_events, at, ring_addr)?;
        Ok(ctx)
    }

    /// `io_submit(ctx, iocbs.len(), iocbs)`: how many were accepted, or the
    /// first one's error if none was.
    ///
    /// # Safety
    ///
    /// Like the system call: each accepted iocb is written (its `aio_key`),
    /// and until its event is posted the engine reads from (writes) the
    /// buffers it names — for vectored requests, the buffers its iovecs
    /// name (the iovec array itself is copied during this call). These
    /// must be memory the caller owns and does not otherwise use until the
    /// event arrives, or unmapped (which yields `EFAULT`, in the event or
    /// from this call).
    pub unsafe fn io_submit(&self, ctx: AioContext, iocbs: &[*const Iocb]) -> Result<usize, Errno> {
        let nr = i64::try_from(iocbs.len()).map_err(|_| Errno::EINVAL)?;
        self.k()?.io_submit(ctx, nr, iocbs.as_ptr() as u64)
    }

    /// [`Engine::io_submit`] for a caller that built the iocbs itself:
    /// the engine reads the iocbs and their iovec arrays, and writes the
    /// keys, directly instead of through the kernel's checked copies (two
    /// or three system calls less per request). Data buffers are still
    /// only touched by `preadv2`/`pwritev2`, so a bad one is `EFAULT` in
    /// the event as before.
    ///
    /// # Safety
    ///
    /// As [`Engine::io_submit`], and moreover: every pointer in `iocbs`
    /// names a live iocb that the caller does not access during the call,
    /// and every vectored iocb's `aio_buf` names `aio_nbytes` live iovecs.
    /// A bad one is undefined behaviour here, not `EFAULT`.
    ///
    /// Eventfds: one named by `aio_resfd` is looked up once; later trusted
    /// calls naming the same number signal it without asking the kernel
    /// (`kcmp`, the dearest system call of a submission) whether the
    /// number still names it, until a context of this engine is set up or
    /// destroyed. So an eventfd named here must stay open until then (aio
    /// makes a context's eventfd before setting up its engine context and
    /// closes it after destroying that); otherwise completions could signal
    /// the closed one instead of a new eventfd with its number.
    pub unsafe fn io_submit_trusted(
        &self,
        ctx: AioContext,
        iocbs: &[*const Iocb],
    ) -> Result<usize, Errno> {
        let nr = i64::try_from(iocbs.len()).map_err(|_| Errno::EINVAL)?;
        let k = self.k()?;
        let _trusted = CallFlag::enter(&TRUSTED);
        k.io_submit(ctx, nr, iocbs.as_ptr() as u64)
    }

    /// `io_getevents(ctx, min_nr, events.len(), events, timeout)`: waits
    /// for at least `min_nr` events (none if 0; at most once with a zero
    /// timeout; `None` waits forever) and returns how many were stored.
    pub fn io_getevents(
        &self,
        ctx: AioContext,
        min_nr: i64,
        events: &mut [IoEvent],
        timeout: Option<&libc::timespec>,
    ) -> Result<usize, Errno> {
        let nr = i64::try_from(events.len()).map_err(|_| Errno::EINVAL)?;
        let ts = timeout.map_or(0, |t| t as *const libc::timespec as u64);
        let k = self.k()?;
        // The core writes only into `events` (an exclusive borrow) and
        // reads only `timeout`.
        let _borrowed = CallFlag::enter(&BORROWED);
        k.io_getevents(ctx, min_nr, nr, events.as_mut_ptr() as u64, ts)
    }

    /// `io_pgetevents`: as [`Engine::io_getevents`], with a signal mask
    /// installed on the calling thread for the wait. A signal handler that
    /// runs during the wait ends it (`EINTR` if nothing was gathered).
    pub fn io_pgetevents(
        &self,
        ctx: AioContext,
        min_nr: i64,
        events: &mut [IoEvent],
        timeout: Option<&libc::timespec>,
        sigmask: Option<&libc::sigset_t>,
    ) -> Result<usize, Errno> {
        let nr = i64::try_from(events.len()).map_err(|_| Errno::EINVAL)?;
        let ts = timeout.map_or(0, |t| t as *const libc::timespec as u64);
        let sig = aio_abi::AioSigset {
            sigmask: sigmask.map_or(0, |m| m as *const libc::sigset_t as u64),
            sigsetsize: 8,
        };
        let k = self.k()?;
        // As io_getevents, and `sig` and the mask it points to are read.
        let _borrowed = CallFlag::enter(&BORROWED);
        k.io_pgetevents(
            ctx,
            min_nr,
            nr,
            events.as_mut_ptr() as u64,
            ts,
            &sig as *const aio_abi::AioSigset as u64,
        )
    }

    /// `io_cancel(ctx, iocb, NULL)`: `Err(EINPROGRESS)` means the request
    /// was found and cancelled (Linux never returns 0); its event is in
    /// the ring: `res == 0` for a waiting `POLL`, `-ECANCELED` for a read
    /// or write of a pipe or socket that was waiting for readiness and had
    /// not moved a byte. Others give `EINVAL` and complete normally.
    ///
    /// `iocb` is never dereferenced: its key is read through the kernel
    /// (`EFAULT` if unreadable), and only compared with the requests in
    /// flight. A bogus or destroyed `ctx` is `EINVAL`. Cancelling a request
    /// of a context another component owns is memory-safe (its event says
    /// so), though that component will see the request fail.
    pub fn io_cancel(&self, ctx: AioContext, iocb: *const Iocb) -> Result<(), Errno> {
        self.k()?.io_cancel(ctx, iocb as u64, 0)
    }

    /// `io_destroy(ctx)`: cancels what can be cancelled, waits for every
    /// request in flight, then releases the context and its ring.
    ///
    /// An id that names no live context of this engine is `EINVAL`, and
    /// nothing is read or unmapped.
    ///
    /// # Safety
    ///
    /// The caller owns `ctx`: it set the context up (or was handed it by
    /// whoever did), and once this call starts nothing else uses it — no
    /// user-space reaper reads its ring (the ring is unmapped, and its
    /// address may be reused by any later mapping), and no other
    /// component holds the id for later calls. Destroying a context that
    /// another component still reads (an `aio` context, a libaio
    /// context) makes that component read unmapped or reused memory.
    pub unsafe fn io_destroy(&self, ctx: AioContext) -> Result<(), Errno> {
        self.k_contexts_change()?.io_destroy(ctx)
    }

    /// `io_setup` with a raw `ctxp`, for syscall-level shims and tests.
    ///
    /// # Safety
    ///
    /// `ctxp` must be writable memory of the caller's, or unmapped.
    pub unsafe fn sys_io_setup(&self, nr_events: u32, ctxp: u64) -> Result<(), Errno> {
        self.k_contexts_change()?.io_setup(nr_events, ctxp)
    }

    /// `io_submit` with raw arguments (`nr` may be negative, `iocbpp` bad).
    ///
    /// # Safety
    ///
    /// As [`Engine::io_submit`], for the iocbs `iocbpp` points at.
    pub unsafe fn sys_io_submit(&self, ctx: u64, nr: i64, iocbpp: u64) -> Result<usize, Errno> {
        self.k()?.io_submit(ctx, nr, iocbpp)
    }

    /// `io_getevents` with raw arguments.
    ///
    /// # Safety
    ///
    /// `events` must have room for `nr` events of the caller's, or be
    /// unmapped; `timeout` must be 0 or readable.
    pub unsafe fn sys_io_getevents(
        &self,
        ctx: u64,
        min_nr: i64,
        nr: i64,
        events: u64,
        timeout: u64,
    ) -> Result<usize, Errno> {
        self.k()?.io_getevents(ctx, min_nr, nr, events, timeout)
    }

    /// `io_pgetevents` with raw arguments.
    ///
    /// # Safety
    ///
    /// As [`Engine::sys_io_getevents`].
    pub unsafe fn sys_io_pgetevents(
        &self,
        ctx: u64,
        min_nr: i64,
        nr: i64,
        events: u64,
        timeout: u64,
        usig: u64,
    ) -> Result<usize, Errno> {
        self.k()?
            .io_pgetevents(ctx, min_nr, nr, events, timeout, usig)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if process_id() != self.pid {
            return;
        }
        // Like process exit: every context is destroyed, which waits for
        // its requests, so no worker touches memory after we return.
        for ctx in self.kernel.contexts() {
            let _ = self.kernel.io_destroy(ctx);
        }
        // Nothing is in flight any more: let the threads go.
        let host = self.kernel.host();
        host.shared.pool.shutdown();
        host.shared.poller.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Submits one `FSYNC` (always a worker's job) of a fresh file and
    /// returns its event; `None` if none came (the engine is then leaked:
    /// destroying it would wait for the lost request).
    fn fsync_event(engine: Engine) -> Option<(Engine, IoEvent)> {
        let path = std::env::temp_dir().join(std::format!(
            "aio-kernel-fault-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let ctx = engine.io_setup(4).unwrap();
        let iocb = Iocb::fsync(file.as_raw_fd()).with_data(9);
        // SAFETY: `iocb` outlives the request (its event is awaited).
        let submitted = unsafe { engine.io_submit(ctx, &[&iocb as *const Iocb]) };
        assert_eq!(submitted, Ok(1));
        let mut evs = [IoEvent::default(); 1];
        let ts = libc::timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        if engine.io_getevents(ctx, 1, &mut evs, Some(&ts)) != Ok(1) {
            core::mem::forget(engine);
            return None;
        }
        // SAFETY: set up here, used by nothing else.
        unsafe { engine.io_destroy(ctx) }.unwrap();
        Some((engine, evs[0]))
    }

    #[test]
    fn a_worker_that_cannot_start_fails_its_request_with_eagain() {
        let engine = Engine::new();
        let faults = engine.kernel.host().shared.pool.faults();
        faults
            .fail_spawns
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (engine, ev) = fsync_event(engine).expect("the request's event");
        assert_eq!((ev.data, ev.res), (9, Errno::EAGAIN.as_res()));
        // Threads can start again: the next request runs.
        let faults = engine.kernel.host().shared.pool.faults();
        faults
            .fail_spawns
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let (_, ev) = fsync_event(engine).expect("the request's event");
        assert_eq!(ev.res, 0);
    }

    #[test]
    fn without_a_poll_thread_streams_fail_and_polls_report_pollerr() {
        let engine = Engine::new();
        let poller = &engine.kernel.host().shared.poller;
        poller
            .0
            .fail_start
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut p = [0i32; 2];
        // SAFETY: `p` has room for two fds.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: just created, owned here.
        let (r, _w) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::os::fd::OwnedFd::from_raw_fd(p[0]),
                std::os::fd::OwnedFd::from_raw_fd(p[1]),
            )
        };
        let ctx = engine.io_setup(4).unwrap();
        let mut buf = [0u8; 8];
        let read = Iocb::pread(r.as_raw_fd(), buf.as_mut_ptr() as u64, 8, 0).with_data(1);
        let poll = Iocb::poll(r.as_raw_fd(), aio_abi::PollEvents::IN).with_data(2);
        // SAFETY: the iocbs and `buf` outlive the requests (their events
        // are awaited, or the engine is leaked).
        let submitted = unsafe { engine.io_submit(ctx, &[&read, &poll]) };
        assert_eq!(submitted, Ok(2));
        let mut evs = [IoEvent::default(); 2];
        let ts = libc::timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let got = engine.io_getevents(ctx, 2, &mut evs, Some(&ts));
        if got != Ok(2) {
            core::mem::forget(engine);
            panic!("events missing: {got:?}");
        }
        evs.sort_by_key(|e| e.data);
        assert_eq!(evs[0].res, Errno::EAGAIN.as_res());
        assert_eq!(
            evs[1].res as u32 & libc::POLLERR as u32,
            libc::POLLERR as u32
        );
        // SAFETY: set up here, used by nothing else.
        unsafe { engine.io_destroy(ctx) }.unwrap();
    }

    #[test]
    fn a_job_that_panics_fails_its_request_with_eio() {
        let engine = Engine::new();
        let faults = engine.kernel.host().shared.pool.faults();
        faults
            .panic_jobs
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let (engine, ev) = fsync_event(engine).expect("the request's event");
        assert_eq!((ev.data, ev.res), (9, Errno::EIO.as_res()));
        // The pool still serves.
        let (_, ev) = fsync_event(engine).expect("the request's event");
        assert_eq!(ev.res, 0);
    }
}
