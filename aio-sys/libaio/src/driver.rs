//! Who serves a context: the running kernel or the `aio-kernel` engine.
//!
//! `AIO_LIBAIO_DRIVER` is read once per process:
//!
//! - `kernel`: the AIO system calls only; a refusal is returned to the caller.
//! - `engine`: every context is created by the engine.
//! - `auto` (the default, also for an unknown value): `io_setup` asks the
//!   kernel first; when it answers `ENOSYS` (no `CONFIG_AIO`) or `EPERM` (a
//!   seccomp filter), that context and every later one come from the engine.
//!   Other errors (`EAGAIN` for `aio-max-nr`, `EINVAL`, `EFAULT`) are the
//!   caller's and are returned as they are.
//!
//! The other calls follow the context: [`crate::context`] remembers which
//! driver created it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use aio_abi::Errno;

/// The value of `AIO_LIBAIO_DRIVER`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Kernel,
    Engine,
    Auto,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Kernel => "kernel",
            Mode::Engine => "engine",
            Mode::Auto => "auto",
        }
    }
}

/// The driver mode of this process.
pub(crate) fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let value = std::env::var("AIO_LIBAIO_DRIVER").unwrap_or_default();
        match value.trim().to_ascii_lowercase().as_str() {
            "kernel" => Mode::Kernel,
            "engine" => Mode::Engine,
            "auto" | "" => Mode::Auto,
            other => {
                crate::log::report!(
                    "AIO_LIBAIO_DRIVER={other:?} is not kernel, engine or auto: using auto"
                );
                Mode::Auto
            }
        }
    })
}

/// Which implementation serves one context.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Backend {
    Kernel,
    Engine,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Engine => "engine",
        }
    }
}

/// Set once the kernel has refused `io_setup` in `auto` mode: later contexts
/// go to the engine without asking again (a seccomp filter or a kernel
/// without AIO does not change its mind).
static KERNEL_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether an `io_setup` error means "this kernel will not do AIO for us".
pub(crate) fn is_refusal(e: Errno) -> bool {
    e == Errno::ENOSYS || e == Errno::EPERM
}

/// The backend `io_setup` should try first.
pub(crate) fn first_choice() -> Backend {
    match mode() {
        Mode::Kernel => Backend::Kernel,
        Mode::Engine => Backend::Engine,
        Mode::Auto if KERNEL_REFUSED.load(Ordering::Relaxed) => Backend::Engine,
        Mode::Auto => Backend::Kernel,
    }
}

/// Who answers for a context this library does not know (garbage, 0, a
/// destroyed one, one made by a direct system call): the kernel, unless this
/// process uses the engine only (`engine` mode, or `auto` after a refusal),
/// in which case the engine rejects it as the kernel would (`EINVAL`)
/// rather than the seccomp filter answering `EPERM`.
pub(crate) fn for_unknown_context() -> Backend {
    first_choice()
}

/// After the kernel refused with `e`: the backend to try next, if any.
pub(crate) fn fallback_after(e: Errno) -> Option<Backend> {
    if mode() == Mode::Auto && is_refusal(e) {
        if !KERNEL_REFUSED.swap(true, Ordering::Relaxed) {
            crate::log::report!(
                "the kernel refused io_setup ({e:?}): serving contexts from the engine"
            );
        }
        Some(Backend::Engine)
    } else {
        None
    }
}
