//! Contexts served by the `aio-kernel` engine: Linux AIO implemented in this
//! process (worker threads, an `mmap`ed ring with the exact `aio_ring`
//! layout), used when the kernel refuses the AIO system calls.
//!
//! The engine's `sys_*` methods take the system calls' raw arguments and
//! validate them as Linux does (user memory through
//! `process_vm_readv`/`process_vm_writev`, so a bad pointer is `EFAULT`, not
//! a crash). Its ring is read by [`crate::context`] exactly like the
//! kernel's.
//!
//! Known differences of the engine (documented in `aio-kernel`): signals do
//! not interrupt its waits (`io_pgetevents` checks the mask but does not
//! install it), and buffered I/O completes asynchronously.

use aio_abi::{AioContext, AioSigset, Errno, Iocb};
use aio_kernel::engine::Engine;

fn engine() -> &'static Engine {
    Engine::global()
}

fn count(r: Result<usize, Errno>) -> Result<i64, Errno> {
    r.map(|n| n as i64)
}

/// `io_setup(nr_events, ctxp)` in the engine.
///
/// # Safety
/// `ctxp` is the caller's `io_context_t *`: writable, or rejected by the
/// engine with `EFAULT`.
pub(crate) unsafe fn setup(nr_events: u32, ctxp: u64) -> Result<(), Errno> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { engine().sys_io_setup(nr_events, ctxp) }
}

/// `io_destroy(id)`: waits for the context's requests, unmaps its ring.
///
/// # Safety
/// As `Engine::io_destroy`: `id` is a context this library set up, and
/// nothing reads its ring or names it after this call starts.
pub(crate) unsafe fn destroy(id: AioContext) -> Result<(), Errno> {
    // SAFETY: forwarded from the caller's contract.
    unsafe { engine().io_destroy(id) }
}

/// `io_submit(id, nr, iocbpp)`.
///
/// # Safety
/// The C contract of `io_submit`: iocbs and buffers live until their events
/// are reaped.
pub(crate) unsafe fn submit(id: AioContext, nr: i64, iocbpp: u64) -> Result<i64, Errno> {
    // SAFETY: forwarded from the caller's contract.
    count(unsafe { engine().sys_io_submit(id, nr, iocbpp) })
}

/// `io_cancel(id, iocb)`: `Err(EINPROGRESS)` when cancelled.
pub(crate) fn cancel(id: AioContext, iocb: u64) -> Result<(), Errno> {
    engine().io_cancel(id, iocb as *const Iocb)
}

/// `io_getevents` in the engine.
///
/// # Safety
/// `events` has room for `nr` events or is rejected (`EFAULT`); `timeout` is
/// 0 or readable.
pub(crate) unsafe fn getevents(
    id: AioContext,
    min_nr: i64,
    nr: i64,
    events: u64,
    timeout: u64,
) -> Result<i64, Errno> {
    // SAFETY: forwarded from the caller's contract.
    count(unsafe { engine().sys_io_getevents(id, min_nr, nr, events, timeout) })
}

/// `io_pgetevents` in the engine, with libaio's sigset argument.
///
/// # Safety
/// As [`getevents`].
pub(crate) unsafe fn pgetevents(
    id: AioContext,
    min_nr: i64,
    nr: i64,
    events: u64,
    timeout: u64,
    sig: &AioSigset,
) -> Result<i64, Errno> {
    let usig = sig as *const AioSigset as u64;
    // SAFETY: forwarded from the caller's contract; `sig` lives across the
    // call.
    count(unsafe { engine().sys_io_pgetevents(id, min_nr, nr, events, timeout, usig) })
}
