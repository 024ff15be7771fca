//! `libaio.so.1` in Rust: the libaio 0.3.113 C API over Linux native AIO.
//!
//! Programs built against libaio (fio, QEMU, MySQL, test suites) load this
//! library unchanged, through `LD_LIBRARY_PATH` or `LD_PRELOAD`. It exports
//! the same functions with the same symbol versions (see `libaio.map` and
//! [`exports`]) and keeps libaio's calling convention: a negative errno is
//! returned and the caller's `errno` is left as it was.
//!
//! What it does better than the original:
//!
//! - `io_getevents`/`io_pgetevents` copy completions straight out of the
//!   mapped `aio_ring` whenever some are there (`tail` loaded with acquire,
//!   `head` stored with release) and enter the kernel only to wait. Several
//!   threads may reap the same context: a per-context lock orders the
//!   user-space readers, and no thread reads the ring while another one is
//!   inside the kernel's `io_getevents` for that context (see [`context`]).
//! - When the kernel refuses AIO (`ENOSYS`, or `EPERM` from a seccomp
//!   filter), contexts are served by the `aio-kernel` engine instead (see
//!   [`driver`]); `AIO_LIBAIO_DRIVER=kernel|engine|auto` chooses.
//! - `AIO_LIBAIO_RING_REAP=0` turns ring reaping off (for valgrind, which
//!   does not see the kernel write the ring).
//! - `AIO_LIBAIO_LOG=stderr|<path>` makes the library say that it was
//!   loaded, which driver serves each context, and at `io_destroy` how many
//!   completions came from the ring versus from system calls.
//!
//! The C declarations are in `include/libaio.h` of this crate.

mod api;
mod context;
mod driver;
mod engine;
mod errno;
mod exports;
mod log;
mod reaping;

pub use api::{IoCallback, IoContext};
