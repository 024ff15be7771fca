//! Linux native AIO on the running kernel.
//!
//! - [`io_setup`], [`io_destroy`], [`io_submit`], [`io_cancel`],
//!   [`io_getevents`], [`io_pgetevents`]: each system call once, returning
//!   `Result<_, Errno>`, with no retry policy inside (`EINTR` reaches the
//!   caller). The `*_raw` forms pass arbitrary pointers and counts through,
//!   for callers (and tests) that need the kernel's own validation. Every
//!   call that takes a context id is `unsafe`: the kernel validates the id,
//!   but a live one may be another component's, whose ring a
//!   [`RingView`] reads (see its `# Safety` sections).
//! - [`RingView`]: reaps completions from the mapped `aio_ring` without a
//!   system call, falling back to `io_getevents` to wait.
//! - [`probe()`]: what this kernel and this process can do.
//!
//! Types and constants come from [`aio_abi`], re-exported as [`abi`].

pub use aio_abi as abi;

pub mod probe;
mod ring;
pub mod seccomp;
mod syscalls;

pub use probe::{Capabilities, probe};
pub use ring::RingView;
pub use syscalls::*;
