//! `std::io::Error`s that keep the errno and, where the cause is known, say
//! what to do about it.

use std::fmt;
use std::io;

use aio_abi::{Errno, Iocb, Opcode, UIO_MAXIOV};
use aio_sys::probe::{SetupFailure, read_fs_sysctl, seccomp_mode};

use crate::align;

/// The payload of the errors this crate builds with an explanation: the
/// errno the kernel returned plus what it means here.
///
/// Plain errors (such as `EBADF` for a closed descriptor) are built with
/// [`io::Error::from_raw_os_error`] instead; [`errno`] reads the errno back
/// from either kind.
#[derive(Clone, Debug)]
pub struct Error {
    errno: Errno,
    message: String,
}

impl Error {
    /// The errno behind the error.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// The explanation, without the errno.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.errno)
    }
}

impl std::error::Error for Error {}

/// The errno carried by an error from this crate, whether plain or
/// explained.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
            .map(|inner| inner.errno.0)
    })
}

/// An error with an explanation; its kind is the errno's.
pub(crate) fn explained(errno: Errno, message: String) -> io::Error {
    let kind = io::Error::from_raw_os_error(errno.0).kind();
    io::Error::new(kind, Error { errno, message })
}

fn op_name(iocb: &Iocb) -> &'static str {
    iocb.aio_lio_opcode.name().unwrap_or("request")
}

/// The error for a failed `io_setup(depth)`.
pub(crate) fn setup_error(depth: u32, e: Errno) -> io::Error {
    let failure = SetupFailure::from_errno(e);
    let message = match failure {
        SetupFailure::LimitReached => {
            let max = read_fs_sysctl("aio-max-nr");
            let nr = read_fs_sysctl("aio-nr");
            let show = |v: Option<u64>| v.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
            if max.is_some_and(|max| u64::from(depth) > max) {
                format!(
                    "io_setup({depth}): the queue depth exceeds aio-max-nr ({}): use a smaller \
                     queue depth or raise fs.aio-max-nr with `sysctl -w fs.aio-max-nr=1048576`",
                    show(max)
                )
            } else {
                format!(
                    "io_setup({depth}): aio-max-nr ({}) reached (aio-nr {}): {}",
                    show(max),
                    show(nr),
                    failure.advice()
                )
            }
        }
        SetupFailure::Forbidden | SetupFailure::NotImplemented => {
            let seccomp = match seccomp_mode() {
                Some(2) => " (this process runs under a seccomp filter)",
                _ => "",
            };
            format!("io_setup({depth}): {}{seccomp}", failure.advice())
        }
        SetupFailure::Other(Errno::EINVAL) => {
            format!("io_setup({depth}): queue depth out of range (1..=4194304)")
        }
        SetupFailure::Other(_) => format!("io_setup({depth}): {}", failure.advice()),
    };
    explained(e, message)
}

/// Why [`Driver::Auto`](crate::Driver::Auto) runs every request on the
/// engine: its `io_setup` failed with `errno` (`ENOSYS` or `EPERM`). The
/// message names the errno and, where this process can tell, who refused:
/// a seccomp filter, or a kernel without AIO (no `fs.aio-max-nr`).
pub(crate) fn kernel_unavailable(errno: Errno) -> Error {
    let filtered = seccomp_mode() == Some(2);
    let kernel_has_aio = read_fs_sysctl("aio-max-nr").is_some();
    Error {
        errno,
        message: engine_fallback_message(errno, filtered, kernel_has_aio),
    }
}

/// The message of [`kernel_unavailable`], from what this process knows:
/// whether it runs under a seccomp filter, and whether the kernel has AIO.
fn engine_fallback_message(errno: Errno, filtered: bool, kernel_has_aio: bool) -> String {
    let cause = if errno == Errno::ENOSYS && !kernel_has_aio {
        "io_setup failed with ENOSYS: this kernel has no native AIO (CONFIG_AIO=n)".to_owned()
    } else if filtered {
        format!("io_setup refused with {errno:?} by a seccomp filter")
    } else {
        format!("io_setup refused with {errno:?}")
    };
    format!("{cause}: every request runs on the userspace engine")
}

fn is_directory(fd: i32) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat fills the buffer it is given; a bad fd only fails.
    let ok = unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0;
    // SAFETY: zeroed before, filled on success.
    ok && unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The error for a request that `io_submit` refused (`synchronous`) or
