//! The libaio functions, as Rust `extern "C"` functions. They are exported
//! under their C names, with libaio's symbol versions, by [`crate::exports`].
//!
//! Each one returns what libaio returns (a count, 0, or `-errno`) and leaves
//! `errno` as the caller had it.

use core::ptr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aio_abi::{AioContext, AioSigset, Errno, IoEvent, Iocb};
use libc::{c_int, c_long, c_void, sigset_t, timespec};

use crate::context::{self, Context, Found, Reaped};
use crate::driver::{self, Backend};
use crate::engine;
use crate::errno::{KeepErrno, ret};
use crate::log::report;

/// `io_context_t`: an opaque pointer, the address of the context's ring.
pub type IoContext = *mut c_void;

/// `io_callback_t`, stored by `io_set_callback` in `iocb->data` and called by
/// `io_queue_run` for each completion.
pub type IoCallback =
    unsafe extern "C" fn(ctx: IoContext, iocb: *mut Iocb, res: c_long, res2: c_long);

/// The kernel's `sigset_t` size, which libaio passes to `io_pgetevents`.
const KERNEL_SIGSET_SIZE: u64 = aio_sys::KERNEL_SIGSET_SIZE;

/// The lowest address user memory can have (`mmap_min_addr` is at least a
/// page).
const USER_MIN: u64 = 4096;
/// The top of the user address space this library reads from directly:
/// x86-64's `TASK_SIZE` with 4-level paging (higher pointers, possible with
/// 5-level paging, take the system call path, which is always correct).
#[cfg(target_arch = "x86_64")]
const USER_MAX: u64 = 0x0000_7fff_ffff_f000;
/// arm64 with 48-bit virtual addresses.
#[cfg(target_arch = "aarch64")]
const USER_MAX: u64 = 1 << 48;
/// riscv64 up to Sv48.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const USER_MAX: u64 = 1 << 47;

/// Whether `len` bytes at `p` could be user memory. Pointers that cannot be
/// (NULL, the zero page, kernel addresses, wrap-around) are passed to the
/// kernel, which answers `EFAULT` as it does for the original libaio. This
/// is not a full check: like any C library, this one trusts a pointer that
/// looks like user memory.
fn plausible(p: u64, len: u64) -> bool {
    p >= USER_MIN && p.checked_add(len).is_some_and(|end| end <= USER_MAX)
}

/// Who serves context `id`, and its state if this library reads its ring.
///
/// A context that a parent process created through this library before
/// `fork` is not the caller's: the kernel rejects its own with `EINVAL`, and
/// so do we for the engine's (the child's copy of the engine has none of
/// the parent's threads).
fn route(id: AioContext) -> Result<(Backend, Option<Arc<Context>>), Errno> {
    match context::find(id) {
        Found::Live(c) => Ok((c.backend, Some(c))),
        Found::Inherited(Backend::Kernel) => Ok((Backend::Kernel, None)),
        Found::Inherited(Backend::Engine) => Err(Errno::EINVAL),
        Found::Unknown => Ok((driver::for_unknown_context(), None)),
    }
}

/// `io_setup(maxevents, ctxp)`.
///
/// # Safety
/// `ctxp` is passed to the kernel (or the engine), which checks it.
pub unsafe extern "C" fn io_setup(maxevents: c_int, ctxp: *mut IoContext) -> c_int {
    let _errno = KeepErrno::new();
    // SAFETY: forwarded from the caller.
    ret(unsafe { setup(maxevents as u32, ctxp.cast()) }.map(|()| 0))
}

