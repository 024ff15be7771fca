//! The seam between the completion machinery and what executes the
//! requests: the running kernel (`aio-sys`) and the userspace engine
//! (`aio-kernel`), each behind [`Backend`], and [`Drivers`], which holds
//! the ones a context uses and knows which requests go where.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use aio_abi::{AioContext, Errno, IoEvent, Iocb, RwFlags};
use aio_kernel::engine::{CacheGuess, Engine};
use aio_sys::RingView;

use crate::core::Stats;
use crate::error::Error;

/// Which implementation of the AIO system calls runs a [`Context`](crate::Context)'s
/// requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Driver {
    /// Each request where it cannot block the caller: `O_DIRECT` reads and
    /// writes, `fsync`, `fdatasync` and polls to the kernel (which runs
    /// them asynchronously); buffered reads of regular files and block
    /// devices to the kernel with `RWF_NOWAIT`, so that page-cached data
    /// is copied inside `io_submit` at the kernel's speed, and to the
    /// engine when the kernel answers that it would have to wait (or
    /// returns part of the data: the engine reads the rest); buffered
    /// writes the same way where the filesystem takes `RWF_NOWAIT` for
    /// writes (xfs, btrfs; not ext4, nor appends), else to the engine;
    /// everything on pipes, sockets and other files to the engine. When the AIO system calls are unavailable (`ENOSYS`, or
    /// `EPERM` from a seccomp filter), everything goes to the engine, and
    /// [`Context::kernel_unavailable`](crate::Context::kernel_unavailable)
    /// says why.
    ///
    /// Requests in flight together are not ordered, as with the kernel:
    /// wait for a write before reading what it wrote.
    #[default]
    Auto,
    /// The running Linux kernel, through `aio-sys`. Linux performs
    /// buffered reads and writes synchronously inside `io_submit`: a read
    /// of cold data blocks the submitting thread for the device's latency,
    /// and a read of an empty pipe blocks it until somebody writes.
    Kernel,
    /// The userspace engine of `aio-kernel`: the same system calls run in
    /// this process, on worker threads and a poll thread, so submission
    /// never waits for I/O. Works where the kernel's AIO is unavailable.
    Engine,
}

impl Driver {
    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::Kernel => "kernel",
            Driver::Engine => "engine",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = String;

    fn from_str(s: &str) -> Result<Driver, String> {
        match s {
            "auto" => Ok(Driver::Auto),
            "kernel" => Ok(Driver::Kernel),
            "engine" => Ok(Driver::Engine),
            other => Err(format!(
                "unknown driver {other:?}: use auto, kernel or engine"
            )),
        }
    }
}

/// Executes batches of iocbs and hands back their events.
///
/// Everything above this trait is driver-independent: the slab of slots,
/// batching, back-pressure and the blocking or async front-ends.
pub(crate) trait Backend: Send {
    /// `io_submit`: how many of `iocbs` were accepted, or the first one's
    /// error if none was.
    ///
    /// # Safety
    /// As [`aio_sys::io_submit`]: the iocbs and everything they point at
    /// stay valid until their events have been reaped.
    unsafe fn submit(&mut self, iocbs: &[*mut Iocb]) -> Result<usize, Errno>;

    /// Copies events that are ready into `out` without a system call;
    /// 0 when none are, or when this driver can only reap by syscall.
    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize;

