//! What AIO can do on this kernel, for this process.
//!
//! Every answer comes from asking the kernel: a context is set up, requests
//! with each opcode and each `RWF_*` flag are submitted against a scratch
//! file, and the errno (synchronous, or in the event) decides.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use aio_abi::{AioContext, Errno, IoEvent, IoVec, Iocb, Opcode, PollEvents, RwFlags};

use crate::{io_destroy, io_getevents, io_pgetevents, io_setup, io_submit};

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
    /// Whether `io_pgetevents` can be called.
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

/// Reads a sysctl under `/proc/sys/fs`.
pub fn read_fs_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

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

/// How long the probe waits for one request's event.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A context destroyed on drop, for the probe's own requests.
struct ProbeContext(AioContext, Duration);

impl ProbeContext {
    /// Submits one request and waits for its event; the synchronous error or
    /// the event's `res`.
    fn run(&self, mut iocb: Iocb) -> Result<i64, Errno> {
        let ptrs = [&mut iocb as *mut Iocb];
        // SAFETY: the iocb is live for the call; its buffers (if any) are
        // kept alive by the caller until this function has reaped the event.
        unsafe { io_submit(self.0, &ptrs) }?;
        let mut ev = [IoEvent::default()];
        loop {
            match io_getevents(self.0, 1, &mut ev, Some(self.1)) {
                Ok(1) => return Ok(ev[0].res),
                Ok(_) => return Err(Errno::EIO),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn support(&self, iocb: Iocb) -> Support {
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

impl Drop for ProbeContext {
    fn drop(&mut self) {
        // SAFETY: no ring view of this context exists; its requests were reaped.
        let _ = unsafe { io_destroy(self.0) };
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
    let ctx = match io_setup(8) {
        Ok(ctx) => ProbeContext(ctx, PROBE_TIMEOUT),
        Err(e) => {
            let failure = SetupFailure::from_errno(e);
            caps.setup = Err(failure);
            let no = Support::No(failure.errno());
            caps.pgetevents = no;
            return caps;
        }
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
    // Lives until the end of the function, after every probe request was reaped.
    let mut byte = [0u8; 1];
    let buf = byte.as_mut_ptr() as u64;
    let iov = IoVec {
        iov_base: buf,
        iov_len: 1,
    };
    let iov_addr = &iov as *const IoVec as u64;

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
    for (op, iocb) in candidates {
        caps.opcodes.push((op, ctx.support(iocb)));
    }

    for bit in 0..9 {
        let flag = RwFlags(1 << bit);
        // RWF_ATOMIC applies to writes only; every other flag is probed on a
        // read so that the scratch file is left as it is.
        let iocb = if flag == RwFlags::ATOMIC {
            Iocb::pwritev2(fd, iov_addr, 1, 0, flag)
        } else {
            Iocb::preadv2(fd, iov_addr, 1, 0, flag)
        };
        caps.rw_flags.push((flag, ctx.support(iocb)));
    }

    let mut ev = [IoEvent::default()];
    caps.pgetevents = match io_pgetevents(ctx.0, 0, &mut ev, Some(Duration::ZERO), None) {
        Ok(_) => Support::Yes,
        Err(e) => Support::No(e),
    };
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
