//! The engine's files: an fd duplicated for the request's lifetime (as
//! `fget` takes a reference), classified by `fstat`, and its operations
//! mapped onto `preadv2`/`pwritev2`/`fsync`/`poll`.

use std::boxed::Box;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use aio_abi::{Errno, PollEvents, RwFlags};

use super::cache_guess::CacheGuess;
use super::plug;
use super::poller::Poller;
use super::workers::{Deferred, Job, Pool, Read};
use crate::host::{Completion, EventFd, File, FileMode, IoStatus, PollWaiter, RwOp, Segments};

fn last_errno() -> Errno {
    Errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// The status of a finished `preadv2`/`pwritev2` that returned `n`.
fn status_of(n: isize) -> IoStatus {
    if n >= 0 {
        IoStatus::Done(n as usize)
    } else {
        IoStatus::Error(last_errno())
    }
}

/// Whether a read that returned `n` of `len` bytes got all it asked for or
/// reached the end of the file (any other short read may be the page
/// cache ending, under `RWF_NOWAIT`).
fn whole_read(n: isize, len: u64) -> bool {
    n == 0 || n > 0 && n as u64 == len
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Regular files and block devices: positioned I/O on workers.
    Positioned,
    /// Pipes and sockets: non-blocking attempts, then readiness waits.
    Stream,
    /// Character devices and others: blocking I/O on workers.
    Other,
    Dir,
}

/// What the engine shares with its files.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) poller: Poller,
    /// Per-device answers of the `FMODE_NOWAIT`/`RWF_DONTCACHE` probes.
    probes: Mutex<HashMap<u64, (bool, bool)>>,
    /// Per device (hashed): what its recent reads found in the page
    /// cache ([`CacheGuess`], packed), which decides whether a read is
    /// tried inside `io_submit`.
    guesses: [AtomicU32; 64],
    /// The eventfds of the last requests that had one (a few: one per
    /// context that uses the engine), newest last, with their numbers and
    /// whether a trusted call named them (see [`eventfd_lookup`]).
    eventfds: Mutex<Vec<KnownEventFd>>,
}

impl Shared {
    fn guess(&self, dev: u64) -> &AtomicU32 {
        &self.guesses[(dev ^ dev >> 17) as usize % self.guesses.len()]
    }

    /// Whether to try a buffered read of `len` bytes at `pos` of `fd` (on
    /// `dev`) inside `io_submit`, asking `cachestat` first where the
    /// device's guess says so (see [`CacheGuess`]).
    fn try_inline(&self, dev: u64, fd: i32, pos: i64, len: u64) -> bool {
        let mut g = CacheGuess::from_bits(self.guess(dev).load(Ordering::Relaxed));
        let try_it = g.should_try(|| page_cache_holds(fd, pos, len));
        self.store_guess(dev, g);
        try_it
    }

    fn inline_outcome(&self, dev: u64, hit: bool) {
        let mut g = CacheGuess::from_bits(self.guess(dev).load(Ordering::Relaxed));
        g.outcome(hit);
        self.store_guess(dev, g);
    }

    /// Racy read-modify-write: a lost update only shifts a heuristic.
    /// Stored only when it changes: on a warm device every read hits,
    /// and a store per read from every submitting thread kept the cache
    /// line bouncing between CPUs (perf: two thirds of the engine's own
    /// time, in the load of this counter).
    fn store_guess(&self, dev: u64, g: CacheGuess) {
        let slot = self.guess(dev);
        let bits = g.to_bits();
        if slot.load(Ordering::Relaxed) != bits {
            slot.store(bits, Ordering::Relaxed);
        }
    }

    /// This engine, as its plug knows it.
    pub(crate) fn id(&self) -> usize {
        self as *const Shared as usize
    }

    /// Runs `job` on a worker: at the end of the `io_submit` call if the
    /// thread is inside one (see `plug`), else now.
    pub(crate) fn run(&self, job: Deferred) {
        if let Err(job) = plug::defer(self.id(), job) {
            self.pool.dispatch(std::iter::once(job));
        }
    }