    /// `io_getevents`: sleeps until `min_nr` events are ready (or the
    /// timeout passes) and copies up to `out.len()`.
    fn wait(
        &mut self,
        min_nr: usize,
        out: &mut [IoEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno>;

    /// `io_cancel` of an in-flight request (Linux cancels polls; the engine
    /// also pipe and socket transfers that have not moved a byte),
    /// with Linux's result: `EINPROGRESS` when it was found and cancelled.
    ///
    /// # Safety
    /// `iocb` is the address the request was submitted from.
    unsafe fn cancel(&mut self, iocb: *mut Iocb) -> Result<(), Errno>;

    /// Whether [`Backend::try_reap`] can ever return events.
    fn reaps_ring(&self) -> bool;

    /// `io_destroy`: cancels what is cancellable and returns only when
    /// every submitted request has completed, so that no buffer is written
    /// afterwards. Idempotent.
    fn destroy(&mut self) -> Result<(), Errno>;
}

/// A context's ring, read until the context is destroyed.
struct Reaper {
    ring: RingView,
    destroyed: bool,
}

impl Reaper {
    /// # Safety
    /// If `use_ring`, `ctx` is the address of a mapped `aio_ring` that
    /// stays mapped until [`Reaper::destroyed`] is set.
    unsafe fn new(ctx: AioContext, use_ring: bool) -> Reaper {
        let ring = if use_ring {
            // SAFETY: per the contract.
            unsafe { RingView::new(ctx) }
        } else {
            // SAFETY: the view's `get_events` is never called; waits go
            // through `KernelBackend::wait`.
            unsafe { RingView::syscall_only(ctx) }
        };
        Reaper {
            ring,
            destroyed: false,
        }
    }

    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
        if self.destroyed {
            return 0;
        }
        self.ring.try_reap(out)
    }

    fn reaps_ring(&self) -> bool {
        self.ring.is_mapped() && !self.destroyed
    }

    /// Events waiting in the ring, if it is read.
    fn ready(&self) -> Option<usize> {
        self.reaps_ring().then(|| self.ring.ready())
    }
}

/// The running kernel.
pub(crate) struct KernelBackend {
    ctx: AioContext,
    reaper: Reaper,
}

impl KernelBackend {
    /// `io_setup(depth)`, reaping from the ring if `use_ring`.
    pub(crate) fn new(depth: u32, use_ring: bool) -> Result<KernelBackend, Errno> {
        let ctx = aio_sys::io_setup(depth)?;
        Ok(KernelBackend {
            ctx,
            // SAFETY: `ctx` was just returned by io_setup and is destroyed
            // only by `destroy`, which marks the reaper.
            reaper: unsafe { Reaper::new(ctx, use_ring) },
        })
    }
}

impl Backend for KernelBackend {
    unsafe fn submit(&mut self, iocbs: &[*mut Iocb]) -> Result<usize, Errno> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { aio_sys::io_submit(self.ctx, iocbs) }
    }

    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
        self.reaper.try_reap(out)
    }

    fn wait(
        &mut self,
        min_nr: usize,
        out: &mut [IoEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno> {
        // SAFETY: `&mut self`: this backend's reaper, the only view of
        // `ctx`, is not reaping during the call.
        unsafe { aio_sys::io_getevents(self.ctx, min_nr, out, timeout) }
    }

    unsafe fn cancel(&mut self, iocb: *mut Iocb) -> Result<(), Errno> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { aio_sys::io_cancel(self.ctx, iocb) }
    }

    fn reaps_ring(&self) -> bool {
        self.reaper.reaps_ring()
    }

    fn destroy(&mut self) -> Result<(), Errno> {
        if self.reaper.destroyed {
            return Ok(());
        }
        // SAFETY: the ring view is not used after this (`destroyed` guards
        // try_reap; `wait` on a destroyed context only returns EINVAL).
        unsafe { aio_sys::io_destroy(self.ctx) }?;
        self.reaper.destroyed = true;
        Ok(())
    }
}

impl Drop for KernelBackend {
    fn drop(&mut self) {
        // The owner destroys explicitly and keeps the buffers if that fails;
        // this only covers a backend dropped before it had any request.
        let _ = self.destroy();
    }
}

/// A context of this process's engine ([`Engine::global`]).
pub(crate) struct EngineBackend {
    engine: &'static Engine,
    ctx: AioContext,
    reaper: Reaper,
}

impl EngineBackend {
    pub(crate) fn new(depth: u32, use_ring: bool) -> Result<EngineBackend, Errno> {
        let engine = Engine::global();
        let ctx = engine.io_setup(depth)?;
        Ok(EngineBackend {
            engine,
            ctx,
            // SAFETY: the engine's contexts are the addresses of rings with
            // the kernel's layout, mapped until `io_destroy`, which marks
            // the reaper.
            reaper: unsafe { Reaper::new(ctx, use_ring) },
        })
    }
}

