use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aio_abi::{
    AIO_RING_INCOMPAT_FEATURES, AIO_RING_MAGIC, AioContext, Errno, IoEvent, RING_HEADER_LEN,
    RingHeader,
};

use crate::io_getevents;

/// Reaps completions of one context from its mapped `aio_ring` without a
/// system call, and waits through `io_getevents` only when the ring is empty.
///
/// The protocol is the kernel's (spec §4, §5.3): load `tail` with acquire,
/// copy the events between `head` and `tail`, store `head` with release; the
/// kernel frees a request's slot once `head` has passed its event.
///
/// A view is the context's only consumer: it must not run at the same time
/// as `io_getevents` on the same context, from this or another thread, since
/// the kernel's per-context mutex does not cover user-space readers. If the
/// ring does not look like one this code understands (wrong magic,
/// incompatible features, another header length), the view reaps through
/// `io_getevents` only.
#[derive(Debug)]
pub struct RingView {
    ctx: AioContext,
    ring: Option<NonNull<RingHeader>>,
    nr: u32,
}

// SAFETY: the view only touches the ring through raw pointers with the
// kernel's atomic protocol; moving it to another thread moves the single
// consumer role with it.
unsafe impl Send for RingView {}

impl RingView {
    /// A view of the ring of `ctx`, or a syscall-only reaper if the ring is
    /// not usable.
    ///
    /// # Safety
    /// `ctx` must have been returned by `io_setup` (the kernel's, or a
    /// compatible engine's whose context id is its ring address) and not be
    /// destroyed while the view exists: its ring mapping is read and written.
    pub unsafe fn new(ctx: AioContext) -> RingView {
        let Some(ring) = NonNull::new(ctx as *mut RingHeader) else {
            return RingView::syscall_only(ctx);
        };
        // SAFETY: the caller guarantees the mapping is live; the header is
        // 32 bytes at its start, and these fields are fixed after setup.
        let header = unsafe { ring.as_ptr().read_volatile() };
        let usable = header.magic == AIO_RING_MAGIC
            && header.incompat_features == AIO_RING_INCOMPAT_FEATURES
            && header.header_length == RING_HEADER_LEN
            && header.nr > 0;
        RingView {
            ctx,
            ring: usable.then_some(ring),
            nr: header.nr,
        }
    }

    /// A reaper that always uses `io_getevents` (for example under valgrind,
    /// which does not see the kernel write the ring).
    pub fn syscall_only(ctx: AioContext) -> RingView {
        RingView {
            ctx,
            ring: None,
            nr: 0,
        }
    }

    /// The context this view reaps.
    pub fn context(&self) -> AioContext {
        self.ctx
    }

    /// Whether events are read from the ring (else only through syscalls).
    pub fn is_mapped(&self) -> bool {
        self.ring.is_some()
    }

    /// The ring's capacity in events (`ring_nr`), if mapped.
    pub fn capacity(&self) -> Option<u32> {
        self.ring.map(|_| self.nr)
    }

    fn indices(&self, ring: NonNull<RingHeader>) -> (&AtomicU32, &AtomicU32) {
        let hdr = ring.as_ptr();
        // SAFETY: the mapping is live (constructor contract); `head` and
        // `tail` are aligned u32s that the kernel also accesses atomically.
        unsafe {
            (
                AtomicU32::from_ptr(&raw mut (*hdr).head),
                AtomicU32::from_ptr(&raw mut (*hdr).tail),
            )
        }
    }

    /// Events waiting in the ring now (0 if not mapped).
    pub fn ready(&self) -> usize {
        let Some(ring) = self.ring else { return 0 };
        let (head, tail) = self.indices(ring);
        let head = head.load(Ordering::Relaxed) % self.nr;
        let tail = tail.load(Ordering::Acquire) % self.nr;
        ((tail + self.nr - head) % self.nr) as usize
    }

    /// Copies up to `out.len()` waiting events into `out`, in ring order,
    /// without a system call; returns how many. Returns 0 if the ring is
    /// empty or not mapped.
    pub fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
        let Some(ring) = self.ring else { return 0 };
        let nr = self.nr;
        let (head_ix, tail_ix) = self.indices(ring);
        // Only the consumer writes `head`; the kernel keeps it in range, but
        // reduces it modulo `nr` wherever it reads it, and so do we.
        let head = head_ix.load(Ordering::Relaxed) % nr;
        let tail = tail_ix.load(Ordering::Acquire);
        if tail >= nr {
            // Not a ring this code understands any more: stop reading it.
            self.ring = None;
            return 0;
        }
        let avail = ((tail + nr - head) % nr) as usize;
        let n = avail.min(out.len());
        if n == 0 {
            return 0;
        }
        // SAFETY: the events start right after the 32-byte header and the
        // mapping holds `nr` of them.
        let events =
            unsafe { ring.as_ptr().cast::<u8>().add(RING_HEADER_LEN as usize) }.cast::<IoEvent>();
        let first = n.min((nr - head) as usize);
        // SAFETY: slots head..head+n (mod nr) were published before the
        // acquire load of `tail` and the kernel does not reuse them until we
        // store the new `head`; `out` has room for `n` events and does not
        // overlap the mapping.
        unsafe {
            ptr::copy_nonoverlapping(events.add(head as usize), out.as_mut_ptr(), first);
            ptr::copy_nonoverlapping(events, out.as_mut_ptr().add(first), n - first);
        }
        head_ix.store((head + n as u32) % nr, Ordering::Release);
        n
    }

    /// Gathers at least `min_nr` and at most `out.len()` events: from the
    /// ring first, then by sleeping in `io_getevents` for the rest.
    ///
    /// Returns what was gathered (fewer than `min_nr` after a timeout); an
    /// error only when nothing was gathered.
    pub fn get_events(
        &mut self,
        min_nr: usize,
        out: &mut [IoEvent],
        timeout: Option<Duration>,
    ) -> Result<usize, Errno> {
        let got = self.try_reap(out);
        if got >= min_nr || got == out.len() {
            return Ok(got);
        }
        match io_getevents(self.ctx, min_nr - got, &mut out[got..], timeout) {
            Ok(n) => Ok(got + n),
            Err(_) if got > 0 => Ok(got),
            Err(e) => Err(e),
        }
    }
}
