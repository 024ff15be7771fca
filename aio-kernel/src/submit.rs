//! `io_submit` (spec §3): validation in Linux's order, then the request
//! state machines for reads/writes and fsync. `POLL` lives in `poll.rs`.

use alloc::sync::Arc;

use aio_abi::{
    Errno, IoEvent, IoVec, Iocb, IocbFlags, MAX_RW_COUNT, Opcode, PollEvents, RwFlags, UIO_MAXIOV,
    ioprio,
};
use zerocopy::{FromZeros, IntoBytes};

use crate::context::{Cancel, Ctx, Kernel};
use crate::host::{Completion, EventFd, File, FileMode, Host, IoStatus, PollWaiter, PollWake};
use crate::host::{Resume, RwOp, Segments};
use crate::park::Park;
use crate::poll;
use crate::sync::SpinLock;
use crate::sync::atomic::{AtomicBool, Ordering};

/// Offset of `aio_key` in the iocb: always the low half of the word at 8.
#[cfg(target_endian = "little")]
const KEY_OFFSET: u64 = 8;
#[cfg(target_endian = "big")]
const KEY_OFFSET: u64 = 12;

/// A submitted request: the parts every opcode shares.
pub(crate) struct ReqCommon<H: Host> {
    pub(crate) ctx: Arc<Ctx<H>>,
    pub(crate) event: IoEvent,
    pub(crate) eventfd: Option<Arc<dyn EventFd>>,
    pub(crate) file: Arc<dyn File>,
    completed: AtomicBool,
}

impl<H: Host> ReqCommon<H> {
    /// Posts the one event of this request; later calls do nothing.
    pub(crate) fn complete(&self, res: i64) -> bool {
        if self.completed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let ev = IoEvent { res, ..self.event };
        self.ctx.post_event(&ev, self.eventfd.as_deref());
        self.ctx.request_done();
        true
    }

    pub(crate) fn is_completed(&self) -> bool {
        self.completed.load(Ordering::Acquire)
    }
}

/// Turns a final error into the value of `io_event.res` (§3.4g).
pub(crate) fn res_of(err: Errno) -> i64 {
    if err.is_restart() {
        Errno::EINTR.as_res()
    } else {
        err.as_res()
    }
}

/// `blk_start_plug` .. `blk_finish_plug` around one `io_submit`; the plug
/// ends on every way out, unwinding included.
struct Plugged<'a, H: Host>(&'a H);

impl<'a, H: Host> Plugged<'a, H> {
    fn start(host: &'a H) -> Self {
        host.start_plug();
        Plugged(host)
    }
}

impl<H: Host> Drop for Plugged<'_, H> {
    fn drop(&mut self) {
        self.0.finish_plug();
    }
}

impl<H: Host> Kernel<H> {
    /// `io_submit(ctx_id, nr, iocbpp)`: the number of iocbs accepted, or the
    /// first one's error if none was.
    pub fn io_submit(&self, ctx_id: u64, nr: i64, iocbpp: u64) -> Result<usize, Errno> {
        if nr < 0 {
            return Err(Errno::EINVAL);
        }
        let ctx = self.lookup(ctx_id)?;
        let nr = nr.min(ctx.nr_events() as i64) as u64;
        let _plug = Plugged::start(&*self.host);
        let mut err = Ok(());
        let mut i = 0u64;
        while i < nr {
            let mut ptr = [0u8; 8];
            let at = iocbpp.wrapping_add(i * 8);
            if iocbpp.checked_add(i * 8 + 8).is_none() {
                err = Err(Errno::EFAULT);
                break;
            }
            if let Err(e) = self.host.copy_from_user(at, &mut ptr) {
                err = Err(e);
                break;
            }
            if let Err(e) = self.submit_one(&ctx, u64::from_ne_bytes(ptr)) {
                err = Err(e);
                break;
            }
            i += 1;
        }
        match (i, err) {
            (0, Err(e)) => Err(e),
            (i, _) => Ok(i as usize),
        }
    }

