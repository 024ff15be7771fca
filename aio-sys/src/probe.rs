//! What AIO can do on this kernel, for this process.
//!
//! Every answer comes from asking the kernel: a context is set up, requests
//! with each opcode and each `RWF_*` flag are submitted against a scratch
//! file, and the errno (synchronous, or in the event) decides.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use aio_abi::{AioContext, Errno, IoEvent, IoVec, Iocb, Opcode, PollEvents, RwFlags};

use crate::{io_cancel, io_destroy, io_getevents, io_pgetevents, io_setup, io_submit};

/// Why `io_setup` failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SetupFailure {
    /// `ENOSYS`: the kernel has no AIO (`CONFIG_AIO=n`) or a seccomp filter
    /// answers `ENOSYS`.
    NotImplemented,
    /// `EPERM`: a seccomp filter (container runtime) forbids it.
    Forbidden,
    /// `EAGAIN`: `aio-nr` has reached `aio-max-nr`.
    LimitReached,
    /// Any other errno.
    Other(Errno),
}

impl SetupFailure {
    /// Classifies an `io_setup` errno.
    pub fn from_errno(e: Errno) -> SetupFailure {
        match e {
            Errno::ENOSYS => SetupFailure::NotImplemented,
            Errno::EPERM => SetupFailure::Forbidden,
            Errno::EAGAIN => SetupFailure::LimitReached,
            e => SetupFailure::Other(e),
        }
    }

    /// The errno behind this failure.
    pub fn errno(self) -> Errno {
        match self {
            SetupFailure::NotImplemented => Errno::ENOSYS,
            SetupFailure::Forbidden => Errno::EPERM,
            SetupFailure::LimitReached => Errno::EAGAIN,
            SetupFailure::Other(e) => e,
        }
    }

    /// What the user can do about it.
    pub fn advice(self) -> &'static str {
        match self {
            SetupFailure::NotImplemented => {
                "the kernel lacks native AIO (CONFIG_AIO) or a seccomp filter hides it; \
                 use a kernel with CONFIG_AIO=y or the userspace engine"
            }
            SetupFailure::Forbidden => {
                "a seccomp filter forbids the AIO system calls (common in containers); \
                 allow io_setup/io_submit/io_getevents/io_destroy/io_cancel in the profile \
                 or use the userspace engine"
            }
            SetupFailure::LimitReached => {
                "fs.aio-nr has reached fs.aio-max-nr; raise it \
                 (sysctl -w fs.aio-max-nr=1048576) or use smaller queue depths"
            }
            SetupFailure::Other(_) => "unexpected error from io_setup",
        }
    }
}

/// How the kernel answered a probe request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Support {
    /// Accepted and completed without an unsupported-operation error.
    Yes,
    /// Refused with this errno (synchronously or in the event).
    No(Errno),
}

impl Support {
    /// Whether the kernel accepted it.
    pub fn is_yes(self) -> bool {
        self == Support::Yes
    }
}

/// The answers of [`probe`].
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel_release: String,
    /// `Ok` if `io_setup` works in this process.
    pub setup: Result<(), SetupFailure>,
    /// `fs.aio-nr`, if readable.
    pub aio_nr: Option<u64>,
    /// `fs.aio-max-nr`, if readable.
    pub aio_max_nr: Option<u64>,
    /// The `Seccomp:` mode of this process from `/proc/self/status`
    /// (0 none, 1 strict, 2 filter).
    pub seccomp_mode: Option<u32>,
    /// Each opcode probed, with the kernel's answer.
    pub opcodes: Vec<(Opcode, Support)>,
    /// Each `RWF_*` flag probed on a read (a write for `RWF_ATOMIC`) of the
    /// scratch file, with the kernel's answer.
    pub rw_flags: Vec<(RwFlags, Support)>,
    /// Whether `io_pgetevents` can be called; when `io_setup` failed it
    /// could not be probed, and holds `io_setup`'s errno.
    pub pgetevents: Support,
    /// Why opcodes and flags were not probed, if they were not.
    pub incomplete: Option<String>,
}

impl Capabilities {
    /// The answer for one opcode, if probed.
    pub fn opcode(&self, op: Opcode) -> Option<Support> {
        self.opcodes.iter().find(|(o, _)| *o == op).map(|(_, s)| *s)
    }

    /// The answer for one `RWF_*` flag, if probed.
    pub fn rw_flag(&self, flag: RwFlags) -> Option<Support> {
        self.rw_flags
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, s)| *s)
    }

    /// The union of the `RWF_*` flags the kernel accepted.
    pub fn supported_rw_flags(&self) -> RwFlags {
        self.rw_flags
            .iter()
            .filter(|(_, s)| s.is_yes())
            .fold(RwFlags::EMPTY, |acc, (f, _)| acc | *f)
    }
}

