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
/// The protocol is the kernel's: load `tail` with acquire, copy the events
/// between `head` and `tail`, store `head` with release; the kernel frees a
/// request's slot once `head` has passed its event, and may then write a new
/// event into it.
///
/// A view is the context's only consumer while it reaps: the kernel's
/// per-context lock does not cover user-space readers, so a second reaper
/// at the same time (another view, or `io_getevents` on the same context)
/// takes the same events and lets the kernel overwrite slots this view is
/// still copying. The constructors' `# Safety` sections state the rule. If
/// the ring does not look like one this code understands (wrong magic,
/// incompatible features, another header length), the view reaps through
/// `io_getevents` only.
#[derive(Debug)]
pub struct RingView {
    ctx: AioContext,
    ring: Option<NonNull<RingHeader>>,
    nr: u32,
}

// SAFETY: the ring is a mapping of the whole process, valid from any thread;
// the constructors' contracts are about which reapers run at the same time,
// not on which thread, so moving the view moves the consumer role with it.
// The view is not `Sync`: its reaping methods take `&mut self`.
unsafe impl Send for RingView {}

impl RingView {
    /// A view of the ring of `ctx`, or a syscall-only reaper if the ring is
    /// not usable.
    ///
    /// # Safety
    /// The view reads and writes the memory at `ctx` as an `aio_ring`:
    ///
    /// - Mapping: `ctx` is a context returned by `io_setup` in this process
    ///   (the kernel's, or an engine's whose context id is the address of a
    ///   ring with the kernel's layout holding `nr` events after the
    ///   header), and the ring stays mapped at that address (no
    ///   `io_destroy` of `ctx`, no `munmap` or `mremap` of the ring) for as
    ///   long as [`ready`](RingView::ready),
    ///   [`try_reap`](RingView::try_reap) or
    ///   [`get_events`](RingView::get_events) is called. Dropping the view
    ///   afterwards is fine.
    /// - Single consumer: while `try_reap` or `get_events` runs, nothing
    ///   else reaps `ctx`: no other `RingView` of it, no `io_getevents` or
    ///   `io_pgetevents` on it, in any thread, and no process that shares the
    ///   mapping (a fork child inherits the ring, shared with its parent).
    ///   Reapers that run between this view's calls are allowed; the events
    ///   they take are not seen here.
    pub unsafe fn new(ctx: AioContext) -> RingView {
        let Some(ring) = NonNull::new(ctx as *mut RingHeader) else {
            // SAFETY: the single-consumer rule is part of this contract.
            return unsafe { RingView::syscall_only(ctx) };
        };
        let hdr = ring.as_ptr();
        // SAFETY: the caller guarantees the mapping is live and starts with
        // the 32-byte header; these four fields are written before io_setup
        // returns and never after, so reading them races with nothing (the
        // kernel-written `head` and `tail` are not read here).
        let (magic, incompat, header_length, nr) = unsafe {
            (
                (&raw const (*hdr).magic).read_volatile(),
                (&raw const (*hdr).incompat_features).read_volatile(),
                (&raw const (*hdr).header_length).read_volatile(),
                (&raw const (*hdr).nr).read_volatile(),
            )
        };
        let usable = magic == AIO_RING_MAGIC
            && incompat == AIO_RING_INCOMPAT_FEATURES
            && header_length == RING_HEADER_LEN
            && nr > 0;
        RingView {
            ctx,
            ring: usable.then_some(ring),
            nr,
        }
    }

    /// A reaper that always uses `io_getevents` (for example under valgrind,
    /// which does not see the kernel write the ring). It never reads memory
    /// at `ctx`; the kernel validates `ctx` on every call.
    ///
    /// # Safety
    /// The single-consumer rule of [`RingView::new`]: while
    /// [`get_events`](RingView::get_events) runs, no `RingView` of `ctx`
    /// reaps, in any thread.
    pub unsafe fn syscall_only(ctx: AioContext) -> RingView {
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
        // SAFETY: the mapping is live while `self` is used (constructor
        // contract); `head` and `tail` are aligned u32s, which the kernel
        // reads and writes only with single 32-bit loads and stores.
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
        // SAFETY: the events start right after the 32-byte header, within
        // the mapping, which holds `nr` of them (constructor contract).
        let events =
            unsafe { ring.as_ptr().cast::<u8>().add(RING_HEADER_LEN as usize) }.cast::<IoEvent>();
        let first = n.min((nr - head) as usize);
        // SAFETY: slots head..head+n (mod nr) were published before the
        // acquire load of `tail`, and the kernel does not reuse them until
        // `head` passes them, which only this view does while it reaps
        // (single-consumer rule); `head + first <= nr` and `n - first <= tail`
        // keep both copies inside the ring; `out` has room for `n` events and
        // is not part of the mapping (no reference into it is ever made).
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
        // SAFETY: this view is the reaper of `ctx` for the duration of the
        // call (constructor contract), and it is not reading the ring now.
        let waited = unsafe { io_getevents(self.ctx, min_nr - got, &mut out[got..], timeout) };
        match waited {
            Ok(n) => Ok(got + n),
            Err(_) if got > 0 => Ok(got),
            Err(e) => Err(e),
        }
    }
}