/// that completed with `-errno` in its event.
pub(crate) fn request_error(
    errno: Errno,
    iocb: &Iocb,
    segments: usize,
    synchronous: bool,
) -> io::Error {
    let op = iocb.aio_lio_opcode;
    let name = op_name(iocb);
    let rw = op.is_read() || op.is_write();
    let message = match errno {
        Errno::EPERM | Errno::ENOSYS if synchronous => format!(
            "io_submit({name}) refused: a seccomp filter may block the AIO system calls; \
             allow io_submit in the profile or use the userspace engine"
        ),
        Errno::EOPNOTSUPP if !iocb.aio_rw_flags.is_empty() => format!(
            "{name}: this file or kernel does not support the RWF flags {:?}",
            iocb.aio_rw_flags
        ),
        Errno::EOPNOTSUPP => format!("{name}: the file does not support this operation"),
        Errno::EINVAL if op == Opcode::FSYNC || op == Opcode::FDSYNC => {
            format!("{name}: the file does not support fsync through AIO")
        }
        Errno::EINVAL if rw && segments as u64 > UIO_MAXIOV => format!(
            "{name}: {segments} segments exceed the kernel's limit of {UIO_MAXIOV} (UIO_MAXIOV)"
        ),
        Errno::EINVAL if rw && is_directory(iocb.fd()) => {
            format!("{name}: the file is a directory, which has no asynchronous read or write")
        }
        Errno::EINVAL if rw => match align::explain_einval(iocb.fd()) {
            Some(text) => format!("{name}: {text}"),
            None => return io::Error::from_raw_os_error(errno.0),
        },
        _ => return io::Error::from_raw_os_error(errno.0),
    };
    explained(errno, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_reads_both_kinds() {
        let plain = io::Error::from_raw_os_error(9);
        assert_eq!(errno(&plain), Some(9));
        let rich = explained(Errno::EAGAIN, "limit".into());
        assert_eq!(errno(&rich), Some(11));
        assert_eq!(rich.kind(), io::ErrorKind::WouldBlock);
        assert!(rich.to_string().contains("limit (EAGAIN"));
    }

    #[test]
    fn setup_limit_message_names_the_sysctl() {
        let e = setup_error(100_000, Errno::EAGAIN);
        assert!(e.to_string().contains("aio-max-nr"), "{e}");
        // A depth within the limit failing with EAGAIN: aio-nr is exhausted.
        let e = setup_error(128, Errno::EAGAIN).to_string();
        assert!(e.starts_with("io_setup(128): aio-max-nr ("), "{e}");
        assert!(e.contains(") reached (aio-nr "), "{e}");
        assert!(e.contains("sysctl -w fs.aio-max-nr=1048576"), "{e}");
    }

    #[test]
    fn the_engine_fallback_names_the_errno_and_who_refused() {
        assert_eq!(kernel_unavailable(Errno::EPERM).errno(), Errno::EPERM);
        let tail = ": every request runs on the userspace engine";
        for (errno, filtered, has_aio, cause) in [
            (
                Errno::EPERM,
                true,
                true,
                "io_setup refused with EPERM by a seccomp filter",
            ),
            (
                Errno::ENOSYS,
                true,
                true,
                "io_setup refused with ENOSYS by a seccomp filter",
            ),
            (Errno::EPERM, false, true, "io_setup refused with EPERM"),
            (
                Errno::ENOSYS,
                true,
                false,
                "io_setup failed with ENOSYS: this kernel has no native AIO (CONFIG_AIO=n)",
            ),
        ] {
            assert_eq!(
                engine_fallback_message(errno, filtered, has_aio),
                format!("{cause}{tail}")
            );
        }
    }

    #[test]
    fn seccomp_and_missing_aio_are_explained() {
        let e = setup_error(8, Errno::EPERM).to_string();
        assert!(e.contains("seccomp"), "{e}");
        assert_eq!(errno(&setup_error(8, Errno::EPERM)), Some(1));
        let e = setup_error(8, Errno::ENOSYS).to_string();
        assert!(e.contains("CONFIG_AIO"), "{e}");
        let iocb = Iocb::pread(3, 0, 0, 0);
        let e = request_error(Errno::EPERM, &iocb, 1, true).to_string();
        assert!(e.contains("seccomp"), "{e}");
    }
}