    pub(crate) fn new(pool: Pool, poller: Poller) -> Shared {
        Shared {
            pool,
            poller,
            probes: Mutex::new(HashMap::new()),
            guesses: [const { AtomicU32::new(0) }; 64],
            eventfds: Mutex::new(Vec::new()),
        }
    }
}

pub(crate) struct EngineFile {
    fd: Arc<OwnedFd>,
    /// `st_mode & S_IFMT`.
    fmt: u32,
    /// `(st_dev, st_ino)`: appends to one inode run in submission order.
    inode: (u64, u64),
    /// Opened with `O_DIRECT`.
    direct: bool,
    mode: FileMode,
    kind: Kind,
    shared: Arc<Shared>,
}

/// Whether the file accepts `flag` (`FMODE_NOWAIT`, `FOP_DONTCACHE`): the
/// flag is checked before the file's method runs, so one byte from or to
/// an inaccessible page is either refused as unsupported or fails (or, on
/// `/dev/null`, is discarded) without effect.
fn probe_flag(fd: i32, readable: bool, flag: RwFlags, pos: i64) -> bool {
    let iov = libc::iovec {
        iov_base: guard_page() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: the only segment is a PROT_NONE page: the kernel cannot
    // read or write it.
    let n = unsafe {
        if readable {
            libc::preadv2(fd, &iov, 1, pos, flag.0)
        } else {
            libc::pwritev2(fd, &iov, 1, pos, flag.0)
        }
    };
    !(n < 0 && last_errno() == Errno::EOPNOTSUPP)
}

/// `fget`: `EBADF` for a closed or `O_PATH` fd. Within one `io_submit`
/// call a descriptor is resolved once (a `close` racing with the call may
/// then go unnoticed by its later iocbs, as if it came after the call).
pub(crate) fn fget(shared: &Arc<Shared>, fd: i32) -> Result<Arc<dyn File>, Errno> {
    if let Some(file) = plug::file(shared.id(), fd) {
        return Ok(file);
    }
    let file = open_file(shared, fd)?;
    plug::keep_file(shared.id(), fd, &file);
    Ok(file)
}

fn open_file(shared: &Arc<Shared>, fd: i32) -> Result<Arc<dyn File>, Errno> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: F_GETFL only inspects the fd table.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 || fl & libc::O_PATH != 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: duplicates an open fd; the result is checked.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(last_errno());
    }
    // SAFETY: `dup` is a fresh fd nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    // SAFETY: `st` is plain data, fully written by a successful fstat.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a live, writable stat buffer.
    if unsafe { libc::fstat(dup, &mut st) } < 0 {
        return Err(last_errno());
    }
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFREG | libc::S_IFBLK => Kind::Positioned,
        libc::S_IFIFO | libc::S_IFSOCK => Kind::Stream,
        libc::S_IFDIR => Kind::Dir,
        _ => Kind::Other,
    };
    let acc = fl & libc::O_ACCMODE;
    let read = acc == libc::O_RDONLY || acc == libc::O_RDWR;
    let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
    let (nowait, dontcache) = match kind {
        Kind::Positioned if fmt == libc::S_IFREG => {
            let dev = st.st_dev;
            let cached = shared
                .probes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&dev)
                .copied();
            match cached {
                Some(c) => c,
                None => {
                    // A write probe cannot tell FMODE_NOWAIT from a
                    // filesystem refusing buffered NOWAIT writes (ext4), so
                    // a write-only file is reopened for reading to ask.
                    let reader = if read {
                        None
                    } else {
                        let path = std::format!("/proc/self/fd/{dup}\0");
                        // SAFETY: a NUL-terminated path; the result is checked.
                        let r = unsafe {
                            libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC)
                        };
                        // SAFETY: a fresh fd nobody else owns.
                        (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r) })
                    };
                    let probe_fd = reader.as_ref().map_or(dup, |f| f.as_raw_fd());
                    if read || reader.is_some() {
                        let c = (
                            probe_flag(probe_fd, true, RwFlags::NOWAIT, 0),
                            probe_flag(probe_fd, true, RwFlags::DONTCACHE, 0),
                        );
                        shared
                            .probes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(dev, c);
                        c
                    } else {
                        // Unreadable even when reopened: a guess, not cached.
                        (true, probe_flag(dup, false, RwFlags::DONTCACHE, 0))
                    }
                }
            }
        }
        Kind::Positioned | Kind::Stream => (true, false),
        Kind::Dir => (false, false),
        Kind::Other if fmt == libc::S_IFCHR => (probe_flag(dup, read, RwFlags::NOWAIT, -1), false),
        Kind::Other => (true, false),
    };
    // A device without a poll method reports exactly DEFAULT_POLLMASK to
    // poll(2) whatever is asked; Linux's aio_poll then uses that mask (and
    // refuses a request it cannot satisfy) instead of waiting.
    let has_poll = match kind {
        Kind::Stream => true,
        Kind::Other if fmt == libc::S_IFCHR => {
            let mut pfd = libc::pollfd {
                fd: dup,
                events: -1,
                revents: 0,
            };
            // SAFETY: one live pollfd, zero timeout.
            let n = unsafe { libc::poll(&mut pfd, 1, 0) };
            !(n == 1 && pfd.revents as u16 as u32 == crate::DEFAULT_POLLMASK.0)
        }
        Kind::Other => true,
        Kind::Positioned | Kind::Dir => false,
    };
    // Anonymous inodes have no type bits. On current kernels eventfd,
    // timerfd and signalfd have a read_iter and no write_iter; epoll and
    // the rest have neither, so AIO refuses them with EINVAL (checked
    // against 6.18 by tests/differential.rs).
    let (has_read_iter, has_write_iter) = match kind {
        Kind::Dir => (false, false),
        Kind::Other if fmt == 0 => {
            let link = std::fs::read_link(std::format!("/proc/self/fd/{dup}")).unwrap_or_default();
            let readable = [
                "anon_inode:[eventfd]",
                "anon_inode:[timerfd]",
                "anon_inode:[signalfd]",
            ]
            .iter()
            .any(|n| link.as_os_str() == *n);
            (readable, false)
        }
        _ => (true, true),
    };
    let mode = FileMode {
        read,
        write,
        has_read_iter,
        has_write_iter,
        has_fsync: matches!(kind, Kind::Positioned | Kind::Dir),
        has_poll,
        nowait,
        atomic_write: false,
        dontcache,
        append: fl & libc::O_APPEND != 0,
        append_only: false,
        regular: kind == Kind::Positioned,
    };
    Ok(Arc::new(EngineFile {
        fd: Arc::new(owned),
        fmt,
        inode: (st.st_dev, st.st_ino),
        direct: fl & libc::O_DIRECT != 0,
        mode,
        kind,
        shared: shared.clone(),
    }))
}