/// Reads a number from a sysctl under `/proc/sys/fs` (`name` such as
/// `aio-max-nr` or `inotify/max_user_watches`).
///
/// `None` if it is unreadable or not a number, and for a name with an
/// empty, `.` or `..` component, which would leave `/proc/sys/fs`. The
/// read is bounded, so a file that never ends cannot exhaust memory.
pub fn read_fs_sysctl(name: &str) -> Option<u64> {
    use std::io::Read;
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return None;
    }
    let mut text = String::new();
    File::open(Path::new("/proc/sys/fs").join(name))
        .ok()?
        .take(SYSCTL_READ_MAX)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Enough for any number a sysctl holds (a `u64` has 20 digits).
const SYSCTL_READ_MAX: u64 = 64;

/// The `Seccomp:` mode of this process (0 none, 1 strict, 2 filter).
pub fn seccomp_mode() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))?
        .trim()
        .parse()
        .ok()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// How long the probe waits for one request's event before it gives the
/// request up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer for a request that did not complete within [`PROBE_TIMEOUT`].
const TIMED_OUT: Errno = Errno(libc::ETIMEDOUT);

/// The memory the probe's requests name: a one-byte buffer, an iovec over
/// it, and the iocb a request is submitted from (whose address identifies
/// the request in its event and to `io_cancel`).
struct ProbeMemory {
    byte: [u8; 1],
    iov: IoVec,
    iocb: Iocb,
}

/// The probe's context and the memory its requests use, one request in
/// flight at a time.
///
/// Dropping it destroys the context first (`io_destroy` returns only when
/// every request has completed) and frees the memory after. If a request is
/// still in flight and the context cannot be destroyed, the memory is
/// leaked, never freed under the kernel.
struct Prober {
    ctx: AioContext,
    timeout: Duration,
    /// From `Box::leak`, freed in `Drop`. The kernel may write into it while a request is
    /// in flight, so no reference into it is ever made.
    mem: NonNull<ProbeMemory>,
    /// A submitted request whose event has not been reaped. Outside
    /// [`Prober::run`] this means the request could be neither reaped nor
    /// cancelled, and no further request is submitted.
    in_flight: bool,
    /// Whether a request that times out is cancelled (always, except in
    /// the test of a request that cannot be, as file I/O cannot).
    cancel_on_timeout: bool,
}

impl Prober {
    fn new(timeout: Duration) -> Result<Prober, Errno> {
        let ctx = io_setup(8)?;
        let mem = NonNull::from(Box::leak(Box::new(ProbeMemory {
            byte: [0],
            iov: IoVec::default(),
            iocb: Iocb::default(),
        })));
        let p = Prober {
            ctx,
            timeout,
            mem,
            in_flight: false,
            cancel_on_timeout: true,
        };
        // SAFETY: `mem` is a live allocation that nothing else refers to.
        unsafe {
            (&raw mut (*p.mem.as_ptr()).iov).write(IoVec {
                iov_base: p.buf(),
                iov_len: 1,
            })
        };
        Ok(p)
    }

    /// The address of the one-byte buffer.
    fn buf(&self) -> u64 {
        // SAFETY: in bounds of the live allocation; no reference is made.
        unsafe { &raw mut (*self.mem.as_ptr()).byte }.cast::<u8>() as u64
    }

    /// The address of a one-element iovec array over [`Prober::buf`].
    fn iov(&self) -> u64 {
        // SAFETY: as in `buf`.
        (unsafe { &raw const (*self.mem.as_ptr()).iov }) as u64
    }

    fn iocb(&self) -> *mut Iocb {
        // SAFETY: as in `buf`.
        unsafe { &raw mut (*self.mem.as_ptr()).iocb }
    }

    /// Whether a request was given up while the kernel still holds it.
    fn is_stuck(&self) -> bool {
        self.in_flight
    }

    /// Submits one request and waits for its event; the synchronous error,
    /// the event's `res`, or `ETIMEDOUT` when no event came in time.
    ///
    /// On a timeout the request is cancelled (only polls can be) and its
    /// event reaped; a request that cannot be cancelled stays in flight,
    /// and the prober refuses further requests (`EBUSY`).
    fn run(&mut self, iocb: Iocb) -> Result<i64, Errno> {
        if self.in_flight {
            return Err(Errno::EBUSY);
        }
        let slot = self.iocb();
        // SAFETY: no request is in flight, so nothing reads or writes the
        // slot concurrently.
        unsafe { slot.write(iocb) };
        // SAFETY: the iocb and the buffer and iovec its request names live
        // in `mem`, which is freed only after `io_destroy` has returned
        // (every request completed) or not at all (`Drop`).
        unsafe { io_submit(self.ctx, &[slot]) }?;
        self.in_flight = true;
        match self.reap(Some(self.timeout))? {
            Some(res) => Ok(res),
            None => {
                if self.cancel_on_timeout && self.cancel() {
                    // A cancelled request completes at once.
                    self.reap(None)?;
                }
                Err(TIMED_OUT)
            }
        }
    }