impl Backend for EngineBackend {
    unsafe fn submit(&mut self, iocbs: &[*mut Iocb]) -> Result<usize, Errno> {
        // SAFETY: `*mut Iocb` and `*const Iocb` have the same layout.
        let iocbs = unsafe {
            std::slice::from_raw_parts(iocbs.as_ptr().cast::<*const Iocb>(), iocbs.len())
        };
        // SAFETY: the caller's contract: the iocbs (built by this crate,
        // not touched during the call) and their iovec arrays are live, as
        // `io_submit_trusted` requires, and everything they point at stays
        // valid until the events are reaped, as the engine requires.
        unsafe { self.engine.io_submit_trusted(self.ctx, iocbs) }
    }

    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
        self.reaper.try_reap(out)
    }

    fn wait(
        &mut self,
        min_nr: usize,
        out: &mut [IoEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno> {
        let ts = timeout.map(aio_sys::timespec);
        self.engine
            .io_getevents(self.ctx, min_nr as i64, out, ts.as_ref())
    }

    unsafe fn cancel(&mut self, iocb: *mut Iocb) -> Result<(), Errno> {
        self.engine.io_cancel(self.ctx, iocb)
    }

    fn reaps_ring(&self) -> bool {
        self.reaper.reaps_ring()
    }

    fn destroy(&mut self) -> Result<(), Errno> {
        if self.reaper.destroyed {
            return Ok(());
        }
        // SAFETY: this backend set `ctx` up and owns it; once destroyed,
        // `reaper.destroyed` keeps its ring from being read again and no
        // other call names `ctx`.
        unsafe { self.engine.io_destroy(self.ctx) }?;
        self.reaper.destroyed = true;
        Ok(())
    }
}

impl Drop for EngineBackend {
    fn drop(&mut self) {
        // As for the kernel: the owner destroys explicitly first.
        let _ = self.destroy();
    }
}

/// Where a request runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Route {
    /// Not decided yet (queued, never offered to a driver).
    Unrouted,
    Kernel,
    /// The kernel, with an `RWF_NOWAIT` the caller did not ask for: an
    /// `EAGAIN` or a short read sends (the rest of) it to the engine.
    KernelNowait,
    Engine,
}

impl Route {
    /// Index into per-driver arrays: 0 kernel, 1 engine.
    pub(crate) fn side(self) -> usize {
        match self {
            Route::Kernel | Route::KernelNowait => 0,
            Route::Engine => 1,
            Route::Unrouted => unreachable!("a routed request"),
        }
    }
}

/// How `Auto` treats buffered I/O on a filesystem.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Device {
    /// tmpfs or ramfs: the data is in memory; the kernel copies it.
    Memory,
    /// Reads go to the kernel with `RWF_NOWAIT` first where `reads` says
    /// the page cache holds them (asking `cachestat` where it is unsure).
    /// Writes (not appends) too, unless `writes_refused` (ext4 takes the
    /// flag for reads only) or `writes` says they mostly would wait (xfs
    /// answers EAGAIN to every buffered AIO write with the flag); there is
    /// no `cachestat` for that, so an unsure guess tries.
    Nowait {
        reads: CacheGuess,
        writes: CacheGuess,
        writes_refused: bool,
    },
    /// The filesystem refused `RWF_NOWAIT` for reads: everything to the
    /// engine.
    Blocking,
}

/// What `Auto` needs to know about a descriptor, learnt once per batch.
#[derive(Clone, Copy, Default)]
struct FdClass {
    /// A regular file or a block device (I/O with a position, which
    /// `RWF_NOWAIT` covers and which never waits for another process).
    positioned: bool,
    regular: bool,
    direct: bool,
    /// `O_APPEND`.
    append: bool,
    /// The filesystem's device, or the block device itself.
    dev: u64,
}

/// `RAMFS_MAGIC` of `<linux/magic.h>`.
const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;

fn classify(fd: RawFd) -> Option<FdClass> {
    // SAFETY: F_GETFL and fstat only read the fd table and the inode into
    // a local.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return None;
    }
    // SAFETY: as above.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return None;
    }
    let fmt = st.st_mode & libc::S_IFMT;
    Some(FdClass {
        positioned: fmt == libc::S_IFREG || fmt == libc::S_IFBLK,
        regular: fmt == libc::S_IFREG,
        direct: fl & libc::O_DIRECT != 0,
        append: fl & libc::O_APPEND != 0,
        dev: if fmt == libc::S_IFBLK {
            st.st_rdev
        } else {
            st.st_dev
        },
    })
}

/// Descriptor classes of one submission batch (descriptors may be closed
/// and their numbers reused between batches). A few entries, without
/// allocating: batches usually name one or two descriptors.
#[derive(Default)]
pub(crate) struct ClassCache {
    seen: [(RawFd, Option<FdClass>); 4],
    len: usize,
}