/// Whether the page cache holds all of `len` bytes at `pos` of `fd`;
/// `None` without `cachestat` (before Linux 6.5, or filtered).
fn page_cache_holds(fd: i32, pos: i64, len: u64) -> Option<bool> {
    use aio_abi::syscall::{CACHESTAT, Cachestat, CachestatRange};
    let range = CachestatRange::bytes(pos, len);
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both locals.
    if unsafe { libc::syscall(CACHESTAT, fd, &range, &mut stat, 0) } != 0 {
        return None;
    }
    // SAFETY: plain query.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(stat.nr_cache >= range.pages(page))
}

/// A mapped page nobody can access (never unmapped).
fn guard_page() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: a fresh anonymous PROT_NONE mapping that is never unmapped.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED { 0 } else { p as u64 }
    })
}

/// One `preadv2`/`pwritev2` over the op's segments.
///
/// # Safety
///
/// The segments must be memory the engine's caller allowed the request to
/// read (write) or unmapped; the kernel reports unmapped memory as `EFAULT`.
unsafe fn transfer(fd: i32, op: &RwOp, pos: i64, flags: RwFlags, write: bool) -> isize {
    // On 64-bit targets `IoVec` is the kernel's `struct iovec`, byte for
    // byte: the segments go to the kernel as they are (no copy, no
    // allocation per request).
    #[cfg(target_pointer_width = "64")]
    let iov = {
        use core::mem::{align_of, offset_of, size_of};
        const _: () = assert!(
            size_of::<aio_abi::IoVec>() == size_of::<libc::iovec>()
                && align_of::<aio_abi::IoVec>() >= align_of::<libc::iovec>()
                && offset_of!(libc::iovec, iov_len) == offset_of!(aio_abi::IoVec, iov_len)
        );
        op.segs.as_ptr().cast::<libc::iovec>()
    };
    #[cfg(not(target_pointer_width = "64"))]
    let owned: std::vec::Vec<libc::iovec> = op
        .segs
        .iter()
        .map(|s| libc::iovec {
            iov_base: s.iov_base as usize as *mut libc::c_void,
            iov_len: s.iov_len as usize,
        })
        .collect();
    #[cfg(not(target_pointer_width = "64"))]
    let iov = owned.as_ptr();
    let n = op.segs.len() as libc::c_int;
    if write {
        // SAFETY: the caller vouches for the segments; `iov` points at
        // `n` iovecs that live through the call.
        unsafe { libc::pwritev2(fd, iov, n, pos, flags.0) }
    } else {
        // SAFETY: as above.
        unsafe { libc::preadv2(fd, iov, n, pos, flags.0) }
    }
}