    /// `io_cancel` of the request in flight; whether the kernel took it
    /// (only polls are cancellable; file I/O answers `EINVAL`).
    fn cancel(&self) -> bool {
        // SAFETY: the slot is the live iocb the request was submitted from.
        let r = unsafe { io_cancel(self.ctx, self.iocb()) };
        matches!(r, Ok(()) | Err(Errno::EINPROGRESS))
    }

    /// Waits up to `timeout` (`None`: without limit) for the event of the
    /// request in flight: its `res`, or `None` on a timeout.
    fn reap(&mut self, timeout: Option<Duration>) -> Result<Option<i64>, Errno> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut ev = [IoEvent::default()];
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            // SAFETY: no ring view of the prober's context exists.
            let got = unsafe { io_getevents(self.ctx, 1, &mut ev, left) };
            match got {
                // The context has only this request; its event names its iocb.
                Ok(1) if ev[0].obj == self.iocb() as u64 => {
                    self.in_flight = false;
                    return Ok(Some(ev[0].res));
                }
                Ok(1) => continue,
                Ok(_) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn support(&mut self, iocb: Iocb) -> Support {
        match self.run(iocb) {
            Ok(res) => match Errno::from_ret(res) {
                Ok(_) => Support::Yes,
                // A short or would-block answer still means the flag passed validation.
                Err(Errno::EAGAIN) => Support::Yes,
                Err(e) => Support::No(e),
            },
            Err(e) => Support::No(e),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        // SAFETY: no ring view of this context exists; io_destroy returns
        // only when every request of the context has completed.
        let destroyed = unsafe { io_destroy(self.ctx) }.is_ok();
        if destroyed || !self.in_flight {
            // SAFETY: from `Box::leak` in `new`, freed once; the kernel holds
            // no request that names it.
            drop(unsafe { Box::from_raw(self.mem.as_ptr()) });
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What a probe request is asked for.
enum Probed {
    Op(Opcode),
    Flag(RwFlags),
}

/// Probes the running kernel. Scratch files go to `dir` (the temporary
/// directory if `None`), so flag support reflects that filesystem.
pub fn probe(dir: Option<&Path>) -> Capabilities {
    let mut caps = Capabilities {
        kernel_release: kernel_release(),
        setup: Ok(()),
        aio_nr: read_fs_sysctl("aio-nr"),
        aio_max_nr: read_fs_sysctl("aio-max-nr"),
        seccomp_mode: seccomp_mode(),
        opcodes: Vec::new(),
        rw_flags: Vec::new(),
        pgetevents: Support::No(Errno::ENOSYS),
        incomplete: None,
    };
    let mut prober = match Prober::new(PROBE_TIMEOUT) {
        Ok(p) => p,
        Err(e) => {
            let failure = SetupFailure::from_errno(e);
            caps.setup = Err(failure);
            let no = Support::No(failure.errno());
            caps.pgetevents = no;
            return caps;
        }
    };
    // First, as it needs only the context: no scratch file (a read-only
    // directory) leaves it unprobed. An empty array: the call is probed
    // without taking any event.
    // SAFETY: no ring view of the prober's context exists.
    let pget = unsafe { io_pgetevents(prober.ctx, 0, &mut [], Some(Duration::ZERO), None) };
    caps.pgetevents = match pget {
        Ok(_) => Support::Yes,
        Err(e) => Support::No(e),
    };
    let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let file = match scratch_file(&dir) {
        Ok(f) => f,
        Err(e) => {
            caps.incomplete = Some(format!(
                "cannot create a scratch file in {}: {e}",
                dir.display()
            ));
            return caps;
        }
    };
    let fd = file.as_raw_fd();
    let buf = prober.buf();
    let iov_addr = prober.iov();

    // The read end stays open so the write end polls writable, not POLLERR.
    let (_rd, wr) = match pipe() {
        Ok(p) => p,
        Err(e) => {
            caps.incomplete = Some(format!("cannot create a pipe: {e}"));
            return caps;
        }
    };
    let candidates = [
        (Opcode::PREAD, Iocb::pread(fd, buf, 1, 0)),
        (Opcode::PWRITE, Iocb::pwrite(fd, buf, 1, 0)),
        (Opcode::FSYNC, Iocb::fsync(fd)),
        (Opcode::FDSYNC, Iocb::fdsync(fd)),
        // A pipe's write end is writable at once, so the poll completes.
        (Opcode::POLL, Iocb::poll(wr.as_raw_fd(), PollEvents::OUT)),
        (
            Opcode::NOOP,
            Iocb {
                aio_lio_opcode: Opcode::NOOP,
                ..Iocb::fsync(fd)
            },
        ),
        (Opcode::PREADV, Iocb::preadv(fd, iov_addr, 1, 0)),
        (Opcode::PWRITEV, Iocb::pwritev(fd, iov_addr, 1, 0)),
    ];
    let rw_flag_probes = (0..9).map(|bit| {
        let flag = RwFlags(1 << bit);
        // RWF_ATOMIC applies to writes only; every other flag is probed on a
        // read so that the scratch file is left as it is.
        let iocb = if flag == RwFlags::ATOMIC {
            Iocb::pwritev2(fd, iov_addr, 1, 0, flag)
        } else {
            Iocb::preadv2(fd, iov_addr, 1, 0, flag)
        };
        (flag, iocb)
    });
    let opcode_probes = candidates
        .into_iter()
        .map(|(op, iocb)| (Probed::Op(op), iocb));
    for (what, iocb) in opcode_probes.chain(rw_flag_probes.map(|(f, i)| (Probed::Flag(f), i))) {
        if prober.is_stuck() {
            caps.incomplete = Some(format!(
                "a probe request did not complete within {} s and could not be \
                 cancelled; the later ones were not run",
                PROBE_TIMEOUT.as_secs()
            ));
            break;
        }
        let answer = prober.support(iocb);
        match what {
            Probed::Op(op) => caps.opcodes.push((op, answer)),
            Probed::Flag(flag) => caps.rw_flags.push((flag, answer)),
        }
    }

    caps
}

/// An anonymous file with one byte, in `dir`: `O_TMPFILE` where the
/// filesystem has it, else a uniquely named file unlinked at once.
fn scratch_file(dir: &Path) -> io::Result<File> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    let mut f = match tmp {
        Ok(f) => f,
        Err(_) => {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = dir.join(format!(".aio-probe-{}-{seq}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&name)?;
            let _ = std::fs::remove_file(&name);
            f
        }
    };
    f.write_all(b"x")?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one byte into the pipe, which makes its read end readable.
    fn fill(wr: &OwnedFd) {
        // SAFETY: one byte from a live buffer to our own pipe.
        let n = unsafe { libc::write(wr.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(n, 1);
    }

    #[test]
    fn a_timed_out_probe_is_cancelled_and_does_not_take_a_later_probes_event() {
        let (rd, wr) = pipe().unwrap();
        // Any wait times out: nothing is written before the poll is given up.
        let mut p = Prober::new(Duration::from_millis(20)).unwrap();
        let first = p.run(Iocb::poll(rd.as_raw_fd(), PollEvents::IN));
        assert_eq!(first, Err(TIMED_OUT));
        assert!(!p.is_stuck(), "the poll was cancelled and its event reaped");
        // Would complete the first poll if the kernel still held it.
        fill(&wr);
        let second = p.run(Iocb::poll(wr.as_raw_fd(), PollEvents::OUT));
        assert_eq!(second, Ok(i64::from(libc::POLLOUT)));
        // Nothing else is owed to this context.
        let mut ev = [IoEvent::default()];
        // SAFETY: no ring view of the prober's context exists.
        let owed = unsafe { io_getevents(p.ctx, 0, &mut ev, Some(Duration::ZERO)) };
        assert_eq!(owed, Ok(0));
    }

    #[test]
    fn a_request_that_cannot_be_reaped_keeps_its_memory_until_the_context_is_destroyed() {
        let (rd, wr) = pipe().unwrap();
        let mut p = Prober::new(Duration::from_millis(20)).unwrap();
        p.cancel_on_timeout = false;
        let first = p.run(Iocb::poll(rd.as_raw_fd(), PollEvents::IN));
        assert_eq!(first, Err(TIMED_OUT));
        assert!(p.is_stuck(), "the kernel still holds the poll");
        // No second request shares the context, the iocb or the buffer.
        let second = p.run(Iocb::pread(rd.as_raw_fd(), p.buf(), 1, 0));
        assert_eq!(second, Err(Errno::EBUSY));
        // io_destroy cancels the poll and returns once it has completed;
        // only then is the memory freed.
        drop(p);
        // The poll is gone: it no longer competes for the byte.
        fill(&wr);
        let mut b = [0u8; 1];
        // SAFETY: reads one byte into a live local.
        let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        assert_eq!(n, 1);
        assert_eq!(b, *b"x");
    }

    #[test]
    fn the_probe_runs_every_request_on_this_kernel() {
        let caps = probe(None);
        assert_eq!(caps.incomplete, None);
        assert_eq!(caps.opcodes.len(), 8);
        assert_eq!(caps.rw_flags.len(), 9);
    }
}