impl ClassCache {
    fn get(&mut self, fd: RawFd) -> Option<FdClass> {
        if let Some(&(_, c)) = self.seen[..self.len].iter().find(|(f, _)| *f == fd) {
            return c;
        }
        let c = classify(fd);
        let at = if self.len < self.seen.len() {
            self.len += 1;
            self.len - 1
        } else {
            // Full: replace the oldest but one; cheap enough either way.
            fd as usize % self.seen.len()
        };
        self.seen[at] = (fd, c);
        c
    }
}

/// The drivers of one context and the routing between them.
pub(crate) struct Drivers {
    policy: Driver,
    /// `None` when the kernel is not used (the engine policy, or `Auto`
    /// where the AIO system calls are unavailable).
    kernel: Option<KernelBackend>,
    /// Created on the first request that needs it.
    engine: Option<EngineBackend>,
    depth: u32,
    engine_ring: bool,
    /// What `Auto` learnt about the filesystems (by device number) it
    /// has seen buffered I/O on.
    devices: Vec<(u64, Device)>,
    /// `Auto`: signalled by every completion of both drivers, to sleep on
    /// when both have requests in flight. Owned here unless it is the
    /// context's own eventfd.
    wake_fd: Option<RawFd>,
    own_wake_fd: Option<OwnedFd>,
    pub(crate) in_flight: [usize; 2],
    /// Under `Auto`, why the kernel is not used (`io_setup` failed with
    /// `ENOSYS` or `EPERM`).
    kernel_unavailable: Option<Error>,
}

impl Drivers {
    /// The drivers `policy` needs; `eventfd` is the context's own, if it
    /// has one.
    pub(crate) fn new(
        policy: Driver,
        depth: u32,
        kernel_ring: bool,
        engine_ring: bool,
        eventfd: Option<RawFd>,
    ) -> io::Result<Drivers> {
        let setup = |e| crate::error::setup_error(depth, e);
        let mut d = Drivers {
            policy,
            kernel: None,
            engine: None,
            depth,
            engine_ring,
            devices: Vec::new(),
            wake_fd: eventfd,
            own_wake_fd: None,
            in_flight: [0, 0],
            kernel_unavailable: None,
        };
        match policy {
            Driver::Kernel => {
                d.kernel = Some(KernelBackend::new(depth, kernel_ring).map_err(setup)?)
            }
            Driver::Engine => {
                d.engine = Some(EngineBackend::new(depth, engine_ring).map_err(setup)?)
            }
            Driver::Auto => match KernelBackend::new(depth, kernel_ring) {
                Ok(k) => {
                    d.kernel = Some(k);
                    if d.wake_fd.is_none() {
                        let fd = new_eventfd()?;
                        d.wake_fd = Some(fd.as_raw_fd());
                        d.own_wake_fd = Some(fd);
                    }
                }
                // No AIO in this kernel, or a seccomp filter forbids it.
                Err(e @ (Errno::ENOSYS | Errno::EPERM)) => {
                    d.engine = Some(EngineBackend::new(depth, engine_ring).map_err(setup)?);
                    d.kernel_unavailable = Some(crate::error::kernel_unavailable(e));
                }
                Err(e) => return Err(setup(e)),
            },
        }
        Ok(d)
    }

    /// Why `Auto` runs every request on the engine, if it does.
    pub(crate) fn kernel_unavailable(&self) -> Option<&Error> {
        self.kernel_unavailable.as_ref()
    }

    /// The eventfd every request must carry: the context's own, or
    /// `Auto`'s private one.
    pub(crate) fn resfd(&self) -> Option<RawFd> {
        self.wake_fd
    }