unsafe fn setup(nr_events: u32, ctxp: *mut AioContext) -> Result<(), Errno> {
    let mut backend = driver::first_choice();
    loop {
        let r = match backend {
            // SAFETY: the kernel validates `ctxp` (EFAULT) and writes the id.
            Backend::Kernel => unsafe { aio_sys::io_setup_raw(nr_events, ctxp) },
            // SAFETY: the engine validates `ctxp` the same way.
            Backend::Engine => unsafe { engine::setup(nr_events, ctxp as u64) },
        };
        match r {
            Ok(()) => break,
            Err(e) if backend == Backend::Kernel => match driver::fallback_after(e) {
                Some(next) => backend = next,
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    // SAFETY: the call succeeded, so `ctxp` was writable and now holds the
    // new context id.
    let id = unsafe { ctxp.read() };
    // SAFETY: `id` was just created by `backend` and is destroyed only
    // through `destroy`, which removes it from the table and kills it first.
    let ctx = context::insert(unsafe { Context::new(id, backend) });
    if backend == Backend::Engine {
        context::ENGINE_CONTEXTS.fetch_add(1, Ordering::Relaxed);
    }
    report!(
        "io_setup({nr_events}) = {:#x}, served by the {}",
        ctx.id,
        backend.name()
    );
    Ok(())
}

/// `io_destroy(ctx)`.
///
/// # Safety
/// None beyond the C contract: the context is validated by its driver.
pub unsafe extern "C" fn io_destroy(ctx: IoContext) -> c_int {
    let _errno = KeepErrno::new();
    ret(destroy(ctx as AioContext).map(|()| 0))
}

fn destroy(id: AioContext) -> Result<(), Errno> {
    let ctx = match context::remove(id) {
        Found::Live(ctx) => ctx,
        Found::Inherited(Backend::Engine) => return Err(Errno::EINVAL),
        found => {
            let backend = match found {
                Found::Unknown => driver::for_unknown_context(),
                _ => Backend::Kernel,
            };
            return match backend {
                // SAFETY: not a context this library reads: the kernel
                // validates it.
                Backend::Kernel => unsafe { aio_sys::io_destroy(id) },
                // The engine's contexts that this library did not set up
                // belong to another part of the process (the `aio` crate
                // shares the engine): destroying one would unmap a ring
                // its owner still reads. Linux would have no such context
                // to destroy for us either.
                Backend::Engine => Err(Errno::EINVAL),
            };
        }
    };
    ctx.kill();
    let r = match ctx.backend {
        // SAFETY: the context is out of the table and dead: no thread of
        // this library reads its ring any more.
        Backend::Kernel => unsafe { aio_sys::io_destroy(id) },
        Backend::Engine => {
            context::ENGINE_CONTEXTS.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: this library set the context up; it is out of the
            // table and dead, so no thread of this library reads its ring
            // or names it any more.
            unsafe { engine::destroy(id) }
        }
    };
    report!(
        "io_destroy({id:#x}) = {}: {} events reaped from the ring in {} calls, {} calls waited in the {}",
        match r {
            Ok(()) => "0".to_string(),
            Err(e) => format!("{e:?}"),
        },
        ctx.ring_events.load(Ordering::Relaxed),
        ctx.ring_calls.load(Ordering::Relaxed),
        ctx.wait_calls.load(Ordering::Relaxed),
        ctx.backend.name(),
    );
    r
}

/// `io_submit(ctx, nr, iocbs)`.
///
/// # Safety
/// The C contract of `io_submit`: the iocbs and the buffers they name stay
/// valid until their events are reaped.
pub unsafe extern "C" fn io_submit(ctx: IoContext, nr: c_long, iocbs: *mut *mut Iocb) -> c_int {
    let _errno = KeepErrno::new();
    let id = ctx as AioContext;
    let backend = if context::any_engine() {
        match route(id) {
            Ok((b, _)) => b,
            Err(e) => return -e.0,
        }
    } else {
        driver::for_unknown_context()
    };
    ret(match backend {
        // SAFETY: forwarded from the caller; the kernel validates everything.
        Backend::Kernel => unsafe { aio_sys::io_submit_raw(id, nr, iocbs) },
        // SAFETY: forwarded from the caller; the engine validates it too.
        Backend::Engine => unsafe { engine::submit(id, nr, iocbs as u64) },
    })
}

/// `io_cancel(ctx, iocb, evt)`. Linux neither reads nor writes `evt`
/// (since 3.12), and neither does this library.
///
/// # Safety
/// `iocb` is read by the driver, which checks it.
pub unsafe extern "C" fn io_cancel(ctx: IoContext, iocb: *mut Iocb, _evt: *mut IoEvent) -> c_int {
    let _errno = KeepErrno::new();
    // SAFETY: forwarded from the caller.
    ret(unsafe { cancel(ctx as AioContext, iocb) }.map(|()| 0))
}

unsafe fn cancel(id: AioContext, iocb: *mut Iocb) -> Result<(), Errno> {
    match route(id)?.0 {
        // SAFETY: the kernel checks `iocb` (EFAULT).
        Backend::Kernel => unsafe { aio_sys::io_cancel(id, iocb) },
        Backend::Engine => engine::cancel(id, iocb as u64),
    }
}

/// `io_getevents(ctx, min_nr, nr, events, timeout)`.
///
/// # Safety
/// `events` must be writable for `nr` events and `timeout` null or readable;
/// pointers that cannot be user memory are handed to the kernel, which
/// answers `EFAULT`.
pub unsafe extern "C" fn io_getevents(
    ctx: IoContext,
    min_nr: c_long,
    nr: c_long,
    events: *mut IoEvent,
    timeout: *mut timespec,
) -> c_int {
    let _errno = KeepErrno::new();
    // SAFETY: forwarded from the caller.
    ret(unsafe { getevents(ctx as AioContext, min_nr, nr, events, timeout, None) })
}

/// `io_pgetevents(ctx, min_nr, nr, events, timeout, sigmask)`: as
/// `io_getevents`, with `sigmask` installed while waiting (NULL: the mask is
/// left alone).
///
/// # Safety
/// As [`io_getevents`]; `sigmask` null or readable.
pub unsafe extern "C" fn io_pgetevents(
    ctx: IoContext,
    min_nr: c_long,
    nr: c_long,
    events: *mut IoEvent,
    timeout: *mut timespec,
    sigmask: *mut sigset_t,
) -> c_int {
    let _errno = KeepErrno::new();
    // SAFETY: forwarded from the caller.
    ret(unsafe {
        getevents(
            ctx as AioContext,
            min_nr,
            nr,
            events,
            timeout,
            Some(sigmask.cast_const()),
        )
    })
}

/// The common body of `io_getevents` and `io_pgetevents` (`sigmask` is
/// `Some` for the latter).
///
/// Completions already in the ring are copied from it; the kernel (or the
/// engine) is entered only to wait for more, or to produce the error the
/// arguments call for.
unsafe fn getevents(
    id: AioContext,
    min_nr: c_long,
    nr: c_long,
    events: *mut IoEvent,
    timeout: *const timespec,
    sigmask: Option<*const sigset_t>,
) -> Result<c_long, Errno> {
    let (backend, ctx) = route(id)?;
    let Some(ctx) = ctx else {
        // SAFETY: forwarded; not a context this library reads.
        return unsafe { wait_in(backend, id, min_nr, nr, events, timeout, sigmask) };
    };
    let ev_addr = events as u64;
    let fast_path = 0 <= min_nr
        && min_nr <= nr
        && plausible(
            ev_addr,
            (nr as u64).saturating_mul(size_of::<IoEvent>() as u64),
        )
        && ev_addr % align_of::<IoEvent>() as u64 == 0
        && (timeout.is_null() || plausible(timeout as u64, size_of::<timespec>() as u64))
        && sigmask.is_none_or(|m| m.is_null() || plausible(m as u64, KERNEL_SIGSET_SIZE));
    if !fast_path {
        // Let the driver validate the arguments and give its errno.
        // SAFETY: forwarded from the caller.
        return ctx.while_waiting(|| unsafe {
            wait_in(backend, id, min_nr, nr, events, timeout, sigmask)
        });
    }
    // The ring never holds more than `ring_nr` events: the slice handed to
    // the reaper is the part of the caller's array that can be filled.
    let room = (nr as usize).min(ctx.ring_nr as usize);
    let zero_timeout = !timeout.is_null() && {
        // SAFETY: `timeout` is plausible and, by the C contract, readable.
        let t = unsafe { timeout.read_unaligned() };
        t.tv_sec == 0 && t.tv_nsec == 0
    };
    // SAFETY: `events` is non-null, aligned, plausible, and by the C
    // contract writable for `nr >= room` events; it does not overlap the
    // ring.
    let out = unsafe { core::slice::from_raw_parts_mut(events, room) };
    let enough = |n: usize| n as c_long >= min_nr || n as c_long == nr || zero_timeout;
    let (got, _waiting) = match ctx.reap_or_wait(out, enough) {
        Reaped::Done(n) => {
            ctx.ring_calls.fetch_add(1, Ordering::Relaxed);
            return Ok(n as c_long);
        }
        Reaped::Wait(n, waiting) => (n, waiting),
    };
    // Not enough yet (or the ring may not be read now): wait for the rest,
    // behind the events already copied. No thread reads the ring in user
    // space until `_waiting` is dropped.
    let got_l = got as c_long;
    // SAFETY: `events + got` is within the caller's array of `nr` events.
    let rest = unsafe { events.add(got) };
    // SAFETY: forwarded from the caller, for the part of the array left.
    let r = unsafe {
        wait_in(
            backend,
            id,
            min_nr - got_l,
            nr - got_l,
            rest,
            timeout,
            sigmask,
        )
    };
    match r {
        Ok(n) => Ok(got_l + n),
        // Events were delivered: the error (a timeout, a signal) is not.
        Err(_) if got > 0 => Ok(got_l),
        Err(e) => Err(e),
    }
}

/// One wait system call (or its engine equivalent).
///
/// # Safety
/// The pointers are handed to the driver, which validates them as the
/// kernel does.
unsafe fn wait_in(
    backend: Backend,
    id: AioContext,
    min_nr: c_long,
    nr: c_long,
    events: *mut IoEvent,
    timeout: *const timespec,
    sigmask: Option<*const sigset_t>,
) -> Result<c_long, Errno> {
    match (backend, sigmask) {
        (Backend::Kernel, None) => {
            // SAFETY: the kernel validates every pointer.
            unsafe { aio_sys::io_getevents_raw(id, min_nr, nr, events, timeout) }
        }
        (Backend::Kernel, Some(mask)) => {
            let sig = AioSigset {
                sigmask: mask as u64,
                sigsetsize: KERNEL_SIGSET_SIZE,
            };
            // SAFETY: `sig` lives across the call; the rest is validated by
            // the kernel.
            unsafe { aio_sys::io_pgetevents_raw(id, min_nr, nr, events, timeout, &sig) }
        }
        (Backend::Engine, None) => {
            // SAFETY: the engine validates every pointer.
            unsafe { engine::getevents(id, min_nr, nr, events as u64, timeout as u64) }
        }
        (Backend::Engine, Some(mask)) => {
            let sig = AioSigset {
                sigmask: mask as u64,
                sigsetsize: KERNEL_SIGSET_SIZE,
            };
            // SAFETY: the engine validates every pointer; `sig` lives.
            unsafe { engine::pgetevents(id, min_nr, nr, events as u64, timeout as u64, &sig) }
        }
    }
}

/// `io_queue_init(maxevents, ctxp)`: `*ctxp = NULL`, then `io_setup`.
///
/// # Safety
/// `ctxp` must be null or writable.
pub unsafe extern "C" fn io_queue_init(maxevents: c_int, ctxp: *mut IoContext) -> c_int {
    let _errno = KeepErrno::new();
    if maxevents <= 0 {
        return -Errno::EINVAL.0;
    }
    if plausible(ctxp as u64, size_of::<IoContext>() as u64) {
        // SAFETY: by the C contract `ctxp` is writable (libaio writes it too).
        unsafe { ctxp.write_unaligned(ptr::null_mut()) };
    }
    // SAFETY: forwarded; the driver checks `ctxp`.
    ret(unsafe { setup(maxevents as u32, ctxp.cast()) }.map(|()| 0))
}

/// `io_queue_release(ctx)`: `io_destroy`.
///
/// # Safety
/// As [`io_destroy`].
pub unsafe extern "C" fn io_queue_release(ctx: IoContext) -> c_int {
    // SAFETY: forwarded.
    unsafe { io_destroy(ctx) }
}

/// `io_queue_wait(ctx, timeout)` (LIBAIO_0.4): `io_getevents(ctx, 0, 0, NULL,
/// timeout)`, which validates the context and returns 0 at once.
///
/// # Safety
/// As [`io_getevents`].
pub unsafe extern "C" fn io_queue_wait(ctx: IoContext, timeout: *mut timespec) -> c_int {
    // SAFETY: forwarded.
    unsafe { io_getevents(ctx, 0, 0, ptr::null_mut(), timeout) }
}

/// `io_queue_run(ctx)`: reaps every completion that is ready and calls the
/// callback stored in each iocb's `data` (`io_set_callback`) as
/// `cb(ctx, iocb, res, res2)`. Returns 0 once the ring is empty, or `-errno`.
/// An event whose `data` is NULL has no callback and is skipped.
///
/// # Safety
/// Every completed iocb's `data` must be NULL or an [`IoCallback`].
pub unsafe extern "C" fn io_queue_run(ctx: IoContext) -> c_int {
    const BATCH: usize = 32;
    let zero = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut batch = [IoEvent::default(); BATCH];
    loop {
        let n = {
            let _errno = KeepErrno::new();
            // SAFETY: `batch` is a local array of BATCH events; `zero` lives.
            unsafe {
                getevents(
                    ctx as AioContext,
                    0,
                    BATCH as c_long,
                    batch.as_mut_ptr(),
                    &zero,
                    None,
                )
            }
        };
        let n = match n {
            Ok(0) => return 0,
            Ok(n) => n as usize,
            Err(e) => return -e.0,
        };
        for ev in &batch[..n] {
            if ev.data == 0 {
                continue;
            }
            // SAFETY: by this function's contract a non-null `data` is an
            // `io_callback_t` (stored by io_set_callback).
            let cb: IoCallback = unsafe { core::mem::transmute::<u64, IoCallback>(ev.data) };
            // SAFETY: the callback receives what libaio gives it.
            unsafe {
                cb(
                    ctx,
                    ev.obj as *mut Iocb,
                    ev.res as c_long,
                    ev.res2 as c_long,
                )
            };
        }
    }
}

/// `io_getevents` of LIBAIO_0.1: `(ctx, nr, events, timeout)`, waiting for
/// at least one event.
///
/// # Safety
/// As [`io_getevents`].
pub unsafe extern "C" fn io_getevents_0_1(
    ctx: IoContext,
    nr: c_long,
    events: *mut IoEvent,
    timeout: *mut timespec,
) -> c_int {
    // SAFETY: forwarded.
    unsafe { io_getevents(ctx, 1, nr, events, timeout) }
}

/// `io_cancel` of LIBAIO_0.1: `(ctx, iocb)`, without the event argument.
///
/// # Safety
/// As [`io_cancel`].
pub unsafe extern "C" fn io_cancel_0_1(ctx: IoContext, iocb: *mut Iocb) -> c_int {
    // SAFETY: forwarded; the event argument is unused.
    unsafe { io_cancel(ctx, iocb, ptr::null_mut()) }
}

/// `io_queue_wait` of LIBAIO_0.1: the same as LIBAIO_0.4's.
///
/// # Safety
/// As [`io_getevents`].
pub unsafe extern "C" fn io_queue_wait_0_1(ctx: IoContext, timeout: *mut timespec) -> c_int {
    // SAFETY: forwarded.
    unsafe { io_queue_wait(ctx, timeout) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_rejects_what_cannot_be_user_memory() {
        assert!(!plausible(0, 32));
        assert!(!plausible(8, 32));
        assert!(!plausible(u64::MAX, 1));
        assert!(!plausible(u64::MAX - 8, 32));
        assert!(!plausible(0xffff_8880_0000_0000, 32));
        assert!(!plausible(USER_MAX - 16, 32));
        assert!(plausible(USER_MAX - 32, 32));
        assert!(plausible(0x7f00_0000_0000, 32 * 1024));
        assert!(plausible(USER_MIN, 0));
    }

    #[test]
    fn errors_are_negative_errno_and_errno_is_kept() {
        // SAFETY: the calling thread's errno slot.
        unsafe { *libc::__errno_location() = 4242 };
        // SAFETY: a context id that is not one: the kernel rejects it.
        let r = unsafe { io_destroy(0x1234_5000 as IoContext) };
        assert_eq!(r, -libc::EINVAL);
        // SAFETY: as above.
        assert_eq!(unsafe { *libc::__errno_location() }, 4242);
        // SAFETY: maxevents 0 is rejected before any pointer is used.
        let r = unsafe { io_queue_init(0, ptr::null_mut()) };
        assert_eq!(r, -libc::EINVAL);
    }
}
