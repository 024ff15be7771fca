use core::ptr;
use std::os::fd::RawFd;
use std::time::Duration;

use aio_abi::syscall::NATIVE;
use aio_abi::{AioContext, AioSigset, Errno, IoEvent, Iocb};

/// Converts a raw `syscall(2)` return into a result, reading `errno` on -1.
fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret == -1 {
        Err(Errno(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(ret)
    }
}

/// `struct timespec` for a relative timeout.
pub fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// `io_setup(nr_events, &ctx)`: creates a context able to hold `nr_events`
/// requests in flight and returns it (the address of its ring).
///
/// Errors: `EINVAL` for 0 or a count too large, `EAGAIN` when `aio-max-nr`
/// would be exceeded, `ENOSYS`/`EPERM` when AIO is absent or filtered.
pub fn io_setup(nr_events: u32) -> Result<AioContext, Errno> {
    let mut ctx: AioContext = 0;
    // SAFETY: `ctx` is a valid, writable, zeroed aio_context_t.
    unsafe { io_setup_raw(nr_events, &mut ctx) }?;
    Ok(ctx)
}

/// `io_setup` with a caller-supplied `ctxp`.
///
/// # Safety
/// The kernel reads `*ctxp` (it must be 0) and writes the context id into
/// it. `ctxp` must be valid for a read and a write of an [`AioContext`],
/// with no other access to it during the call, or be an address the kernel
/// rejects with `EFAULT` (unmapped).
pub unsafe fn io_setup_raw(nr_events: u32, ctxp: *mut AioContext) -> Result<(), Errno> {
    // SAFETY: the syscall only touches `*ctxp`, which the caller vouches for.
    check(unsafe { libc::syscall(NATIVE.io_setup, nr_events as libc::c_ulong, ctxp) })?;
    Ok(())
}

/// `io_destroy(ctx)`: cancels what can be cancelled, waits for every request
/// in flight, and unmaps the ring.
///
/// Only `Ok` means the wait happened. An error (`EINVAL` for an id that is
/// not a live context of this process, `EPERM`/`ENOSYS` from a seccomp
/// filter) waited for nothing: requests of `ctx` may still be in flight, and
/// the memory they name must stay valid (or be leaked).
///
/// # Safety
/// The ring mapping at `ctx` disappears and its address may be reused by
/// any later mapping: from the moment this call starts, no
/// [`RingView`](crate::RingView) of `ctx` may read its ring, in any thread.
/// The kernel validates `ctx` itself (`EINVAL`).
pub unsafe fn io_destroy(ctx: AioContext) -> Result<(), Errno> {
    // SAFETY: the kernel validates `ctx`; the caller guarantees no view of
    // the ring is used from now on.
    check(unsafe { libc::syscall(NATIVE.io_destroy, ctx) })?;
    Ok(())
}

/// `io_submit(ctx, iocbs.len(), iocbs)`: queues requests and returns how
/// many were accepted. Stops at the first invalid one; if none was accepted,
/// returns its error. `EAGAIN` means the ring is full: reap, then resubmit.
///
/// The events of accepted requests go to whoever reaps `ctx`.
///
/// # Safety
/// Every pointer must point to a valid, writable [`Iocb`] (the kernel writes
/// `aio_key`). For each accepted request, the memory it names (buffers, and
/// the buffers an iovec array points to) must stay valid and, for reads,
/// not otherwise accessed, until its completion event has been reaped or
/// [`io_destroy`] of `ctx` has returned `Ok`: the kernel writes into it
/// asynchronously and file I/O cannot be cancelled. The iocbs and the
/// iovec arrays may be freed once this returns: the kernel has copied them,
/// and keeps an iocb's address only as the request's identity (in its
/// event's `obj`, and for [`io_cancel`], which reads the iocb again). The
/// kernel validates `ctx` before it reads any iocb (`EINVAL`).
pub unsafe fn io_submit(ctx: AioContext, iocbs: &[*mut Iocb]) -> Result<usize, Errno> {
    // SAFETY: forwarded from the caller's contract.
    let n = unsafe { io_submit_raw(ctx, iocbs.len() as libc::c_long, iocbs.as_ptr().cast_mut()) }?;
    Ok(n as usize)
}

/// `io_submit` with an arbitrary count and array pointer.
///
/// # Safety
/// `iocbpp` must be readable for `nr` pointers (when `nr > 0` and `ctx` is a
/// live context), or be an address the kernel rejects with `EFAULT`; each of
/// them as [`io_submit`] requires. The kernel validates `ctx` and `nr`.
pub unsafe fn io_submit_raw(
    ctx: AioContext,
    nr: libc::c_long,
    iocbpp: *mut *mut Iocb,
) -> Result<libc::c_long, Errno> {
    // SAFETY: forwarded from the caller's contract.
    check(unsafe { libc::syscall(NATIVE.io_submit, ctx, nr, iocbpp) })
}

/// `io_cancel(ctx, iocb, &event)`: asks the kernel to cancel a request.
///
/// Linux returns `EINPROGRESS` when it started the cancellation (the event
/// still arrives through the ring, with `res == 0` for poll requests), so
/// `Err(Errno::EINPROGRESS)` is the normal success. Only waiting poll
/// requests are cancellable; file I/O gives `EINVAL`.
///
/// # Safety
/// The kernel reads `iocb->aio_key`; `iocb` must be valid for a read of an
/// [`Iocb`] or be an address the kernel rejects with `EFAULT`. It writes
/// nothing the caller passes (the result goes through the ring).
pub unsafe fn io_cancel(ctx: AioContext, iocb: *mut Iocb) -> Result<(), Errno> {
    let mut unused = IoEvent::default();
    // SAFETY: `unused` is writable (kernels before 3.12 wrote it); `iocb`
    // per the caller's contract.
    check(unsafe { libc::syscall(NATIVE.io_cancel, ctx, iocb, &mut unused) })?;
    Ok(())
}

/// `io_getevents(ctx, min_nr, events.len(), events, timeout)`: waits until at
/// least `min_nr` events are available (or the timeout expires, or a signal
/// arrives: `EINTR`) and copies up to `events.len()` of them.
///
/// `min_nr == 0` never blocks; `Some(Duration::ZERO)` polls once; `None`
/// waits without limit. The kernel validates `ctx` (`EINVAL` for anything
/// but a live context of this process) and writes only into `events`.
///
/// # Safety
/// No [`RingView`](crate::RingView) of `ctx` may be reaping
/// ([`try_reap`](crate::RingView::try_reap),
/// [`get_events`](crate::RingView::get_events)) while this call runs, in
/// any thread: the view copies events out of the ring without the kernel's
/// lock, and the slots this call frees are refilled under it. The events
/// taken here are the caller's: whoever else reaps `ctx` never sees them.
pub unsafe fn io_getevents(
    ctx: AioContext,
    min_nr: usize,
    events: &mut [IoEvent],
    timeout: Option<Duration>,
) -> Result<usize, Errno> {
    let ts = timeout.map(timespec);
    let tsp = ts.as_ref().map_or(ptr::null(), |t| t as *const _);
    // SAFETY: `events` is a writable slice of its stated length; `tsp` is
    // null or points at a live timespec; no view reaps `ctx` (contract).
    let n = unsafe {
        io_getevents_raw(
            ctx,
            min_nr as libc::c_long,
            events.len() as libc::c_long,
            events.as_mut_ptr(),
            tsp,
        )
    }?;
    Ok(n as usize)
}

/// `io_getevents` with arbitrary arguments.
///
/// # Safety
/// `events` must be writable for `nr` events, with no other access during
/// the call, and `timeout` readable, or be pointers the kernel rejects with
/// `EFAULT`; and as [`io_getevents`], no [`RingView`](crate::RingView) of
/// `ctx` may be reaping while it runs.
pub unsafe fn io_getevents_raw(
    ctx: AioContext,
    min_nr: libc::c_long,
    nr: libc::c_long,
    events: *mut IoEvent,
    timeout: *const libc::timespec,
) -> Result<libc::c_long, Errno> {
    // SAFETY: forwarded from the caller's contract.
    check(unsafe { libc::syscall(NATIVE.io_getevents, ctx, min_nr, nr, events, timeout) })
}

/// `io_pgetevents`: [`io_getevents`] with `sigmask` installed for the
/// duration of the wait (`None` leaves the mask alone). Returns `EINTR` when
/// a signal handler ran before any event arrived.
///
/// # Safety
/// As [`io_getevents`]: no [`RingView`](crate::RingView) of `ctx` may be
/// reaping while this call runs.
pub unsafe fn io_pgetevents(
    ctx: AioContext,
    min_nr: usize,
    events: &mut [IoEvent],
    timeout: Option<Duration>,
    sigmask: Option<&libc::sigset_t>,
) -> Result<usize, Errno> {
    let ts = timeout.map(timespec);
    let tsp = ts.as_ref().map_or(ptr::null(), |t| t as *const _);
    let sig = AioSigset {
        sigmask: sigmask.map_or(0, |s| s as *const _ as u64),
        // The kernel's sigset is 64 bits, not glibc's 1024-bit sigset_t.
        sigsetsize: KERNEL_SIGSET_SIZE,
    };
    // SAFETY: all pointers reference live locals or the caller's slice and
    // sigset, valid for the call; no view reaps `ctx` (contract).
    let n = unsafe {
        io_pgetevents_raw(
            ctx,
            min_nr as libc::c_long,
            events.len() as libc::c_long,
            events.as_mut_ptr(),
            tsp,
            &sig,
        )
    }?;
    Ok(n as usize)
}

/// The size of the kernel's `sigset_t` (`_NSIG / 8`), which `io_pgetevents`
/// requires in [`AioSigset::sigsetsize`].
pub const KERNEL_SIGSET_SIZE: u64 = 8;

/// `io_pgetevents` with arbitrary arguments.
///
/// # Safety
/// As [`io_getevents_raw`]; `sig` must be readable or rejected with `EFAULT`,
/// and the sigmask it names readable for `sigsetsize` bytes or rejected
/// likewise.
pub unsafe fn io_pgetevents_raw(
    ctx: AioContext,
    min_nr: libc::c_long,
    nr: libc::c_long,
    events: *mut IoEvent,
    timeout: *const libc::timespec,
    sig: *const AioSigset,
) -> Result<libc::c_long, Errno> {
    // SAFETY: forwarded from the caller's contract.
    check(unsafe { libc::syscall(NATIVE.io_pgetevents, ctx, min_nr, nr, events, timeout, sig) })
}

/// Whether all of `len` bytes at `off` of `fd` are in the page cache, by
/// `cachestat(2)` (Linux 6.5), which starts no readahead, unlike a read
/// with `RWF_NOWAIT` that misses; `None` where the kernel lacks it or a
/// filter forbids it.
///
/// Any `fd`, `off` and `len` are accepted: a range past the largest offset
/// ends there.
pub fn page_cache_holds(fd: RawFd, off: i64, len: u64) -> Option<bool> {
    use aio_abi::syscall::{CACHESTAT, Cachestat, CachestatRange};
    let mut range = CachestatRange::bytes(off, len);
    // `off` is at most i64::MAX, so the end is representable.
    range.len = range.len.min(u64::MAX - range.off);
    let mut stat = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both locals.
    if unsafe { libc::syscall(CACHESTAT, fd, &range, &mut stat, 0) } != 0 {
        return None;
    }
    // SAFETY: plain query.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(stat.nr_cache >= range.pages(page))
}