impl EngineFile {
    fn rw(&self, op: &RwOp, done: &Completion, write: bool) -> IoStatus {
        let fd = self.fd.as_raw_fd();
        if op.is_empty() {
            // Linux calls write_iter even for zero bytes, and a filesystem
            // without buffered NOWAIT writes (ext4) refuses them; a
            // zero-length syscall never reaches it. Ask with one byte from
            // an inaccessible page, at offset 0 (the request's own offset may
            // be at the very end of the range, where one byte overflows):
            // refused, or EFAULT with nothing written.
            if write && self.kind == Kind::Positioned && op.flags.contains(RwFlags::NOWAIT) {
                let probe = RwOp {
                    segs: Segments::One(aio_abi::IoVec {
                        iov_base: guard_page(),
                        iov_len: 1,
                    }),
                    ..op.clone()
                };
                // SAFETY: the only segment is a PROT_NONE page: nothing is
                // read from it.
                let n = unsafe { transfer(fd, &probe, 0, op.flags, true) };
                if n < 0 && last_errno() == Errno::EOPNOTSUPP {
                    return IoStatus::Error(Errno::EOPNOTSUPP);
                }
            }
            return IoStatus::Done(0);
        }
        match self.kind {
            // sock_read_iter/sock_write_iter refuse a position (pipes ignore it).
            Kind::Stream if self.fmt == libc::S_IFSOCK && op.pos != 0 => {
                IoStatus::Error(Errno::ESPIPE)
            }
            Kind::Stream => {
                let user_nowait = op.flags.contains(RwFlags::NOWAIT);
                let flags = op.flags | RwFlags::NOWAIT;
                // SAFETY: the segments were lent by the caller of
                // `Engine::io_submit` until the event is posted.
                let n = unsafe { transfer(fd, op, -1, flags, write) };
                if n >= 0 {
                    let n = n as usize;
                    return if write && n > 0 && (n as u64) < op.len() {
                        IoStatus::Partial(n)
                    } else {
                        IoStatus::Done(n)
                    };
                }
                match last_errno() {
                    Errno::EAGAIN if user_nowait => IoStatus::Error(Errno::EAGAIN),
                    // Nothing could wake the request: it fails as if the
                    // thread it needs could not be created.
                    Errno::EAGAIN if !self.shared.poller.start() => IoStatus::Error(Errno::EAGAIN),
                    Errno::EAGAIN => IoStatus::WouldBlock(0),
                    Errno::EOPNOTSUPP if !user_nowait => self.queue(op, done, write, -1),
                    e => IoStatus::Error(e),
                }
            }
            Kind::Positioned if op.flags.contains(RwFlags::NOWAIT) => {
                // Never blocks: complete it here, as Linux would.
                // SAFETY: as above.
                status_of(unsafe { transfer(fd, op, op.pos, op.flags, write) })
            }
            Kind::Positioned
                if !write
                    && !self.direct
                    && self.mode.nowait
                    && self.shared.try_inline(self.inode.0, fd, op.pos, op.len()) =>
            {
                // What the page cache holds is copied here, without
                // waiting, as Linux copies it inside io_submit; only a miss
                // goes to a worker. (Not for O_DIRECT: a synchronous read
                // waits for the device even with RWF_NOWAIT.)
                // SAFETY: as above.
                let n = unsafe { transfer(fd, op, op.pos, op.flags | RwFlags::NOWAIT, false) };
                let hit = whole_read(n, op.len());
                self.shared.inline_outcome(self.inode.0, hit);
                match n {
                    // All of it, or the end of the file.
                    _ if hit => IoStatus::Done(n as usize),
                    // The cache ends here (or the file does: the next call
                    // reads 0).
                    n if n > 0 => IoStatus::Partial(n as usize),
                    // A miss; any error is the worker's to report.
                    _ => self.queue(op, done, write, op.pos),
                }
            }
            Kind::Positioned | Kind::Other => self.queue(op, done, write, op.pos),
            Kind::Dir => IoStatus::Error(Errno::EINVAL),
        }
    }

