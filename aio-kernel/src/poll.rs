//! `IOCB_CMD_POLL` (spec §7) and `io_cancel` (spec §6).

use alloc::sync::Arc;

use aio_abi::{Errno, Iocb, PollEvents};

use crate::context::{Cancel, Kernel};
use crate::host::{Host, PollWaiter, PollWake};
use crate::submit::ReqCommon;
use crate::sync::atomic::{AtomicBool, Ordering};

/// What a file without a `poll` method reports (`DEFAULT_POLLMASK`).
pub const DEFAULT_POLLMASK: PollEvents =
    PollEvents(PollEvents::IN.0 | PollEvents::OUT.0 | PollEvents::RDNORM.0 | PollEvents::WRNORM.0);

struct PollReq<H: Host> {
    common: ReqCommon<H>,
    events: PollEvents,
    cancelled: AtomicBool,
}

/// `aio_poll`.
pub(crate) fn submit<H: Host>(common: ReqCommon<H>, iocb: &Iocb) -> Result<(), Errno> {
    if iocb.aio_buf > 0xffff {
        return Err(Errno::EINVAL);
    }
    if iocb.aio_offset != 0 || iocb.aio_nbytes != 0 || !iocb.aio_rw_flags.is_empty() {
        return Err(Errno::EINVAL);
    }
    let events = PollEvents(iocb.aio_buf as u32) | PollEvents::ERR | PollEvents::HUP;
    let file = common.file.clone();
    if !file.mode().has_poll {
        // Nothing to wait on: ready now, or the kernel's "no poll support".
        let mask = DEFAULT_POLLMASK & events;
        if mask.is_empty() {
            return Err(Errno::EINVAL);
        }
        common.complete(mask.0 as i64);
        return Ok(());
    }
    let req = Arc::new(PollReq {
        common,
        events,
        cancelled: AtomicBool::new(false),
    });
    // Listed before arming, so a cancel can find it as soon as it can wait.
    req.common.ctx.active.lock().push(req.clone());
    let waiter = PollWaiter(req.clone());
    let mask = file.poll(events, Some(&waiter)) & events;
    if !mask.is_empty() {
        req.finish(mask.0 as i64);
    }
    Ok(())
}

impl<H: Host> PollReq<H> {
    fn unlist(&self) {
        let mut active = self.common.ctx.active.lock();
        let me = self as *const Self as *const u8;
        active.retain(|r| Arc::as_ptr(r) as *const u8 != me);
    }

    fn finish(&self, res: i64) {
        self.unlist();
        self.common.complete(res);
    }
}

impl<H: Host> PollWake for PollReq<H> {
    fn wake(self: Arc<Self>, events: PollEvents) -> bool {
        if self.common.is_completed() {
            return true;
        }
        if self.cancelled.load(Ordering::Acquire) {
            self.finish(0);
            return true;
        }
        if events.is_empty() {
            // Unknown readiness: poll again, re-arming if still not ready.
            let waiter = PollWaiter(self.clone());
            let mask = self.common.file.poll(self.events, Some(&waiter)) & self.events;
            if !mask.is_empty() {
                self.finish(mask.0 as i64);
            }
            return true;
        }
        // Linux ignores wake-ups outside the mask, and otherwise reports
        // the wake-up's whole key (only the submit-time check is masked).
        if !events.intersects(self.events) {
            return false;
        }
        self.finish(events.0 as i64);
        true
    }

    fn is_done(&self) -> bool {
        self.common.is_completed()
    }
}

impl<H: Host> Cancel for PollReq<H> {
    fn obj(&self) -> u64 {
        self.common.event.obj
    }

    fn cancel(self: Arc<Self>) {
        self.cancelled.store(true, Ordering::Release);
        self.common.complete(0);
        let waiter = PollWaiter(self.clone());
        self.common.file.poll_cancel(&waiter);
    }
}

impl<H: Host> Kernel<H> {
    /// `io_cancel(ctx_id, iocb, result)`: `Err(EINPROGRESS)` when a request
    /// was found and cancelled (Linux never returns 0); its event, with
    /// `res == 0` for `POLL` and `-ECANCELED` for a read or write that was
    /// waiting for readiness without having moved a byte, still arrives
    /// through the ring. Anything else is `EINVAL`. `result` is neither
    /// read nor written.
    pub fn io_cancel(&self, ctx_id: u64, iocb: u64, _result: u64) -> Result<(), Errno> {
        let mut key = [0u8; 4];
        let key_at = iocb.checked_add(8).ok_or(Errno::EFAULT)?;
        #[cfg(target_endian = "big")]
        let key_at = key_at + 4;
        self.host.copy_from_user(key_at, &mut key)?;
        if u32::from_ne_bytes(key) != 0 {
            return Err(Errno::EINVAL);
        }
        let ctx = self.lookup(ctx_id)?;
        let found = {
            let mut active = ctx.active.lock();
            active
                .iter()
                .position(|r| r.obj() == iocb)
                .map(|i| active.remove(i))
        };
        if let Some(req) = found {
            req.cancel();
            return Err(Errno::EINPROGRESS);
        }
        // A read or write parked on readiness is cancelled only if it has
        // not moved a byte; otherwise it goes on and completes normally.
        let parked = ctx.parked.lock().iter().find(|r| r.obj() == iocb).cloned();
        match parked.map(Cancel::try_cancel) {
            Some(true) => Err(Errno::EINPROGRESS),
            _ => Err(Errno::EINVAL),
        }
    }
}
