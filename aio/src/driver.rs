//! The one seam between the completion machinery and whatever executes the
//! requests: the running kernel now, the userspace engine later.

use std::time::Duration;

use aio_abi::{AioContext, Errno, IoEvent, Iocb};
use aio_sys::RingView;

/// Which implementation of the AIO system calls runs a [`Context`](crate::Context)'s
/// requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Driver {
    /// The running Linux kernel, through `aio-sys`.
    #[default]
    Kernel,
}

/// Executes batches of iocbs and hands back their events.
///
/// Everything above this trait is driver-independent: the slab of slots,
/// batching, back-pressure and the blocking or async front-ends.
pub(crate) trait Backend: Send {
    /// `io_submit`: how many of `iocbs` were accepted, or the first one's
    /// error if none was.
    ///
    /// # Safety
    /// As [`aio_sys::io_submit`]: the iocbs and everything they point at
    /// stay valid until their events have been reaped.
    unsafe fn submit(&mut self, iocbs: &[*mut Iocb]) -> Result<usize, Errno>;

    /// Copies events that are ready into `out` without a system call;
    /// 0 when none are, or when this driver can only reap by syscall.
    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize;

    /// `io_getevents`: sleeps until `min_nr` events are ready (or the
    /// timeout passes) and copies up to `out.len()`.
    fn wait(
        &mut self,
        min_nr: usize,
        out: &mut [IoEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno>;

    /// `io_cancel` of an in-flight request (only polls are cancellable).
    ///
    /// # Safety
    /// `iocb` is the address the request was submitted from.
    unsafe fn cancel(&mut self, iocb: *mut Iocb) -> Result<(), Errno>;

    /// Whether [`Backend::try_reap`] can ever return events.
    fn reaps_ring(&self) -> bool;

    /// `io_destroy`: cancels what is cancellable and returns only when
    /// every submitted request has completed, so that no buffer is written
    /// afterwards. Idempotent.
    fn destroy(&mut self) -> Result<(), Errno>;
}

/// The running kernel.
pub(crate) struct KernelBackend {
    ctx: AioContext,
    ring: RingView,
    destroyed: bool,
}

impl KernelBackend {
    /// `io_setup(depth)`, reaping from the ring if `use_ring`.
    pub(crate) fn new(depth: u32, use_ring: bool) -> Result<KernelBackend, Errno> {
        let ctx = aio_sys::io_setup(depth)?;
        let ring = if use_ring {
            // SAFETY: `ctx` was just returned by io_setup and is destroyed
            // only by `destroy`, after which the view is never used.
            unsafe { RingView::new(ctx) }
        } else {
            RingView::syscall_only(ctx)
        };
        Ok(KernelBackend {
            ctx,
            ring,
            destroyed: false,
        })
    }
}

impl Backend for KernelBackend {
    unsafe fn submit(&mut self, iocbs: &[*mut Iocb]) -> Result<usize, Errno> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { aio_sys::io_submit(self.ctx, iocbs) }
    }

    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
        if self.destroyed {
            return 0;
        }
        self.ring.try_reap(out)
    }

    fn wait(
        &mut self,
        min_nr: usize,
        out: &mut [IoEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno> {
        aio_sys::io_getevents(self.ctx, min_nr, out, timeout)
    }

    unsafe fn cancel(&mut self, iocb: *mut Iocb) -> Result<(), Errno> {
        // SAFETY: forwarded from the caller's contract.
        match unsafe { aio_sys::io_cancel(self.ctx, iocb) } {
            Ok(()) | Err(Errno::EINPROGRESS) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn reaps_ring(&self) -> bool {
        self.ring.is_mapped() && !self.destroyed
    }

    fn destroy(&mut self) -> Result<(), Errno> {
        if self.destroyed {
            return Ok(());
        }
        // SAFETY: the ring view is not used after this (`destroyed` guards
        // try_reap; `wait` on a destroyed context only returns EINVAL).
        unsafe { aio_sys::io_destroy(self.ctx) }?;
        self.destroyed = true;
        Ok(())
    }
}

impl Drop for KernelBackend {
    fn drop(&mut self) {
        // The owner destroys explicitly and keeps the buffers if that fails;
        // this only covers a backend dropped before it had any request.
        let _ = self.destroy();
    }
}