    fn queue(&self, op: &RwOp, done: &Completion, write: bool, pos: i64) -> IoStatus {
        let fd = self.fd.clone();
        let op = op.clone();
        let done = done.clone();
        if !write && !self.direct && self.mode.nowait && self.kind == Kind::Positioned {
            self.shared.run(Deferred::Read(
                self.inode.0,
                Box::new(BufferedRead { fd, op, pos, done }),
            ));
            return IoStatus::Queued;
        }
        let other = self.kind == Kind::Other;
        // Linux places appends at the end in submission order (each takes
        // the inode lock inside io_submit); workers must not reorder them.
        let appends = write
            && (op.flags.contains(RwFlags::APPEND)
                || (self.mode.append && !op.flags.contains(RwFlags::NOAPPEND)));
        let job = Job::new(done, move |done| {
            let raw = fd.as_raw_fd();
            // SAFETY: the segments were lent by the caller of
            // `Engine::io_submit` until the event is posted.
            let mut n = unsafe { transfer(raw, &op, pos, op.flags, write) };
            if n < 0 && other && last_errno() == Errno::ESPIPE {
                // A device without positioned I/O (a tty): its position is
                // ignored, as Linux's read_iter ignores ki_pos there.
                // SAFETY: as above.
                n = unsafe { transfer(raw, &op, -1, op.flags, write) };
            }
            let status = status_of(n);
            done.finish(status);
        });
        self.shared.run(if appends {
            Deferred::Ordered(self.inode, job)
        } else {
            Deferred::Run(job)
        });
        IoStatus::Queued
    }
}

/// A buffered read of a positioned file on a worker, which may start it
/// with `RWF_NOWAIT` before it waits (see [`Deferred::Read`]).
struct BufferedRead {
    fd: Arc<OwnedFd>,
    op: RwOp,
    pos: i64,
    done: Completion,
}