    /// `io_submit_one`: copy, reserved, overflow, slot, then the rest.
    fn submit_one(&self, ctx: &Arc<Ctx<H>>, user_iocb: u64) -> Result<(), Errno> {
        let mut iocb = Iocb::new_zeroed();
        if user_iocb.checked_add(64).is_none() {
            return Err(Errno::EFAULT);
        }
        self.host
            .copy_from_user(user_iocb, zerocopy::IntoBytes::as_mut_bytes(&mut iocb))?;
        if iocb.aio_reserved2 != 0 {
            return Err(Errno::EINVAL);
        }
        if (iocb.aio_nbytes as i64) < 0 {
            return Err(Errno::EINVAL);
        }
        if !ctx.get_slot() {
            return Err(Errno::EAGAIN);
        }
        ctx.inflight.fetch_add(1, Ordering::AcqRel);
        match self.submit_prepared(ctx, &iocb, user_iocb) {
            Ok(()) => Ok(()),
            Err(e) => {
                ctx.put_slots(1);
                ctx.request_done();
                Err(e)
            }
        }
    }

    /// `__io_submit_one`: fd, eventfd, key, opcode. Errors returned here
    /// post no event; once a request is started, its event carries the rest.
    fn submit_prepared(&self, ctx: &Arc<Ctx<H>>, iocb: &Iocb, user_iocb: u64) -> Result<(), Errno> {
        let file = self.host.fget(iocb.fd())?;
        let eventfd = if iocb.aio_flags.contains(IocbFlags::RESFD) {
            Some(self.host.eventfd_get(iocb.aio_resfd as i32)?)
        } else {
            None
        };
        self.host
            .copy_to_user(user_iocb.wrapping_add(KEY_OFFSET), &0u32.to_ne_bytes())?;
        let common = ReqCommon {
            ctx: ctx.clone(),
            event: IoEvent {
                data: iocb.aio_data,
                obj: user_iocb,
                res: 0,
                res2: 0,
            },
            eventfd,
            file,
            completed: AtomicBool::new(false),
        };
        match iocb.aio_lio_opcode {
            Opcode::PREAD | Opcode::PREADV => self.submit_rw(common, iocb, false),
            Opcode::PWRITE | Opcode::PWRITEV => self.submit_rw(common, iocb, true),
            Opcode::FSYNC => submit_fsync(common, iocb, false),
            Opcode::FDSYNC => submit_fsync(common, iocb, true),
            Opcode::POLL => poll::submit(common, iocb),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `aio_read`/`aio_write`: prep, access mode, method, buffers, area.
    fn submit_rw(&self, common: ReqCommon<H>, iocb: &Iocb, write: bool) -> Result<(), Errno> {
        let mode = common.file.mode();
        let flags = self.prep_rw(&mode, iocb, write)?;
        if write && !mode.write || !write && !mode.read {
            return Err(Errno::EBADF);
        }
        if write && !mode.has_write_iter || !write && !mode.has_read_iter {
            return Err(Errno::EINVAL);
        }
        let segs = self.import(iocb)?;
        let count: u64 = segs.iter().map(|s| s.iov_len).sum();
        verify_area(iocb.aio_offset, count)?;
        let req = Arc::new(RwReq {
            common,
            write,
            park: Park::new(),
            state: SpinLock::new(RwState {
                segs,
                seg: 0,
                seg_off: 0,
                pos: iocb.aio_offset,
                done: 0,
                flags,
                append: mode.append && !flags.contains(RwFlags::NOAPPEND)
                    || flags.contains(RwFlags::APPEND),
                stream: !mode.regular,
            }),
        });
        req.call_file();
        Ok(())
    }

    /// `aio_prep_rw` with `ioprio_check_cap` and `kiocb_set_rw_flags`.
    fn prep_rw(&self, mode: &FileMode, iocb: &Iocb, write: bool) -> Result<RwFlags, Errno> {
        if iocb.aio_flags.contains(IocbFlags::IOPRIO) {
            let prio = iocb.aio_reqprio as u16;
            let class = ioprio::class(prio) & 7;
            let level = prio & 7;
            match class {
                ioprio::CLASS_RT => {
                    if !self.host.capable_sys_nice() {
                        return Err(Errno::EPERM);
                    }
                }
                ioprio::CLASS_BE | ioprio::CLASS_IDLE => {}
                ioprio::CLASS_NONE => {
                    if level != 0 {
                        return Err(Errno::EINVAL);
                    }
                }
                _ => return Err(Errno::EINVAL),
            }
        }
        let flags = iocb.aio_rw_flags;
        if flags.is_empty() {
            return Ok(flags);
        }
        if flags.0 & !self.host.rw_flags_supported().0 != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if flags.contains(RwFlags::APPEND | RwFlags::NOAPPEND) {
            return Err(Errno::EINVAL);
        }
        if flags.contains(RwFlags::NOWAIT) && !mode.nowait {
            return Err(Errno::EOPNOTSUPP);
        }
        if flags.contains(RwFlags::ATOMIC) && (!write || !mode.atomic_write) {
            return Err(Errno::EOPNOTSUPP);
        }
        if flags.contains(RwFlags::DONTCACHE) && !mode.dontcache {
            return Err(Errno::EOPNOTSUPP);
        }
        if flags.contains(RwFlags::NOAPPEND) && mode.append && mode.append_only {
            return Err(Errno::EPERM);
        }
        Ok(flags.difference(RwFlags::HIPRI))
    }

    /// `import_ubuf` / `__import_iovec`: the segment list, copied, with
    /// `MAX_RW_COUNT` applied.
    fn import(&self, iocb: &Iocb) -> Result<Segments, Errno> {
        let limit = self.host.user_addr_limit();
        let access_ok = |base: u64, len: u64| base.checked_add(len).is_some_and(|e| e <= limit);
        if !iocb.aio_lio_opcode.is_vectored() {
            let len = iocb.aio_nbytes.min(MAX_RW_COUNT);
            if !access_ok(iocb.aio_buf, len) {
                return Err(Errno::EFAULT);
            }
            return Ok(Segments::One(IoVec {
                iov_base: iocb.aio_buf,
                iov_len: len,
            }));
        }
        let n = iocb.aio_nbytes;
        if n > UIO_MAXIOV {
            return Err(Errno::EINVAL);
        }
        let mut segs = Segments::zeroed(n as usize);
        let raw = segs.as_mut_bytes();
        if !access_ok(iocb.aio_buf, raw.len() as u64) {
            return Err(Errno::EFAULT);
        }
        self.host.copy_from_user(iocb.aio_buf, raw)?;
        if segs.iter().any(|seg| (seg.iov_len as i64) < 0) {
            return Err(Errno::EINVAL);
        }
        let mut total = 0u64;
        // One segment takes the `import_ubuf` path: capped, then checked.
        // More are checked at full length, then capped (both found by
        // tests/differential.rs against the running kernel).
        let single = segs.len() == 1;
        for seg in segs.iter_mut() {
            if !single && !access_ok(seg.iov_base, seg.iov_len) {
                return Err(Errno::EFAULT);
            }
            if seg.iov_len > MAX_RW_COUNT - total {
                seg.iov_len = MAX_RW_COUNT - total;
            }
            if single && !access_ok(seg.iov_base, seg.iov_len) {
                return Err(Errno::EFAULT);
            }
            total += seg.iov_len;
        }
        Ok(segs)
    }
}

/// `rw_verify_area` for a file without unsigned offsets.
fn verify_area(pos: i64, count: u64) -> Result<(), Errno> {
    if pos < 0 || pos.checked_add(count as i64).is_none() {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// `aio_fsync`.
fn submit_fsync<H: Host>(common: ReqCommon<H>, iocb: &Iocb, datasync: bool) -> Result<(), Errno> {
    if iocb.aio_buf != 0
        || iocb.aio_offset != 0
        || iocb.aio_nbytes != 0
        || !iocb.aio_rw_flags.is_empty()
    {
        return Err(Errno::EINVAL);
    }
    if !common.file.mode().has_fsync {
        return Err(Errno::EINVAL);
    }
    let req = Arc::new(FsyncReq { common });
    let done = Completion(req.clone());
    match req.common.file.fsync(datasync, &done) {
        IoStatus::Queued => {}
        status => req.clone().resume(status),
    }
    Ok(())
}

struct FsyncReq<H: Host> {
    common: ReqCommon<H>,
}

impl<H: Host> Resume for FsyncReq<H> {
    fn resume(self: Arc<Self>, status: IoStatus) {
        let res = match status {
            IoStatus::Error(e) => res_of(e),
            _ => 0,
        };
        self.common.complete(res);
    }
}

/// Where a read or write stands: the seed's bug was resuming with the
/// segment position and the file position out of step, so both live here
/// and only `advance` moves them, together.
pub(crate) struct RwState {
    segs: Segments,
    /// Index of the segment the next byte goes to.
    seg: usize,
    /// Bytes of `segs[seg]` already transferred.
    seg_off: u64,
    pos: i64,
    done: u64,
    flags: RwFlags,
    append: bool,
    stream: bool,
}

impl RwState {
    fn remaining(&self) -> u64 {
        self.segs[self.seg.min(self.segs.len())..]
            .iter()
            .map(|s| s.iov_len)
            .sum::<u64>()
            - self.seg_off
    }

    fn advance(&mut self, mut n: u64) {
        self.done += n;
        if !self.append && !self.stream {
            self.pos += n as i64;
        }
        while n > 0 && self.seg < self.segs.len() {
            let left = self.segs[self.seg].iov_len - self.seg_off;
            if n < left {
                self.seg_off += n;
                return;
            }
            n -= left;
            self.seg += 1;
            self.seg_off = 0;
        }
        // Skip empty segments so the next call starts on real data.
        while self.seg < self.segs.len() && self.segs[self.seg].iov_len == self.seg_off {
            self.seg += 1;
            self.seg_off = 0;
        }
    }

    fn op(&self) -> RwOp {
        let mut segs = Segments::from_slice(&self.segs[self.seg.min(self.segs.len())..]);
        if let Some(first) = segs.first_mut() {
            first.iov_base += self.seg_off;
            first.iov_len -= self.seg_off;
        }
        RwOp {
            segs,
            pos: self.pos,
            flags: self.flags,
        }
    }
}

pub(crate) struct RwReq<H: Host> {
    common: ReqCommon<H>,
    write: bool,
    state: SpinLock<RwState>,
    /// Parked on readiness. Whoever takes it back (the wake-up,
    /// io_destroy, or io_cancel before any byte moved) owns the request
    /// from there: a transfer never restarts after it was ended.
    park: Park,
}

impl<H: Host> RwReq<H> {
    /// Calls the file for the rest of the transfer.
    fn call_file(self: &Arc<Self>) {
        let status = self.issue();
        self.drive(status);
    }

    /// Follows the file's answers until the request completes, is queued,
    /// or waits for readiness.
    fn drive(self: &Arc<Self>, mut status: IoStatus) {
        loop {
            status = match status {
                IoStatus::Queued => return,
                IoStatus::Done(n) => {
                    let total = {
                        let mut s = self.state.lock();
                        s.advance(n as u64);
                        s.done
                    };
                    self.common.complete(total as i64);
                    return;
                }
                IoStatus::Partial(n) => {
                    let left = {
                        let mut s = self.state.lock();
                        s.advance(n as u64);
                        s.remaining()
                    };
                    if n == 0 || left == 0 {
                        IoStatus::Done(0)
                    } else {
                        self.issue()
                    }
                }
                IoStatus::WouldBlock(n) => {
                    let (nowait, done) = {
                        let mut s = self.state.lock();
                        s.advance(n as u64);
                        (s.flags.contains(RwFlags::NOWAIT), s.done)
                    };
                    if nowait {
                        let res = if done > 0 {
                            done as i64
                        } else {
                            Errno::EAGAIN.as_res()
                        };
                        self.common.complete(res);
                        return;
                    }
                    let want = self.wanted();
                    self.park.park(done > 0);
                    self.common.ctx.parked.lock().push(self.clone());
                    if self.common.ctx.dead.load(Ordering::SeqCst) {
                        // io_destroy may have swept the parked list already.
                        self.unpark();
                        if self.park.take() {
                            self.common.complete(self.interrupted());
                        }
                        return;
                    }
                    let waiter = PollWaiter(self.clone());
                    let ready = if self.common.file.mode().has_poll {
                        self.common.file.poll(want, Some(&waiter))
                    } else {
                        want
                    };
                    if !ready.intersects(want | PollEvents::ERR | PollEvents::HUP) {
                        // The waiter's wake continues the transfer.
                        return;
                    }
                    self.unpark();
                    if !self.park.take() {
                        return;
                    }
                    self.issue()
                }
                IoStatus::Error(e) => {
                    let done = self.state.lock().done;
                    let res = if done > 0 { done as i64 } else { res_of(e) };
                    self.common.complete(res);
                    return;
                }
            }
        }
    }

    fn unpark(&self) {
        let me = self as *const Self as *const u8;
        self.common
            .ctx
            .parked
            .lock()
            .retain(|r| Arc::as_ptr(r) as *const u8 != me);
    }

    /// The result of a transfer ended by `io_destroy` while waiting: the
    /// bytes moved so far, or `-ECANCELED`.
    fn interrupted(&self) -> i64 {
        let done = self.state.lock().done;
        if done > 0 {
            done as i64
        } else {
            Errno::ECANCELED.as_res()
        }
    }

    fn wanted(&self) -> PollEvents {
        if self.write {
            PollEvents::OUT
        } else {
            PollEvents::IN
        }
    }

    fn issue(self: &Arc<Self>) -> IoStatus {
        let op = self.state.lock().op();
        let done = Completion(self.clone());
        if self.write {
            self.common.file.write_iter(&op, &done)
        } else {
            self.common.file.read_iter(&op, &done)
        }
    }
}

impl<H: Host> Resume for RwReq<H> {
    fn resume(self: Arc<Self>, status: IoStatus) {
        self.drive(status);
    }
}

impl<H: Host> Cancel for RwReq<H> {
    fn obj(&self) -> u64 {
        self.common.event.obj
    }

    fn cancel(self: Arc<Self>) {
        if self.park.take() {
            self.common.complete(self.interrupted());
        }
        self.common.file.poll_cancel(&PollWaiter(self.clone()));
    }

    /// `io_cancel`: only a transfer parked before moving a byte ends
    /// (`-ECANCELED`); one that moved data, or is moving it now, goes on.
    fn try_cancel(self: Arc<Self>) -> bool {
        if !self.park.take_unstarted() {
            return false;
        }
        self.unpark();
        self.common.complete(Errno::ECANCELED.as_res());
        self.common.file.poll_cancel(&PollWaiter(self.clone()));
        true
    }
}

impl<H: Host> PollWake for RwReq<H> {
    fn wake(self: Arc<Self>, events: PollEvents) -> bool {
        if self.common.is_completed() {
            return true;
        }
        let want = self.wanted();
        if !events.is_empty() && !events.intersects(want | PollEvents::ERR | PollEvents::HUP) {
            return false;
        }
        if !self.park.take() {
            // io_destroy or io_cancel ended it, or another wake-up took it.
            return true;
        }
        self.unpark();
        self.call_file();
        true
    }

    fn is_done(&self) -> bool {
        self.common.is_completed()
    }
}