    /// Decides where a request runs, setting `RWF_NOWAIT` in its iocb for
    /// [`Route::KernelNowait`]; with the device of the file, for
    /// [`Drivers::nowait_outcome`].
    /// `len` is the request's length in bytes.
    pub(crate) fn route(
        &mut self,
        iocb: &mut Iocb,
        len: u64,
        cache: &mut ClassCache,
    ) -> (Route, u64) {
        if self.kernel.is_none() {
            return (Route::Engine, 0);
        }
        if self.policy == Driver::Kernel {
            return (Route::Kernel, 0);
        }
        let op = iocb.aio_lio_opcode;
        if !(op.is_read() || op.is_write()) {
            // fsync, fdatasync and poll never block io_submit.
            return (Route::Kernel, 0);
        }
        let Some(class) = cache.get(iocb.fd()) else {
            // A bad descriptor: the kernel says which error.
            return (Route::Kernel, 0);
        };
        if class.positioned && class.direct {
            return (Route::Kernel, 0);
        }
        if !class.positioned {
            return (Route::Engine, 0);
        }
        let at = self.device(class.dev, class.regular, iocb.fd());
        let route = match &mut self.devices[at].1 {
            // A memory copy either way: no thread hop.
            Device::Memory => Route::Kernel,
            Device::Nowait {
                writes_refused: false,
                writes,
                ..
            } if op.is_write() && !class.append => {
                if iocb
                    .aio_rw_flags
                    .intersects(RwFlags::NOWAIT | RwFlags::APPEND)
                    || !writes.should_try(|| None)
                {
                    // The caller's NOWAIT is theirs to see; an append's
                    // rest could not go on where the first part ended; and
                    // writes that keep answering EAGAIN cost a second trip.
                    Route::Engine
                } else {
                    iocb.aio_rw_flags |= RwFlags::NOWAIT;
                    Route::KernelNowait
                }
            }
            Device::Nowait { reads, .. } if op.is_read() => {
                if iocb.aio_rw_flags.contains(RwFlags::NOWAIT) {
                    // The caller asked for EAGAIN rather than waiting.
                    Route::Kernel
                } else if reads
                    .should_try(|| aio_sys::page_cache_holds(iocb.fd(), iocb.aio_offset, len))
                {
                    iocb.aio_rw_flags |= RwFlags::NOWAIT;
                    Route::KernelNowait
                } else {
                    // A miss would cost the submitter the readahead it
                    // starts.
                    Route::Engine
                }
            }
            Device::Nowait { .. } | Device::Blocking => Route::Engine,
        };
        (route, class.dev)
    }

    /// How a [`Route::KernelNowait`] read (or `write`) on `dev` went: done
    /// in the kernel (`hit`), or not.
    pub(crate) fn nowait_outcome(&mut self, dev: u64, write: bool, hit: bool) {
        if let Some((_, Device::Nowait { reads, writes, .. })) =
            self.devices.iter_mut().find(|(d, _)| *d == dev)
        {
            if write { writes } else { reads }.outcome(hit);
        }
    }

    /// The entry of `dev` in `devices`, learning about its filesystem from
    /// `fd` the first time.
    fn device(&mut self, dev: u64, regular: bool, fd: RawFd) -> usize {
        if let Some(at) = self.devices.iter().position(|(d, _)| *d == dev) {
            return at;
        }
        // SAFETY: fstatfs writes into a local.
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `sfs` is a valid out-pointer.
        let memory = regular
            && unsafe { libc::fstatfs(fd, &mut sfs) } == 0
            && [libc::TMPFS_MAGIC, RAMFS_MAGIC].contains(&(sfs.f_type as _));
        let d = if memory {
            Device::Memory
        } else {
            Device::Nowait {
                reads: CacheGuess::default(),
                writes: CacheGuess::default(),
                writes_refused: false,
            }
        };
        self.devices.push((dev, d));
        self.devices.len() - 1
    }