impl Read for BufferedRead {
    fn try_finish(&mut self) -> bool {
        let flags = self.op.flags | RwFlags::NOWAIT;
        // SAFETY: the segments were lent by the caller of
        // `Engine::io_submit` until the event is posted.
        let n = unsafe { transfer(self.fd.as_raw_fd(), &self.op, self.pos, flags, false) };
        // Only a whole answer is final (all of it, or the end of the
        // file); a short read, `EAGAIN` or an error is left to the read
        // that waits, whose result is the one Linux would give.
        let whole = whole_read(n, self.op.len());
        if whole {
            self.done.finish(IoStatus::Done(n as usize));
        }
        whole
    }

    fn fail(&mut self, e: Errno) {
        self.done.finish(IoStatus::Error(e));
    }

    fn finish(&mut self) {
        // SAFETY: as above.
        let n = unsafe {
            transfer(
                self.fd.as_raw_fd(),
                &self.op,
                self.pos,
                self.op.flags,
                false,
            )
        };
        self.done.finish(status_of(n));
    }
}

impl File for EngineFile {
    fn mode(&self) -> FileMode {
        self.mode
    }

    fn read_iter(&self, op: &RwOp, done: &Completion) -> IoStatus {
        self.rw(op, done, false)
    }

    fn write_iter(&self, op: &RwOp, done: &Completion) -> IoStatus {
        self.rw(op, done, true)
    }

    fn fsync(&self, datasync: bool, done: &Completion) -> IoStatus {
        let fd = self.fd.clone();
        let done = done.clone();
        self.shared.run(Deferred::Run(Job::new(done, move |done| {
            let raw = fd.as_raw_fd();
            // SAFETY: plain syscalls on an fd we own.
            let r = unsafe {
                if datasync {
                    libc::fdatasync(raw)
                } else {
                    libc::fsync(raw)
                }
            };
            done.finish(if r == 0 {
                IoStatus::Done(0)
            } else {
                IoStatus::Error(last_errno())
            });
        })));
        IoStatus::Queued
    }

    fn poll(&self, events: PollEvents, waiter: Option<&PollWaiter>) -> PollEvents {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: events.0 as i16,
            revents: 0,
        };
        // SAFETY: one live pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        let ready = if n > 0 {
            PollEvents(pfd.revents as u16 as u32)
        } else {
            PollEvents::EMPTY
        };
        if ready.intersects(events | PollEvents::ERR | PollEvents::HUP) {
            return ready;
        }
        if let Some(w) = waiter {
            let key = match self.fmt {
                libc::S_IFIFO => wake_key_pipe,
                libc::S_IFSOCK => wake_key_socket,
                _ => same_key,
            };
            if !self.shared.poller.register(self.fd.clone(), events, w, key) {
                // No thread can wait for it: reported as an error
                // condition rather than left waiting forever.
                return ready | PollEvents::ERR;
            }
        }
        ready
    }

    fn poll_cancel(&self, _waiter: &PollWaiter) {
        self.shared.poller.kick();
    }
}

/// `poll(2)` reports only requested bits; Linux's wake-ups carry a key with
/// the driver's whole class of bits. These rebuild the key.
fn wake_key_pipe(rev: PollEvents) -> PollEvents {
    let mut k = rev;
    if rev.intersects(PollEvents::IN | PollEvents::RDNORM) {
        k |= PollEvents::IN | PollEvents::RDNORM;
    }
    if rev.intersects(PollEvents::OUT | PollEvents::WRNORM) {
        k |= PollEvents::OUT | PollEvents::WRNORM;
    }
    k
}

fn wake_key_socket(rev: PollEvents) -> PollEvents {
    let mut k = rev;
    if rev.intersects(PollEvents::IN | PollEvents::RDNORM) {
        k |= PollEvents::IN | PollEvents::PRI | PollEvents::RDNORM | PollEvents::RDBAND;
    }
    if rev.intersects(PollEvents::OUT | PollEvents::WRNORM) {
        k |= PollEvents::OUT | PollEvents::WRNORM | PollEvents::WRBAND;
    }
    k
}

fn same_key(rev: PollEvents) -> PollEvents {
    rev
}

