use core::fmt;

/// An errno value as the AIO system calls return it (positive; the kernel
/// returns its negation).
///
/// The values are those of asm-generic, which x86-64, arm64 and riscv64 share.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $val:expr, $text:expr;)*) => {
        impl Errno {
            $(
                #[doc = $text]
                pub const $name: Errno = Errno($val);
            )*

            /// The symbolic name (`"EINVAL"`), if this is one of the values
            /// the AIO calls are known to return.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// A short description, as `strerror` would give it.
            pub const fn description(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted";
    ENOENT = 2, "No such file or directory";
    EINTR = 4, "Interrupted system call";
    EIO = 5, "Input/output error";
    EBADF = 9, "Bad file descriptor";
    EAGAIN = 11, "Resource temporarily unavailable";
    ENOMEM = 12, "Cannot allocate memory";
    EACCES = 13, "Permission denied";
    EFAULT = 14, "Bad address";
    EBUSY = 16, "Device or resource busy";
    EEXIST = 17, "File exists";
    EISDIR = 21, "Is a directory";
    EINVAL = 22, "Invalid argument";
    EFBIG = 27, "File too large";
    ENOSPC = 28, "No space left on device";
    ESPIPE = 29, "Illegal seek";
    EPIPE = 32, "Broken pipe";
    ENOSYS = 38, "Function not implemented";
    EOPNOTSUPP = 95, "Operation not supported";
    ECANCELED = 125, "Operation canceled";
    EINPROGRESS = 115, "Operation now in progress";
    ERESTARTSYS = 512, "Kernel-internal: restart the system call (becomes EINTR)";
    ERESTARTNOINTR = 513, "Kernel-internal: restart without EINTR";
    ERESTARTNOHAND = 514, "Kernel-internal: restart if no handler ran";
    ERESTART_RESTARTBLOCK = 516, "Kernel-internal: restart through restart_block";
}

impl Errno {
    /// Splits a raw kernel return value: negative values in the errno range
    /// (-4095..=-1) are errors, everything else is a result.
    pub const fn from_ret(ret: i64) -> Result<i64, Errno> {
        if ret < 0 && ret >= -4095 {
            Err(Errno(-ret as i32))
        } else {
            Ok(ret)
        }
    }

    /// The value as it appears in `io_event.res` for a failed request.
    pub const fn as_res(self) -> i64 {
        -(self.0 as i64)
    }

    /// Whether this is one of the kernel-internal `ERESTART*` codes that
    /// must never reach user space.
    pub const fn is_restart(self) -> bool {
        matches!(self.0, 512..=516)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.description()) {
            (Some(name), Some(text)) => write!(f, "{name}: {text}"),
            _ => write!(f, "errno {}", self.0),
        }
    }
}

impl core::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_ret_splits_errors() {
        assert_eq!(Errno::from_ret(-22), Err(Errno::EINVAL));
        assert_eq!(Errno::from_ret(4096), Ok(4096));
        assert_eq!(Errno::from_ret(-4096), Ok(-4096));
        assert_eq!(Errno::EAGAIN.as_res(), -11);
        assert!(Errno::ERESTARTSYS.is_restart());
        assert!(!Errno::EINTR.is_restart());
    }

    #[test]
    fn names() {
        assert_eq!(Errno::EINPROGRESS.name(), Some("EINPROGRESS"));
        assert_eq!(Errno(9999).name(), None);
    }
}
