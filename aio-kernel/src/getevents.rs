//! `io_getevents` and `io_pgetevents` (spec §5).

use alloc::vec;

use aio_abi::Errno;

use crate::context::{Ctx, Kernel};
use crate::host::{Host, WaitOutcome};
use crate::sync::atomic::Ordering;

const EVENT_LEN: u64 = 32;
/// `KTIME_SEC_MAX`: seconds beyond this are "forever".
const KTIME_SEC_MAX: u64 = (i64::MAX / 1_000_000_000) as u64;

/// `timespec64_to_ktime`, then the hrtimer's view of it: `None` is
/// "forever", `Some(0)` is "poll once". A negative `tv_sec` is forever
/// (unsigned compare), and so is any other negative total: the relative
/// expiry added to "now" trips `ktime_add_safe`'s overflow check.
/// `tv_nsec` is not validated (Linux does not either): the sum wraps as
/// `ktime_set`'s does, and a wrapped total is negative, hence forever.
fn to_ktime(sec: i64, nsec: i64) -> Option<u64> {
    if sec as u64 >= KTIME_SEC_MAX {
        return None;
    }
    let ns = (sec * 1_000_000_000).wrapping_add(nsec);
    u64::try_from(ns).ok()
}

impl<H: Host> Ctx<H> {
    /// `aio_read_events_ring`: copies up to `nr` events to `dst`, storing the
    /// new head; on a fault nothing is consumed.
    fn read_ring(&self, dst: u64, nr: i64) -> Result<i64, Errno> {
        let _guard = self.ring_lock.lock();
        let head = self.ring.head();
        let tail = self.ring.tail();
        if head == tail {
            return Ok(0);
        }
        let nr_events = self.nr_events();
        let mut head = head % nr_events;
        let tail = tail % nr_events;
        let per_page = (self.host.page_size() / EVENT_LEN) as u32;
        let mut ret: i64 = 0;
        let mut buf = vec![];
        while ret < nr {
            if head == tail {
                break;
            }
            let mut avail = (if head <= tail { tail } else { nr_events }) - head;
            // Copied a page of the ring at a time, as Linux maps them.
            let pos = head + 1;
            avail = avail.min((nr - ret).min(u32::MAX as i64) as u32);
            avail = avail.min(per_page - pos % per_page);
            buf.resize(avail as usize * EVENT_LEN as usize, 0);
            self.ring.read_events(head, &mut buf);
            let at = dst.wrapping_add(ret as u64 * EVENT_LEN);
            if at.checked_add(buf.len() as u64).is_none() {
                return Err(Errno::EFAULT);
            }
            self.host
                .copy_to_user(at, &buf)
                .map_err(|_| Errno::EFAULT)?;
            ret += avail as i64;
            head = (head + avail) % nr_events;
        }
        self.ring.set_head(head);
        Ok(ret)
    }

    /// `aio_read_events`: one gathering step; true when the wait is over.
    fn read_step(&self, min_nr: i64, nr: i64, dst: u64, got: &mut i64) -> bool {
        let ret = self.read_ring(dst.wrapping_add(*got as u64 * EVENT_LEN), nr - *got);
        let mut ret = match ret {
            Ok(n) => {
                *got += n;
                n
            }
            Err(e) => -(e.0 as i64),
        };
        if self.dead.load(Ordering::Acquire) {
            ret = Errno::EINVAL.as_res();
        }
        if *got == 0 {
            *got = ret;
        }
        ret < 0 || *got >= min_nr
    }
}

impl<H: Host> Kernel<H> {
    /// `io_getevents(ctx_id, min_nr, nr, events, timeout)`: `timeout` is the
    /// address of a `struct timespec` or 0.
    pub fn io_getevents(
        &self,
        ctx_id: u64,
        min_nr: i64,
        nr: i64,
        events: u64,
        timeout: u64,
    ) -> Result<usize, Errno> {
        let until = self.read_timeout(timeout)?;
        let ret = self.do_getevents(ctx_id, min_nr, nr, events, until, None);
        match ret {
            Ok(0) if self.host.signal_pending() => Err(Errno::EINTR),
            other => other,
        }
    }

    /// `io_pgetevents(ctx_id, min_nr, nr, events, timeout, usig)`: `usig` is
    /// the address of an `AioSigset` or 0. A null `sigmask` inside it skips
    /// the `sigsetsize` check, as in Linux.
    pub fn io_pgetevents(
        &self,
        ctx_id: u64,
        min_nr: i64,
        nr: i64,
        events: u64,
        timeout: u64,
        usig: u64,
    ) -> Result<usize, Errno> {
        let until = self.read_timeout(timeout)?;
        let mut sigmask = None;
        if usig != 0 {
            let mut raw = [0u8; 16];
            self.host.copy_from_user(usig, &mut raw)?;
            let mask_at = u64::from_ne_bytes(raw[..8].try_into().expect("8 bytes"));
            let size = u64::from_ne_bytes(raw[8..].try_into().expect("8 bytes"));
            if mask_at != 0 {
                if size != self.host.sigset_size() {
                    return Err(Errno::EINVAL);
                }
                let mut mask = [0u8; 8];
                let n = (size as usize).min(8);
                self.host.copy_from_user(mask_at, &mut mask[..n])?;
                sigmask = Some(u64::from_ne_bytes(mask));
            }
        }
        let ret = self.do_getevents(ctx_id, min_nr, nr, events, until, sigmask);
        match ret {
            Ok(0) if self.host.signal_pending() => Err(Errno::EINTR),
            other => other,
        }
    }

    fn read_timeout(&self, timeout: u64) -> Result<Option<u64>, Errno> {
        if timeout == 0 {
            return Ok(None);
        }
        let mut raw = [0u8; 16];
        self.host.copy_from_user(timeout, &mut raw)?;
        let sec = i64::from_ne_bytes(raw[..8].try_into().expect("8 bytes"));
        let nsec = i64::from_ne_bytes(raw[8..].try_into().expect("8 bytes"));
        Ok(to_ktime(sec, nsec))
    }

    /// `do_io_getevents` + `read_events`.
    fn do_getevents(
        &self,
        ctx_id: u64,
        min_nr: i64,
        nr: i64,
        events: u64,
        until: Option<u64>,
        sigmask: Option<u64>,
    ) -> Result<usize, Errno> {
        let ctx = self.lookup(ctx_id)?;
        if min_nr > nr || min_nr < 0 {
            return Err(Errno::EINVAL);
        }
        let mut got: i64 = 0;
        if until == Some(0) {
            ctx.read_step(min_nr, nr, events, &mut got);
        } else {
            let deadline = until.map(|ns| self.host.now_ns().saturating_add(ns));
            let mut ready = || ctx.read_step(min_nr, nr, events, &mut got);
            // Timeout and signal both end the wait with what was gathered.
            let _: WaitOutcome = self.host.wait(deadline, sigmask, &mut ready);
        }
        if got < 0 {
            Err(Errno((-got) as i32))
        } else {
            Ok(got as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_timespec_converts_without_overflow() {
        assert_eq!(to_ktime(0, 0), Some(0));
        assert_eq!(to_ktime(1, 5), Some(1_000_000_005));
        assert_eq!(to_ktime(-1, 0), None);
        assert_eq!(to_ktime(0, -1), None);
        let last = KTIME_SEC_MAX as i64 - 1;
        // The sum wraps to a negative total: forever.
        assert_eq!(to_ktime(last, i64::MAX), None);
        assert_eq!(to_ktime(0, i64::MAX), Some(i64::MAX as u64));
    }
}
