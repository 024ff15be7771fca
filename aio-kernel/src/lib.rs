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
//!   count, refill from `head`), with the CPU the host reports; a thread
//!   moved to another CPU right after asking may use the cache of the CPU
//!   it left, which Linux prevents by disabling preemption. The point where
//!   a ring runs out of slots therefore matches Linux exactly only for a
//!   thread pinned to one CPU (as the differential test does).
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
//!   `io_destroy` ends a transfer parked on readiness (result: the bytes
//!   moved so far, or `-ECANCELED`) instead of waiting for readiness that
//!   may never come.
//! - **Cancelling reads and writes**: `io_cancel` of a transfer parked on
//!   readiness that has not moved a byte yet (a read of an empty pipe or
//!   socket, a write to a full one) cancels it: `Err(EINPROGRESS)`, and
//!   its event has `res == -ECANCELED`. Once a byte has moved, or while
//!   the transfer runs, it is not cancelled (`EINVAL`) and completes
//!   normally, so a cancel never loses data. Linux cancels only `POLL`.
//! - **Explicit ring address** ([`Kernel::io_setup_at`]) is an extension;
//!   current Linux rejects a nonzero `*ctxp` with `EINVAL`, as
//!   [`Kernel::io_setup`] does.
//!
//! Differences of the engine, each checked against the running kernel by
//! `tests/differential.rs` (which compares `io_submit`'s result, every
//! event's `data`/`obj`/`res`/`res2`, the files, the buffers, pipe contents
//! and eventfd counts) or, where Linux cannot be compared, stated here:
//!
//! - Buffered I/O, pipes and sockets complete **asynchronously**: their
//!   events are usually not in the ring when `io_submit` returns, where
//!   Linux would have blocked and posted them first (spec §3.5). Events may
//!   therefore arrive in a different order; their contents agree. Two
//!   requests of one batch that touch the same bytes of a file (or append
//!   to it) may take effect in a different order than in Linux, which runs
//!   them one after the other inside `io_submit`.
//! - **Signals**: a handler that runs on a thread waiting in
//!   `io_getevents`/`io_pgetevents` ends the wait (`EINTR` with nothing
//!   gathered), as in Linux; `io_pgetevents` installs its mask with
//!   `pthread_sigmask` just before the wait, so a signal arriving between
//!   that and the sleep does not end the wait (Linux makes the two atomic).
//! - **File capabilities** are inferred from outside the kernel:
//!   `FMODE_NOWAIT` and `RWF_DONTCACHE` support are probed once per device
//!   with a one-byte request against an inaccessible page (refused, or
//!   `EFAULT` without effect), a write-only file through a read-only
//!   reopen of `/proc/self/fd/N` (if that is refused, `FMODE_NOWAIT` is
//!   assumed); `RWF_ATOMIC` is never supported; append-only inodes are
//!   not detected (`RWF_NOAPPEND` is then not `EPERM`); a character device
//!   whose `poll(2)` reports exactly the default mask is taken to have no
//!   `poll` method; of the anonymous inodes, eventfd, timerfd and signalfd
//!   are taken to have a `read_iter` and no `write_iter`, all others
//!   neither (as 6.18 has them).
//! - **POLL results** after a wait are `poll(2)`'s bits widened to the key
//!   Linux's wake-up carries for pipes and sockets; for other files they
//!   are `poll(2)`'s bits.
//! - **Accepted `RWF_*` bits** follow the running kernel's version
//!   ([`engine::rw_flags_for_kernel`]), not the filesystem.
//! - **Privilege** for the real-time I/O priority class is read from the
//!   effective capability set.
//! - **Address space limit**: buffers must end below 2^47 - 4096 on x86-64
//!   (2^48 elsewhere), as with 4-level page tables; a kernel with 5-level
//!   paging accepts more.
//! - **User memory** is accessed with `process_vm_readv`/`process_vm_writev`
//!   on the own process: a seccomp filter that forbids them makes every
//!   call fail with `EFAULT`.
//! - **fork**: as in Linux, a child gets `EINVAL` for its parent's
//!   contexts; unlike Linux, every other call on an engine its parent
//!   created (`io_setup` too) is `EINVAL` in the child, whose copy of the
//!   engine has none of its threads: a child creates an engine of its own.
//! - **Engine faults** end requests instead of losing them: a request
//!   whose worker job panics completes with `-EIO`; one that no worker
//!   thread could be started for (and none runs) with `-EAGAIN`; a pipe or
//!   socket transfer that would wait while the poll thread cannot be
//!   started fails with `-EAGAIN`, and a `POLL` then reports `POLLERR`.
//! - **io_destroy** unmaps the ring after the requests in flight finish
//!   (Linux unmaps it first); the `aio-nr` of an engine counts only its own
//!   contexts.
//!
//! Where the shared spec and the running kernel (6.18 here) disagree, the
//! kernel wins and the core follows it: a negative `io_getevents` timeout
//! sleeps forever (the hrtimer's overflow check), it does not expire; a
//! vectored request with one segment is capped to `MAX_RW_COUNT` before its
//! range is checked, with several segments each is checked at full length
//! first; a `POLL` woken later reports the wake-up's whole mask; the idle
//! I/O priority class accepts a level; sockets refuse a nonzero offset with
//! `-ESPIPE` in the event.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(feature = "std", feature = "sim", test))]
extern crate std;

mod context;
mod getevents;
mod host;
mod park;
mod poll;
mod ring;
mod submit;
mod sync;
#[cfg(any(feature = "std", loom))]
mod wake;

#[cfg(all(test, loom))]
mod loom;

#[cfg(feature = "std")]
pub mod engine;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;

pub use context::Kernel;
pub use host::{
    Completion, EventFd, File, FileMode, Host, IoStatus, PollWaiter, RingMemory, RwOp, Segments,
    WaitOutcome,
};
pub use poll::DEFAULT_POLLMASK;