    /// After the kernel refused a [`Route::KernelNowait`] read (or
    /// `write`) on `dev` (the device [`Drivers::route`] gave it) with
    /// `errno`, at submission or in its event: whether to run it on the
    /// engine instead, and then to send the rest of that device's reads
    /// (writes) there too.
    pub(crate) fn nowait_refused(&mut self, dev: u64, write: bool, errno: Errno) -> bool {
        if errno != Errno::EOPNOTSUPP && errno != Errno::EINVAL {
            return false;
        }
        match self.devices.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, Device::Nowait { writes_refused, .. })) if write => *writes_refused = true,
            Some((_, d)) => *d = Device::Blocking,
            None => self.devices.push((dev, Device::Blocking)),
        }
        true
    }

    /// The backend of one side, creating the engine's context on first use.
    pub(crate) fn backend(&mut self, side: usize) -> Result<&mut dyn Backend, Errno> {
        if side == 0 {
            return Ok(self
                .kernel
                .as_mut()
                .expect("kernel routes only with a kernel context"));
        }
        if self.engine.is_none() {
            self.engine = Some(EngineBackend::new(self.depth, self.engine_ring)?);
        }
        Ok(self.engine.as_mut().expect("just created"))
    }

    /// The backends in use, with their side.
    fn each(&mut self) -> impl Iterator<Item = (usize, &mut dyn Backend)> {
        let k = self.kernel.as_mut().map(|b| (0, b as &mut dyn Backend));
        let e = self.engine.as_mut().map(|b| (1, b as &mut dyn Backend));
        k.into_iter().chain(e)
    }

    /// Copies events ready in the rings into `out`, without a system call.
    pub(crate) fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
        let mut n = 0;
        for (_, b) in self.each() {
            if n == out.len() {
                break;
            }
            n += b.try_reap(&mut out[n..]);
        }
        n
    }

    /// Events waiting in the ring of one side (0 kernel, 1 engine);
    /// `None` without that driver or where its ring is not read.
    pub(crate) fn ready(&self, side: usize) -> Option<usize> {
        match side {
            0 => self.kernel.as_ref().and_then(|k| k.reaper.ready()),
            _ => self.engine.as_ref().and_then(|e| e.reaper.ready()),
        }
    }

    /// Whether some driver reaps its ring.
    pub(crate) fn reaps_ring(&self) -> bool {
        self.kernel.as_ref().is_some_and(|b| b.reaps_ring())
            || self.engine.as_ref().is_some_and(|b| b.reaps_ring())
    }

    /// Events of drivers that reap only by system call, without sleeping.
    pub(crate) fn poll_syscall(&mut self, out: &mut [IoEvent], stats: &mut Stats) -> usize {
        let in_flight = self.in_flight;
        let mut n = 0;
        for (side, b) in self.each() {
            if in_flight[side] > 0 && !b.reaps_ring() && n < out.len() {
                stats.getevents_calls += 1;
                if side == 1 {
                    stats.engine_getevents_calls += 1;
                }
                n += b.wait(0, &mut out[n..], Some(Duration::ZERO)).unwrap_or(0);
            }
        }
        n
    }

    /// Sleeps until at least one event may be ready, and returns those it
    /// collected: in the one driver with requests in flight, or, when both
    /// have some, on the eventfd every completion signals (then the events
    /// are in the rings, or come from `poll_syscall`).
    pub(crate) fn wait(&mut self, out: &mut [IoEvent], stats: &mut Stats) -> Result<usize, Errno> {
        let side = match self.in_flight {
            [0, 0] => return Ok(0),
            [_, 0] => 0,
            [0, _] => 1,
            _ => {
                let fd = self
                    .wake_fd
                    .expect("both drivers run only under Auto, with an eventfd");
                stats.eventfd_waits += 1;
                wait_eventfd(fd)?;
                return Ok(self.poll_syscall(out, stats));
            }
        };
        stats.getevents_calls += 1;
        if side == 1 {
            stats.engine_getevents_calls += 1;
        }
        self.backend(side)?.wait(1, out, None)
    }

    /// `io_cancel` on the side the request went to; `Ok` when cancelled.
    ///
    /// # Safety
    /// As [`Backend::cancel`].
    pub(crate) unsafe fn cancel(&mut self, route: Route, iocb: *mut Iocb) -> Result<(), Errno> {
        // SAFETY: forwarded.
        match unsafe { self.backend(route.side())?.cancel(iocb) } {
            // Linux's answer for a request it found and cancelled.
            Ok(()) | Err(Errno::EINPROGRESS) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Lets go of the contexts without destroying or reaping them: in a
    /// fork child, where they are the parent's.
    pub(crate) fn disown(&mut self) {
        std::mem::forget(self.kernel.take());
        std::mem::forget(self.engine.take());
        self.in_flight = [0, 0];
    }

    /// Destroys every context, each waiting for its requests.
    pub(crate) fn destroy(&mut self) -> Result<(), Errno> {
        let mut result = Ok(());
        for (_, b) in self.each() {
            if let Err(e) = b.destroy() {
                result = Err(e);
            }
        }
        result
    }
}

/// A fresh non-blocking eventfd.
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sleeps until the eventfd's count is nonzero, then resets it: events
/// signalled before the reset are in a ring by then (both drivers post
/// the event before signalling), later ones count anew.
fn wait_eventfd(fd: RawFd) -> Result<(), Errno> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
        return Err(Errno(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        ));
    }
    let mut count = 0u64;
    // SAFETY: reads 8 bytes into a local; EAGAIN (already reset) is fine.
    unsafe { libc::read(fd, (&mut count as *mut u64).cast(), 8) };
    Ok(())
}