/// An eventfd duplicated at submission, like `eventfd_ctx_fdget`'s
/// reference, with the engine (`Shared::id`) whose plug may hold its
/// signals back.
pub(crate) struct EngineEventFd {
    fd: Arc<OwnedFd>,
    engine: usize,
}

/// Adds `n` to the eventfd's counter.
pub(crate) fn eventfd_add(fd: &OwnedFd, n: u64) {
    let n = n.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to our own fd.
    unsafe { libc::write(fd.as_raw_fd(), n.as_ptr().cast(), 8) };
}

impl EventFd for EngineEventFd {
    fn signal(&self) {
        if !plug::defer_signal(self.engine, &self.fd) {
            eventfd_add(&self.fd, 1);
        }
    }
}

/// `kcmp(2)`'s `KCMP_FILE`: whether two descriptors of this process
/// name the same open file (`None` where kcmp is missing or forbidden).
fn same_file(a: i32, b: i32) -> Option<bool> {
    const KCMP_FILE: libc::c_long = 0;
    let pid = super::process_id();
    // SAFETY: kcmp reads no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    (r >= 0).then_some(r == 0)
}

/// `eventfd_ctx_fdget`: `EBADF` if closed, `EINVAL` if not an eventfd.
/// The last few eventfds taken are kept: a request naming one of them
/// again (every request of a context usually does) costs one `kcmp`
/// (nothing in a trusted call) instead of a `readlink` of /proc and a
/// `dup`.
pub(crate) fn eventfd_get(shared: &Shared, fd: i32) -> Result<Arc<dyn EventFd>, Errno> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    if let Some(efd) = plug::eventfd(shared.id(), fd) {
        return Ok(efd);
    }
    let efd = eventfd_lookup(shared, fd)?;
    plug::keep_eventfd(shared.id(), fd, &efd);
    Ok(efd)
}

/// An eventfd the engine looked up: its number, the engine's reference,
/// and whether a trusted call named it.
type KnownEventFd = (i32, Arc<EngineEventFd>, bool);

/// How many eventfds [`Shared::eventfds`] remembers.
const KNOWN_EVENTFDS: usize = 8;

fn eventfd_lookup(shared: &Shared, fd: i32) -> Result<Arc<EngineEventFd>, Errno> {
    let known = shared
        .eventfds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(raw, _, _)| *raw == fd)
        .cloned();
    let trusted = super::trusted_call();
    if let Some((_, efd, by_trusted)) = known {
        // A trusted caller vouches that its eventfd numbers keep naming
        // the same eventfds (`Engine::io_submit_trusted`).
        if (trusted && by_trusted) || same_file(fd, efd.fd.as_raw_fd()) == Some(true) {
            return Ok(efd);
        }
    }
    let efd = eventfd_open(shared, fd)?;
    let mut list = shared.eventfds.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|(raw, _, _)| *raw != fd);
    if list.len() == KNOWN_EVENTFDS {
        list.remove(0);
    }
    list.push((fd, efd.clone(), trusted));
    Ok(efd)
}

/// Makes the next lookup of each remembered eventfd ask the kernel again.
pub(crate) fn distrust_eventfds(shared: &Shared) {
    for known in shared
        .eventfds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
    {
        known.2 = false;
    }
}

fn eventfd_open(shared: &Shared, fd: i32) -> Result<Arc<EngineEventFd>, Errno> {
    // SAFETY: F_GETFL only inspects the fd table.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 || fl & libc::O_PATH != 0 {
        return Err(Errno::EBADF);
    }
    let link = std::fs::read_link(std::format!("/proc/self/fd/{fd}")).map_err(|_| Errno::EBADF)?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(Errno::EINVAL);
    }
    // SAFETY: duplicates an open fd; the result is checked.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(last_errno());
    }
    // SAFETY: `dup` is a fresh fd nobody else owns.
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(dup) });
    Ok(Arc::new(EngineEventFd {
        fd,
        engine: shared.id(),
    }))
}
