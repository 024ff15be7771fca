//! The kernel half of Linux native AIO, in Rust.
//!
//! The core (`no_std` + `alloc`) implements `io_setup`, `io_submit`,
//! `io_getevents`, `io_pgetevents`, `io_cancel` and `io_destroy` with the
//! semantics of Linux's `fs/aio.c`: validation order and errno values, the
//! `aio_ring` layout with `ring_nr` computed as Linux computes it, slot
//! accounting in which a slot returns only when its event has been consumed
//! (through `io_getevents` or by a user-space reaper storing `head`),
//! `aio-nr`/`aio-max-nr`, `min_nr`/timeout semantics, and one-shot `POLL`
//! with cancellation. It reaches the outside world only through [`Host`].
//!
//! Reads and writes follow the seed patch: `PREAD`/`PWRITE` are the
//! one-segment case of `PREADV`/`PWRITEV`, and a transfer the file completes
//! only partly ([`IoStatus::Partial`], or [`IoStatus::WouldBlock`] followed by
//! a readiness wake-up) resumes at the right file offset *and* the right
//! byte of the right segment: both positions are kept in one state and moved
//! together.
//!
//! With the `std` feature, [`engine`] is a host for ordinary processes: it
//! runs requests on worker threads with `preadv2`/`pwritev2`, `fsync` and
//! `poll`, keeps the ring in an `mmap`ed `aio_ring` that user-space reapers
//! can read, and never blocks `io_submit` on I/O.
//!
//! # Where this differs from Linux
//!
//! Deliberate differences of the core:
//!
//! - **Per-CPU slot caches** are emulated exactly (`req_batch`, the global
//!   count, refill from `head`), with the CPU the host reports; there is no
//!   preemption between reading the CPU and using its cache, which Linux
//!   avoids with disabled interrupts.
//! - **`aio-nr` is per [`Kernel`]**, not system-wide: one `Kernel` is one
//!   address space, and `aio-max-nr` comes from the host.
//! - **Cancelled `POLL`** requests post their `res == 0` event inside
//!   `io_cancel`/`io_destroy`, where Linux posts it from a work item shortly
//!   after.
//! - **Waking** is a broadcast ([`Host::wake_all`]); every sleeper
//!   re-checks its `min_nr`, which gives the 6.8+ behaviour.
//! - **`mremap` of the ring** does not re-key the context (the host owns the
//!   mapping; the key is the address it returned).
//! - **Retry on not-ready** ([`IoStatus::WouldBlock`]): Linux's current
//!   `read_iter` either blocks inside `io_submit` or completes; the seed's
//!   retry model is kept so that hosts can wait for readiness without
//!   blocking. Bytes moved before an error make the request succeed short.
//! - **Explicit ring address** ([`Kernel::io_setup_at`]) is an extension;
//!   current Linux rejects a nonzero `*ctxp` with `EINVAL`, as
//!   [`Kernel::io_setup`] does.
//!
//! Differences of the engine (all found or checked by `tests/differential.rs`):
//!
//! - Buffered I/O, pipes and sockets complete **asynchronously**: their
//!   events are usually not in the ring when `io_submit` returns, where
//!   Linux would have blocked and posted them first (spec §3.5). Events may
//!   therefore arrive in a different order; their contents agree.
//! - **Signals** never interrupt the engine's waits: `io_getevents` never
//!   returns `EINTR`, and `io_pgetevents` checks and reads the sigmask but
//!   does not install it.
//! - **File capabilities** are inferred: `FMODE_NOWAIT` for regular files is
//!   probed with a one-byte `RWF_NOWAIT` read when the fd is readable and
//!   assumed otherwise; `RWF_DONTCACHE` support is probed the same way and
//!   assumed absent for write-only fds; `RWF_ATOMIC` is never supported;
//!   append-only inodes are not detected; character devices are assumed to
//!   have a `poll` method (Linux's `EINVAL` for an unpollable file whose
//!   default mask misses the request becomes a wait).
//! - **Privilege** for the real-time I/O priority class is read from the
//!   effective capability set.
//! - **User memory** is accessed with `process_vm_readv`/`process_vm_writev`
//!   on the own process: a seccomp filter that forbids them makes every
//!   request fail with `EFAULT`.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(feature = "std", feature = "sim", test))]
extern crate std;

mod context;
mod getevents;
mod host;
mod poll;
mod ring;
mod submit;
mod sync;

#[cfg(feature = "std")]
pub mod engine;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;

pub use context::Kernel;
pub use host::{
    Completion, EventFd, File, FileMode, Host, IoStatus, PollWaiter, RingMemory, RwOp, WaitOutcome,
};
pub use poll::DEFAULT_POLLMASK;
