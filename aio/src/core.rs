//! The completion machinery, independent of how callers wait: a slab of
//! request slots keyed by `aio_data`, the submission queue with
//! back-pressure, and event processing. The blocking front-end
//! ([`Context`](crate::Context)) drives it with `drive`; an async front-end
//! can drive it from an eventfd readiness callback with `submit_some` and
//! `reap_nonblocking` instead.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::task::Waker;

use aio_abi::{Errno, IoEvent, IoVec, Iocb, IocbFlags, Opcode, RwFlags};
use aio_kernel::engine::process_id;

use crate::align;
use crate::driver::{ClassCache, Drivers, Route};
use crate::erased::Erased;
use crate::error::{explained, request_error, setup_error};
use crate::op::Operation;

/// Slots are allocated in boxed chunks so that a slot (and the iocb inside
/// it, whose address the kernel reports and `io_cancel` needs) never moves.
const CHUNK: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// On the free list.
    Free,
    /// Prepared and queued, not yet handed to the kernel.
    Queued,
    /// Accepted by `io_submit`; the kernel may use its memory.
    InFlight,
    /// Finished (event processed, refused, or failed synchronously); the
    /// kernel no longer touches its memory.
    Done,
}

struct Slot {
    iocb: Iocb,
    /// The segments of a vectored request; the kernel copies them during
    /// `io_submit`, but they are kept until completion anyway. The Vec's
    /// capacity is reused by later requests.
    iovs: Vec<IoVec>,
    /// The buffers; owned by the slot from push until the result is taken
    /// or, for a detached ticket, until the event arrives.
    keep: Erased,
    state: State,
    res: i64,
    /// The error came from `io_submit` itself, not from an event.
    synchronous: bool,
    /// Refused before submission, with this error.
    early: Option<io::Error>,
    /// The O_DIRECT alignment check has run.
    checked: bool,
    /// Names the request to its ticket ([`Key`]); changes when the slot
    /// is released.
    generation: u32,
    /// Names one submission of the request to a driver (`aio_data` holds
    /// it with the slot index): changes at every push and every re-route,
    /// so that only the event of the submission in flight completes the
    /// slot, never a stale or duplicated one of an earlier submission.
    epoch: u32,
    /// The ticket was dropped: release the slot when it is done.
    detached: bool,
    /// The scope the request belongs to (0: none).
    scope: u64,
    /// The driver it went to.
    route: Route,
    /// The device of its file, for `Auto`'s page-cache bookkeeping.
    dev: u64,
    /// Bytes a short `RWF_NOWAIT` read got from the kernel before the
    /// engine was sent the rest; added to the engine's result.
    carried: i64,
    /// The async front-end's task waiting for the request.
    waker: Option<Waker>,
    /// In flight in the kernel without `IOCB_FLAG_RESFD` (see [`Quiet`]).
    quiet: bool,
    /// Submitted to the kernel with `RWF_NOWAIT`, whose event sent the
    /// request (or its rest) to the engine: queued again, but submitted as
    /// far as its caller knows, so it runs whatever happens to the queue.
    continued: bool,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            iocb: Iocb::default(),
            iovs: Vec::new(),
            keep: Erased::empty(),
            state: State::Free,
            res: 0,
            synchronous: false,
            early: None,
            checked: false,
            generation: 0,
            epoch: 0,
            detached: false,
            scope: 0,
            route: Route::Unrouted,
            dev: 0,
            carried: 0,
            waker: None,
            quiet: false,
            continued: false,
        }
    }
}

struct Slab {
    chunks: Vec<Box<[Slot]>>,
    free: Vec<u32>,
}

impl Slab {
    fn new() -> Slab {
        Slab {
            chunks: Vec::new(),
            free: Vec::new(),
        }
    }

    fn get(&mut self, idx: u32) -> Option<&mut Slot> {
        let idx = idx as usize;
        self.chunks.get_mut(idx / CHUNK)?.get_mut(idx % CHUNK)
    }

    fn slot(&mut self, idx: u32) -> &mut Slot {
        self.get(idx).expect("slot index from this slab")
    }

    /// The slot the next push will use, left on the free list so that a
    /// panic while preparing the request loses nothing.
    fn peek_free(&mut self) -> u32 {
        if self.free.is_empty() {
            self.grow();
        }
        *self.free.last().expect("just refilled")
    }

    fn grow(&mut self) {
        let base = self.chunks.len() * CHUNK;
        self.chunks.push((0..CHUNK).map(|_| Slot::new()).collect());
        self.free
            .extend((base..base + CHUNK).rev().map(|i| i as u32));
    }

    fn len(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Returns a finished slot to the free list and hands back what it
    /// kept, for the caller to drop once the slab is consistent (a
    /// buffer's Drop may panic or, in the async front-end, must not run
    /// under the core's lock).
    #[must_use]
    fn release(&mut self, idx: u32) -> Erased {
        let slot = self.slot(idx);
        debug_assert_eq!(slot.state, State::Done);
        slot.state = State::Free;
        slot.generation = slot.generation.wrapping_add(1);
        slot.early = None;
        slot.detached = false;
        slot.scope = 0;
        slot.waker = None;
        let keep = mem::replace(&mut slot.keep, Erased::empty());
        self.free.push(idx);
        keep
    }
}

/// Counters that show how requests reached the kernel and came back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests pushed.
    pub requests: u64,
    /// Requests accepted by `io_submit`.
    pub submitted: u64,
    /// `io_submit` calls (to either driver; see `engine_submit_calls`).
    pub submit_calls: u64,
    /// `io_getevents` calls (to either driver; see
    /// `engine_getevents_calls`).
    pub getevents_calls: u64,
    /// Reaps that found events in the ring without a system call.
    pub ring_reaps: u64,
    /// Events processed (from the ring or from `io_getevents`).
    pub completions: u64,
    /// Of `submitted`, the requests the userspace engine ran
    /// ([`Driver::Engine`](crate::Driver::Engine), or
    /// [`Driver::Auto`](crate::Driver::Auto) for buffered writes, pipes,
    /// sockets and page-cache misses).
    pub engine_submitted: u64,
    /// Of `submit_calls`, the calls to the userspace engine: function
    /// calls in this process, not system calls.
    pub engine_submit_calls: u64,
    /// Of `getevents_calls`, the waits on the userspace engine: function
    /// calls in this process, not system calls.
    pub engine_getevents_calls: u64,
    /// Buffered reads (and writes) that `Auto` tried in the kernel with
    /// `RWF_NOWAIT` and handed, in whole or in part, to the engine because
    /// the kernel would have waited (data not in the page cache, a write
    /// that must allocate or is throttled).
    pub nowait_retries: u64,
    /// Sleeps on `Auto`'s eventfd, when both drivers had requests in
    /// flight (counted apart from `getevents_calls`).
    pub eventfd_waits: u64,
    /// Of `submitted`, the requests the tokio front-end handed to the
    /// kernel without asking it to signal its eventfd, because they were
    /// expected to complete inside `io_submit` (and were reaped right
    /// after it).
    pub quiet_submitted: u64,
    /// Passes of the tokio driver that found a quiet request still in
    /// flight (it did not complete inside `io_submit` after all), and so
    /// came back to poll the ring instead of sleeping on the eventfd.
    pub quiet_polls: u64,
    /// Events that named no request in flight (a stale or duplicated
    /// event, or one the context did not submit), ignored.
    pub foreign_events: u64,
}

impl std::ops::Sub for Stats {
    type Output = Stats;

    /// The counts between two snapshots (`later - earlier`).
    fn sub(self, earlier: Stats) -> Stats {
        Stats {
            requests: self.requests - earlier.requests,
            submitted: self.submitted - earlier.submitted,
            submit_calls: self.submit_calls - earlier.submit_calls,
            getevents_calls: self.getevents_calls - earlier.getevents_calls,
            ring_reaps: self.ring_reaps - earlier.ring_reaps,
            completions: self.completions - earlier.completions,
            engine_submitted: self.engine_submitted - earlier.engine_submitted,
            engine_submit_calls: self.engine_submit_calls - earlier.engine_submit_calls,
            engine_getevents_calls: self.engine_getevents_calls - earlier.engine_getevents_calls,
            nowait_retries: self.nowait_retries - earlier.nowait_retries,
            eventfd_waits: self.eventfd_waits - earlier.eventfd_waits,
            quiet_submitted: self.quiet_submitted - earlier.quiet_submitted,
            quiet_polls: self.quiet_polls - earlier.quiet_polls,
            foreign_events: self.foreign_events - earlier.foreign_events,
        }
    }
}

impl std::ops::Add for Stats {
    type Output = Stats;

    /// The counts of two contexts together.
    fn add(self, other: Stats) -> Stats {
        Stats {
            requests: self.requests + other.requests,
            submitted: self.submitted + other.submitted,
            submit_calls: self.submit_calls + other.submit_calls,
            getevents_calls: self.getevents_calls + other.getevents_calls,
            ring_reaps: self.ring_reaps + other.ring_reaps,
            completions: self.completions + other.completions,
            engine_submitted: self.engine_submitted + other.engine_submitted,
            engine_submit_calls: self.engine_submit_calls + other.engine_submit_calls,
            engine_getevents_calls: self.engine_getevents_calls + other.engine_getevents_calls,
            nowait_retries: self.nowait_retries + other.nowait_retries,
            eventfd_waits: self.eventfd_waits + other.eventfd_waits,
            quiet_submitted: self.quiet_submitted + other.quiet_submitted,
            quiet_polls: self.quiet_polls + other.quiet_polls,
            foreign_events: self.foreign_events + other.foreign_events,
        }
    }
}

/// Kernel reads and writes without `IOCB_FLAG_RESFD`, for a front-end that
/// reaps the ring right after each `io_submit` and sleeps on the eventfd
/// only for what is still in flight (the tokio driver). Where requests
/// complete inside `io_submit` (page-cached and `RWF_NOWAIT` reads, zram),
/// the kernel's signal per completion costs an eventfd write, a wake-up of
/// the reactor and a trip of the driver task, for nothing: 10-15% of the
/// IOPS of 4 KiB reads from zram at depth 32.
/// A request expected to complete inside `io_submit` (see [`Inline`])
/// goes quiet; one that did not (the guess was wrong) is found by
/// [`Core::quiet_pending`], and the front-end polls the ring until it is
/// done instead of sleeping.
struct Quiet {
    /// Quiet requests not yet reaped.
    in_flight: usize,
}

impl Quiet {
    /// How long a streak must be before requests go quiet: a device that
    /// completes some requests later costs a poll of the ring per miss.
    const TRUST_AFTER: u32 = 1024;

    /// Whether a kernel read or write on `route` may go without a signal.
    /// Buffered reads and writes with `RWF_NOWAIT` never wait: they are done
    /// (or refused) inside `io_submit`.
    fn trusts(route: Route, inline: Inline) -> bool {
        route == Route::KernelNowait || inline.streak >= Self::TRUST_AFTER
    }
}

/// Whether the drivers complete this context's requests inside
/// `io_submit` (page cache, zram, the engine's inline reads) or later (a
/// disk, the engine's workers), learnt from the rings' tails before and
/// after each call, where the rings are read.
#[derive(Clone, Copy, Default)]
struct Inline {
    /// Requests in a row (of either driver) seen to complete inside their
    /// `io_submit`.
    streak: u32,
}

impl Inline {
    /// Learns from one `io_submit` that a driver accepted `accepted`
    /// requests of, during which `landed` events reached the ring, with
    /// or without (`busy`) older requests in flight that may have
    /// completed meanwhile.
    fn learn(&mut self, accepted: usize, landed: usize, busy: bool) {
        if landed < accepted {
            // Some request of this call completes later.
            self.streak = 0;
        } else if !busy {
            self.streak = self.streak.saturating_add(accepted as u32);
        }
    }
}

/// What an open scope has in the slab.
struct ScopeCount {
    id: u64,
    /// Requests queued or in flight.
    pending: usize,
    /// Slots not yet released (pending, or done with the ticket unused).
    held: usize,
}

/// What [`Core::submit_some`] left behind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Submitted {
    /// The queue is empty.
    All,
    /// The ring is full: reap before submitting the rest.
    Full,
}

/// A request's handle inside the core: slot index and generation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Key {
    idx: u32,
    generation: u32,
}

/// The `aio_data` of one submission of a slot: its index and epoch.
fn event_data(idx: u32, epoch: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(idx)
}

/// The slot index and epoch an event's `aio_data` names.
fn event_slot(data: u64) -> (u32, u32) {
    (data as u32, (data >> 32) as u32)
}

pub(crate) struct Core {
    drivers: Drivers,
    slab: Slab,
    queue: VecDeque<u32>,
    /// Scratch for `io_submit`'s pointer arrays, one per driver, and the
    /// slots they point into.
    ptrs: [Vec<*mut Iocb>; 2],
    batch: [Vec<u32>; 2],
    /// A request went back to the queue after its event (a page-cache
    /// miss of `Auto`): it must be submitted again.
    requeued: bool,
    /// Scratch for reaped events.
    events: Box<[IoEvent]>,
    /// Requests in flight in both drivers.
    in_flight: usize,
    /// The most requests handed to the kernel at once (the queue depth).
    limit: usize,
    resfd: Option<RawFd>,
    check_direct: bool,
    stats: Stats,
    /// Open scopes.
    scopes: Vec<ScopeCount>,
    next_scope: u64,
    /// Async front-end: buffers of detached requests are moved to
    /// `graveyard` instead of being dropped under its lock.
    defer_drops: bool,
    graveyard: Vec<Erased>,
    /// Wakers of requests that finished, to be woken outside the lock.
    wakers: Vec<Waker>,
    /// Set by [`Core::quiet_completions`].
    quiet: Option<Quiet>,
    inline: Inline,
    /// See [`ContextBuilder::submit_batch`](crate::ContextBuilder::submit_batch); 0: off.
    submit_batch: usize,
    /// The process that created the context (see [`Core::forked`]).
    pid: u32,
    /// This is a fork child of `pid`: the drivers' contexts are the
    /// parent's, and nothing of them is touched any more.
    forked: bool,
}

// SAFETY: `ptrs` only holds addresses during a submission; the slab (and
// the deferred buffers and wakers) holds values that are `Send` (owned
// operations require `Send + 'static`, in the tokio front-end too, which
// has no scopes) except while a scope borrows the context, which pins the
// context to the scope's thread and releases those slots before the scope
// ends.
unsafe impl Send for Core {}

impl Core {
    pub(crate) fn new(
        drivers: Drivers,
        depth: usize,
        check_direct: bool,
        submit_batch: usize,
    ) -> Core {
        // Preallocate the slots one queue depth needs.
        let mut slab = Slab::new();
        while slab.len() < depth {
            slab.grow();
        }
        let resfd = drivers.resfd();
        Core {
            drivers,
            slab,
            queue: VecDeque::with_capacity(depth),
            ptrs: [Vec::with_capacity(depth), Vec::with_capacity(depth)],
            batch: [Vec::with_capacity(depth), Vec::with_capacity(depth)],
            requeued: false,
            events: vec![IoEvent::default(); depth.max(1)].into_boxed_slice(),
            in_flight: 0,
            limit: depth.max(1),
            resfd,
            check_direct,
            stats: Stats::default(),
            scopes: Vec::new(),
            next_scope: 1,
            defer_drops: false,
            graveyard: Vec::new(),
            wakers: Vec::new(),
            quiet: None,
            inline: Inline::default(),
            submit_batch,
            pid: process_id(),
            forked: false,
        }
    }

    /// Whether this process is a fork child of the one that created the
    /// context. The first time it finds so, it lets go of the drivers'
    /// contexts without touching them (Linux gives a child none of its
    /// parent's AIO contexts, and the kernel ring is shared with the
    /// parent, whose completions a child's reap would steal) and finishes
    /// every queued and in-flight request with an error; requests pushed
    /// later fail the same way when submitted. The buffers the child gets
    /// back are its own copies, which no driver writes.
    fn forked(&mut self) -> bool {
        if self.forked {
            return true;
        }
        if process_id() == self.pid {
            return false;
        }
        self.forked = true;
        self.drivers.disown();
        self.in_flight = 0;
        if let Some(q) = self.quiet.as_mut() {
            q.in_flight = 0;
        }
        for idx in 0..self.slab.len() as u32 {
            if self.slab.slot(idx).state == State::InFlight {
                self.refuse(idx, fork_error(self.pid));
            }
        }
        self.queue.clear();
        for idx in 0..self.slab.len() as u32 {
            if self.slab.slot(idx).state == State::Queued {
                self.refuse(idx, fork_error(self.pid));
            }
        }
        true
    }

    /// Finishes a request that never ran (or whose run this process can
    /// no longer see) with `error`.
    fn refuse(&mut self, idx: u32, error: io::Error) {
        let errno = error.raw_os_error().unwrap_or(libc::EINVAL);
        self.slab.slot(idx).early = Some(error);
        self.finish(idx, -i64::from(errno), true);
    }

    /// Lets kernel requests that are expected to complete inside
    /// `io_submit` go without signalling the eventfd (see [`Quiet`]). The
    /// caller reaps the ring after every submission and, while
    /// [`Core::quiet_pending`], polls it rather than sleeping on the
    /// eventfd. Only for a context whose eventfd nobody else reads.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn quiet_completions(&mut self) {
        // Without the kernel's ring, what completed inside io_submit is
        // seen only by a system call: signals are cheaper than polling.
        if self.resfd.is_some() && self.drivers.ready(0).is_some() {
            self.quiet = Some(Quiet { in_flight: 0 });
        }
    }

    /// Quiet requests are in flight: nothing will signal the eventfd when
    /// they complete.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn quiet_pending(&self) -> bool {
        self.quiet.as_ref().is_some_and(|q| q.in_flight > 0)
    }

    /// Counts a poll of the ring made for [`Core::quiet_pending`] requests.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn count_quiet_poll(&mut self) {
        self.stats.quiet_polls += 1;
    }

    /// Keeps buffer drops for [`Core::take_deferred`] instead of running
    /// them inside the core's methods.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn defer_drops(&mut self) {
        self.defer_drops = true;
    }

    /// Frees a finished slot, dropping its buffers now or deferring them.
    fn release(&mut self, idx: u32) {
        let keep = self.free(idx);
        if self.defer_drops && !keep.is_empty() {
            self.graveyard.push(keep);
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(crate) fn kernel_unavailable(&self) -> Option<&crate::Error> {
        self.drivers.kernel_unavailable()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn reaps_ring(&self) -> bool {
        self.drivers.reaps_ring()
    }

    /// Whether a request went back to the queue since the last call (see
    /// `requeued`): the caller must submit again.
    pub(crate) fn take_requeued(&mut self) -> bool {
        mem::take(&mut self.requeued)
    }

    /// Prepares a request in a free slot and queues it.
    pub(crate) fn push<K>(
        &mut self,
        prepare: impl FnOnce(&mut Vec<IoVec>) -> (Iocb, K),
        scope: u64,
    ) -> Key {
        let idx = self.slab.peek_free();
        let slot = self.slab.slot(idx);
        slot.iovs.clear();
        // Runs the buffers' code, which may panic: the slot is still free.
        let (mut iocb, keep) = prepare(&mut slot.iovs);
        self.slab.free.pop();
        let slot = self.slab.slot(idx);
        let key = Key {
            idx,
            generation: slot.generation,
        };
        if iocb.aio_lio_opcode.is_vectored() {
            if let [one] = slot.iovs[..] {
                // One segment goes as the plain command (libaio's
                // io_prep_pread): Linux then takes the buffer as it is
                // (import_ubuf) instead of copying an iovec array from
                // user memory first (copy_iovec_from_user, 1-2% of the
                // CPU of a 4 KiB read on zram0). Same semantics.
                iocb.aio_lio_opcode = iocb.aio_lio_opcode.unvectored();
                iocb.aio_buf = one.iov_base;
                iocb.aio_nbytes = one.iov_len;
            } else {
                iocb.aio_buf = slot.iovs.as_ptr() as u64;
                iocb.aio_nbytes = slot.iovs.len() as u64;
            }
        }
        slot.epoch = slot.epoch.wrapping_add(1);
        iocb.aio_data = event_data(idx, slot.epoch);
        if let Some(fd) = self.resfd {
            iocb = iocb.with_eventfd(fd);
        }
        slot.iocb = iocb;
        slot.keep.put(keep);
        slot.scope = scope;
        slot.detached = false;
        slot.synchronous = false;
        slot.early = None;
        slot.checked = !self.check_direct;
        slot.route = Route::Unrouted;
        slot.carried = 0;
        slot.quiet = false;
        slot.continued = false;
        slot.state = State::Queued;
        self.stats.requests += 1;
        self.queue.push_back(idx);
        if scope != 0 {
            if let Some(entry) = self.scope_entry(scope) {
                entry.pending += 1;
                entry.held += 1;
            }
        }
        key
    }

    /// Refuses, among the next `room` queued requests, the reads and writes
    /// that `O_DIRECT` would reject with a bare `EINVAL`: they finish with
    /// an error naming the alignment and never reach the kernel. Checked
    /// here rather than at push so that one `fcntl` serves a whole batch on
    /// the same descriptor.
    fn refuse_misaligned(&mut self, room: usize) {
        let mut cache = align::DirectCache::default();
        let (mut i, mut kept) = (0, 0);
        while kept < room && i < self.queue.len() {
            let idx = self.queue[i];
            let slot = self.slab.slot(idx);
            let op = slot.iocb.aio_lio_opcode;
            if !slot.checked && (op.is_read() || op.is_write()) {
                slot.checked = true;
                let (fd, offset) = (slot.iocb.fd(), slot.iocb.aio_offset);
                if let Err(e) = cache.check(fd, offset, &slot.iovs) {
                    slot.early = Some(e);
                    self.queue.remove(i);
                    self.finish(idx, Errno::EINVAL.as_res(), true);
                    // finish may have run a buffer's Drop, which could have
                    // reopened the descriptor number: forget what we knew.
                    cache = align::DirectCache::default();
                    continue;
                }
            }
            i += 1;
            kept += 1;
        }
    }

    fn scope_entry(&mut self, scope: u64) -> Option<&mut ScopeCount> {
        self.scopes.iter_mut().find(|s| s.id == scope)
    }

    /// A request of `scope` is done.
    fn scope_done(&mut self, scope: u64) {
        if let Some(entry) = self.scope_entry(scope) {
            entry.pending -= 1;
        }
    }

    /// Returns a finished slot to the free list (see [`Slab::release`]),
    /// counting it off its scope.
    #[must_use]
    fn free(&mut self, idx: u32) -> Erased {
        let scope = self.slab.slot(idx).scope;
        if scope != 0 {
            if let Some(entry) = self.scope_entry(scope) {
                entry.held -= 1;
            }
        }
        self.slab.release(idx)
    }

    /// Marks a slot done; releases it if its ticket was dropped.
    fn finish(&mut self, idx: u32, res: i64, synchronous: bool) {
        let slot = self.slab.slot(idx);
        slot.state = State::Done;
        slot.res = res;
        slot.synchronous = synchronous;
        let (scope, detached) = (slot.scope, slot.detached);
        if let Some(w) = slot.waker.take() {
            self.wakers.push(w);
        }
        if scope != 0 {
            self.scope_done(scope);
        }
        if detached {
            self.release(idx);
        }
    }

    /// Hands queued requests to the kernel, as many per `io_submit` as the
    /// ring has room for, without blocking. A request `io_submit` refuses
    /// is finished with that error; `EAGAIN` or a short count with
    /// requests in flight is back-pressure.
    pub(crate) fn submit_some(&mut self) -> Submitted {
        if self.forked() {
            while let Some(idx) = self.queue.pop_front() {
                self.refuse(idx, fork_error(self.pid));
            }
            return Submitted::All;
        }
        loop {
            if self.queue.is_empty() {
                return Submitted::All;
            }
            let room = self.limit.saturating_sub(self.in_flight);
            if room == 0 {
                return Submitted::Full;
            }
            if self.check_direct {
                self.refuse_misaligned(room);
                if self.queue.is_empty() {
                    return Submitted::All;
                }
            }
            let mut n = room.min(self.queue.len());
            if self.submit_batch > 0 && self.inline.streak == 0 {
                // Requests complete after io_submit returns (a device):
                // calls of `submit_batch` or a little more, so that the
                // device starts on the first while the rest are prepared.
                let calls = (n / self.submit_batch).max(1);
                n = n.div_ceil(calls);
            }
            let mut classes = ClassCache::default();
            for side in 0..2 {
                self.ptrs[side].clear();
                self.batch[side].clear();
            }
            for i in 0..n {
                let idx = self.queue[i];
                let slot = self.slab.slot(idx);
                if slot.route == Route::Unrouted {
                    let len = if slot.iocb.aio_lio_opcode.is_vectored() {
                        slot.iovs.iter().map(|v| v.iov_len).sum()
                    } else {
                        slot.iocb.aio_nbytes
                    };
                    (slot.route, slot.dev) = self.drivers.route(&mut slot.iocb, len, &mut classes);
                }
                let side = slot.route.side();
                // Only the tokio front-end ever leaves the signal off; other
                // contexts keep the flag `push` set.
                if self.quiet.is_some() {
                    let op = slot.iocb.aio_lio_opcode;
                    // Polls and syncs complete later by nature.
                    slot.quiet = side == 0
                        && (op.is_read() || op.is_write())
                        && Quiet::trusts(slot.route, self.inline);
                    let flags = slot.iocb.aio_flags;
                    slot.iocb.aio_flags = if slot.quiet {
                        flags.difference(IocbFlags::RESFD)
                    } else {
                        flags.union(IocbFlags::RESFD)
                    };
                }
                let iocb: *mut Iocb = &mut slot.iocb;
                self.ptrs[side].push(iocb);
                self.batch[side].push(idx);
            }
            let mut progress = false;
            for side in 0..2 {
                if !self.ptrs[side].is_empty() {
                    progress |= self.submit_side(side);
                }
            }
            // Out of the first `n`, keep in order those still queued.
            let mut kept = 0;
            for i in 0..n {
                let idx = self.queue[i];
                if self.slab.slot(idx).state == State::Queued {
                    self.queue[kept] = idx;
                    kept += 1;
                }
            }
            self.queue.drain(kept..n);
            if !progress {
                return Submitted::Full;
            }
        }
    }

    /// One `io_submit` of the batch prepared for one driver; whether it
    /// made progress (accepted, refused or rerouted a request).
    fn submit_side(&mut self, side: usize) -> bool {
        // Events in the ring before the call, to tell afterwards whether
        // the requests completed inside it.
        let ready_before = self.drivers.ready(side);
        let busy = self.drivers.in_flight[side] > 0;
        let backend = match self.drivers.backend(side) {
            Ok(b) => b,
            Err(e) => {
                // The engine's context could not be created.
                for i in 0..self.batch[side].len() {
                    let idx = self.batch[side][i];
                    self.slab.slot(idx).early = Some(setup_error(self.limit as u32, e));
                    self.finish(idx, e.as_res(), true);
                }
                return true;
            }
        };
        self.stats.submit_calls += 1;
        if side == 1 {
            self.stats.engine_submit_calls += 1;
        }
        // SAFETY: each pointer is the iocb of a queued slot, in a boxed
        // chunk that neither moves nor is freed while the core lives.
        // What the iocbs point at (the slot's iovec array, the buffers in
        // the slot's `keep`, or buffers borrowed by a scope that waits for
        // its requests) is left untouched until the slot's event has been
        // processed.
        let result = unsafe { backend.submit(&self.ptrs[side]) };
        match result {
            Ok(k) if k > 0 => {
                let mut quiet = 0;
                for i in 0..k {
                    let idx = self.batch[side][i];
                    let slot = self.slab.slot(idx);
                    slot.state = State::InFlight;
                    quiet += usize::from(slot.quiet);
                }
                if let (Some(before), Some(after)) = (ready_before, self.drivers.ready(side)) {
                    self.inline.learn(k, after.saturating_sub(before), busy);
                }
                if let Some(q) = self.quiet.as_mut() {
                    q.in_flight += quiet;
                    self.stats.quiet_submitted += quiet as u64;
                }
                self.in_flight += k;
                self.drivers.in_flight[side] += k;
                self.stats.submitted += k as u64;
                if side == 1 {
                    self.stats.engine_submitted += k as u64;
                }
                true
            }
            // Back-pressure: the rest waits for completions.
            Ok(_) | Err(Errno::EAGAIN) if self.drivers.in_flight[side] > 0 => false,
            refused => {
                let e = refused.err().unwrap_or(Errno::EAGAIN);
                let idx = self.batch[side][0];
                let slot = self.slab.slot(idx);
                if slot.route == Route::KernelNowait
                    && self
                        .drivers
                        .nowait_refused(slot.dev, slot.iocb.aio_lio_opcode.is_write(), e)
                {
                    // This filesystem does not do RWF_NOWAIT: route this
                    // batch's reads again, knowing that.
                    for i in 0..self.batch[side].len() {
                        let slot = self.slab.slot(self.batch[side][i]);
                        if slot.route == Route::KernelNowait {
                            slot.route = Route::Unrouted;
                            slot.iocb.aio_rw_flags =
                                slot.iocb.aio_rw_flags.difference(RwFlags::NOWAIT);
                        }
                    }
                } else {
                    self.finish(idx, e.as_res(), true);
                }
                true
            }
        }
    }

    /// Applies the first `n` events of the scratch array.
    fn process(&mut self, n: usize) {
        self.stats.completions += n as u64;
        // First record every result (no foreign code runs) ...
        for i in 0..n {
            let ev = self.events[i];
            let (idx, epoch) = event_slot(ev.data);
            let Some(slot) = self.slab.get(idx) else {
                self.stats.foreign_events += 1;
                continue;
            };
            if slot.state != State::InFlight || slot.epoch != epoch {
                // Not the submission in flight: never let it complete the
                // slot, whose memory a driver may still be using.
                self.stats.foreign_events += 1;
                continue;
            }
            self.in_flight -= 1;
            self.drivers.in_flight[slot.route.side()] -= 1;
            if slot.quiet {
                slot.quiet = false;
                if let Some(q) = self.quiet.as_mut() {
                    q.in_flight -= 1;
                }
            }
            if slot.route == Route::KernelNowait {
                let (dev, write) = (slot.dev, slot.iocb.aio_lio_opcode.is_write());
                if ev.res == Errno::EOPNOTSUPP.as_res() {
                    // Refused by the filesystem's write_iter (ext4's
                    // buffered writes) rather than at io_submit.
                    self.drivers.nowait_refused(dev, write, Errno::EOPNOTSUPP);
                }
                let miss = continue_on_engine(slot, ev.res);
                self.drivers.nowait_outcome(dev, write, !miss);
                if miss {
                    self.stats.nowait_retries += 1;
                    self.queue.push_front(idx);
                    self.requeued = true;
                    continue;
                }
            }
            slot.state = State::Done;
            slot.res = match ev.res {
                // Data came before the error: a short read.
                e if e < 0 && slot.carried > 0 => slot.carried,
                e if e < 0 => e,
                n => n + slot.carried,
            };
            let scope = slot.scope;
            if let Some(w) = slot.waker.take() {
                self.wakers.push(w);
            }
            if scope != 0 {
                self.scope_done(scope);
            }
        }
        // ... then drop the buffers of detached requests, whose Drop may
        // run arbitrary code.
        for i in 0..n {
            let (idx, epoch) = event_slot(self.events[i].data);
            if let Some(slot) = self.slab.get(idx) {
                if slot.detached && slot.state == State::Done && slot.epoch == epoch {
                    self.release(idx);
                }
            }
        }
    }

    /// Processes the events waiting in the ring, without a system call.
    pub(crate) fn reap_ring(&mut self) -> usize {
        if self.forked() {
            return 0;
        }
        let mut total = 0;
        loop {
            let n = self.drivers.try_reap(&mut self.events);
            if n == 0 {
                return total;
            }
            self.stats.ring_reaps += 1;
            self.process(n);
            total += n;
        }
    }

    /// Sleeps in the drivers until some event may be ready, and
    /// processes what that returned.
    fn reap_sleep(&mut self) -> Result<usize, Errno> {
        if self.forked() {
            return Ok(0);
        }
        let n = self.drivers.wait(&mut self.events, &mut self.stats)?;
        self.process(n);
        Ok(n)
    }

    /// Processes whatever has completed, without sleeping (from the rings,
    /// or with a zero-timeout `io_getevents` from a driver that does not
    /// reap its ring).
    pub(crate) fn reap_nonblocking(&mut self) -> usize {
        let mut total = self.reap_ring();
        if self.in_flight > 0 && !self.forked {
            let n = self.drivers.poll_syscall(&mut self.events, &mut self.stats);
            self.process(n);
            total += n;
        }
        total
    }

    /// Makes progress until `done` holds: submits what fits, reaps the
    /// ring, and sleeps in `io_getevents` for one event only when nothing
    /// else can satisfy `done`. `done` is checked before each of these.
    pub(crate) fn drive(&mut self, mut done: impl FnMut(&Core) -> bool) -> Result<(), Errno> {
        loop {
            if done(self) {
                return Ok(());
            }
            self.submit_some();
            if done(self) {
                return Ok(());
            }
            if self.reap_ring() > 0 {
                continue;
            }
            if self.in_flight == 0 {
                if self.queue.is_empty() {
                    // Nothing queued or in flight and still not done: the
                    // condition can never hold.
                    return Err(Errno::EINVAL);
                }
                continue;
            }
            match self.reap_sleep() {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether a request tried with `RWF_NOWAIT` awaits its event, which
    /// may send it on to the engine.
    fn nowait_in_flight(&self) -> bool {
        self.slab
            .chunks
            .iter()
            .flat_map(|c| c.iter())
            .any(|slot| slot.state == State::InFlight && slot.route == Route::KernelNowait)
    }

    pub(crate) fn is_done(&self, key: Key) -> bool {
        let idx = key.idx as usize;
        let slot = &self.slab.chunks[idx / CHUNK][idx % CHUNK];
        slot.generation == key.generation && slot.state == State::Done
    }

    /// Takes the output of a finished request and frees its slot.
    ///
    /// # Safety
    /// `key` was returned by `push` for an operation of type `O` (its slot
    /// keeps an `O::Keep`), and neither `take` nor `detach` was called
    /// with it since.
    pub(crate) unsafe fn take<O: Operation>(&mut self, key: Key) -> O::Output {
        let slot = self.slab.slot(key.idx);
        assert!(
            slot.generation == key.generation && slot.state == State::Done,
            "take of a request that is not done"
        );
        let result = match slot.early.take() {
            Some(e) => Err(e),
            None => match Errno::from_ret(slot.res) {
                Ok(n) => Ok(n as usize),
                Err(e) => Err(request_error(
                    e,
                    &slot.iocb,
                    slot.iovs.len(),
                    slot.synchronous,
                )),
            },
        };
        // SAFETY: per the contract, this slot holds the `O::Keep` stored by
        // `push` for this key, not yet taken.
        let keep = unsafe { slot.keep.take::<O::Keep>() };
        drop(self.free(key.idx));
        O::complete(result, keep)
    }

    /// The ticket for `key` is gone: free the slot now if the request is
    /// done, otherwise when its event arrives.
    pub(crate) fn detach(&mut self, key: Key) {
        let slot = self.slab.slot(key.idx);
        if slot.generation != key.generation {
            return;
        }
        if slot.state == State::Done {
            self.release(key.idx);
        } else {
            slot.detached = true;
        }
    }

    pub(crate) fn open_scope(&mut self) -> u64 {
        let id = self.next_scope;
        self.next_scope += 1;
        self.scopes.push(ScopeCount {
            id,
            pending: 0,
            held: 0,
        });
        id
    }

    /// Requests of `scope` that are queued or in flight.
    pub(crate) fn scope_pending(&self, scope: u64) -> usize {
        self.scopes
            .iter()
            .find(|s| s.id == scope)
            .map_or(0, |s| s.pending)
    }

    /// Asks the driver of an in-flight request to cancel it, if it may
    /// wait indefinitely: a poll (Linux cancels those), or any request of
    /// the engine (which cancels a pipe or socket transfer that has not
    /// started; others it refuses, and they complete as usual). The event
    /// still arrives and completes the slot.
    fn cancel(&mut self, idx: u32) {
        if self.forked {
            return;
        }
        let slot = self.slab.slot(idx);
        if slot.state != State::InFlight {
            return;
        }
        if slot.iocb.aio_lio_opcode == Opcode::POLL || slot.route == Route::Engine {
            let route = slot.route;
            let iocb: *mut Iocb = &mut slot.iocb;
            // SAFETY: the iocb the request was submitted from, in a slot
            // that does not move while the request is in flight.
            let _ = unsafe { self.drivers.cancel(route, iocb) };
        }
    }

    /// After a panic in a scope: drops its requests that never reached the
    /// kernel and cancels those that may wait indefinitely.
    pub(crate) fn abandon_scope(&mut self, scope: u64) {
        let mut i = 0;
        while i < self.queue.len() {
            let idx = self.queue[i];
            let slot = self.slab.slot(idx);
            if slot.scope == scope && !slot.continued {
                self.queue.remove(i);
                self.finish(idx, Errno::ECANCELED.as_res(), true);
            } else {
                i += 1;
            }
        }
        for idx in 0..self.slab.len() as u32 {
            if self.slab.slot(idx).scope == scope {
                self.cancel(idx);
            }
        }
    }

    /// Once no request of `scope` is pending: frees every slot it still
    /// holds (those of forgotten tickets), dropping the borrowed buffers
    /// before the scope's borrows end.
    pub(crate) fn close_scope(&mut self, scope: u64) {
        debug_assert_eq!(self.scope_pending(scope), 0);
        let mut first_panic = None;
        for idx in 0..self.slab.len() as u32 {
            if self.scope_entry(scope).is_none_or(|s| s.held == 0) {
                break;
            }
            let slot = self.slab.slot(idx);
            if slot.scope == scope && slot.state == State::Done {
                // Every slot must be cleared, even if one Drop panics.
                if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| self.release(idx))) {
                    first_panic.get_or_insert(p);
                }
            }
        }
        self.scopes.retain(|s| s.id != scope);
        if let Some(p) = first_panic {
            panic::resume_unwind(p);
        }
    }

    /// Submits everything queued, reaping as needed.
    pub(crate) fn flush(&mut self) -> Result<(), Errno> {
        self.drive(|core| core.queue.is_empty())
    }
}

/// What the async front-end needs beyond the blocking one: per-request
/// wakers, withdrawal of a dropped future's request, and shutdown.
#[cfg(feature = "tokio")]
impl Core {
    /// Records the task to wake when the request of `key` finishes.
    pub(crate) fn set_waker(&mut self, key: Key, waker: &Waker) {
        let slot = self.slab.slot(key.idx);
        debug_assert_eq!(slot.generation, key.generation);
        match &slot.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => slot.waker = Some(waker.clone()),
        }
    }

    /// How many more requests the ring has room for now.
    pub(crate) fn room(&self) -> usize {
        self.limit.saturating_sub(self.in_flight)
    }

    /// Whether the request of `key` is still waiting for submission.
    pub(crate) fn is_queued(&self, key: Key) -> bool {
        let idx = key.idx as usize;
        let slot = &self.slab.chunks[idx / CHUNK][idx % CHUNK];
        slot.generation == key.generation && slot.state == State::Queued
    }

    /// The future of `key` is gone. A request the kernel never saw is
    /// removed from the queue and a finished one released: their buffers
    /// are returned, to be dropped outside the lock. One in flight is
    /// detached (its slot drops the buffers when the event arrives) and,
    /// if it is a poll, cancelled (its event then comes with res 0). The
    /// waker is returned too, so that no executor code runs under the lock.
    pub(crate) fn withdraw(&mut self, key: Key) -> (Erased, Option<Waker>) {
        let slot = self.slab.slot(key.idx);
        if slot.generation != key.generation {
            return (Erased::empty(), None);
        }
        let waker = slot.waker.take();
        match slot.state {
            State::Queued => {
                slot.state = State::Done;
                // Usually pushed last: search from the back.
                if let Some(pos) = self.queue.iter().rposition(|&i| i == key.idx) {
                    self.queue.remove(pos);
                }
                (self.free(key.idx), waker)
            }
            State::Done => (self.free(key.idx), waker),
            State::InFlight => {
                slot.detached = true;
                self.cancel(key.idx);
                (Erased::empty(), waker)
            }
            State::Free => unreachable!("a live key names a free slot"),
        }
    }

    /// Moves the wakers of finished requests and the buffers of detached
    /// ones into the caller's vectors (whose capacity is reused), to be
    /// woken and dropped outside the lock.
    pub(crate) fn take_deferred(&mut self, wakers: &mut Vec<Waker>, graveyard: &mut Vec<Erased>) {
        wakers.append(&mut self.wakers);
        graveyard.append(&mut self.graveyard);
    }

    /// Whether finished requests wait for their wakers to be called.
    pub(crate) fn has_deferred(&self) -> bool {
        !self.wakers.is_empty() || !self.graveyard.is_empty()
    }

    /// Shutdown: finishes queued requests with `ECANCELED` (the kernel
    /// never sees them), cancels waiting polls, and waits until every
    /// request in flight has its event, so that the results are there for
    /// futures polled later and no buffer is in the kernel's hands. A
    /// request that `Auto` continues on the engine was submitted: it runs.
    pub(crate) fn close(&mut self) -> Result<(), Errno> {
        for idx in mem::take(&mut self.queue) {
            if self.slab.slot(idx).continued {
                self.queue.push_back(idx);
            } else {
                self.finish(idx, Errno::ECANCELED.as_res(), true);
            }
        }
        for idx in 0..self.slab.len() as u32 {
            self.cancel(idx);
        }
        self.drive(|c| c.in_flight == 0 && c.queue.is_empty())
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Requests never submitted are dropped without running: submitting
        // them here could block forever (a read of an empty pipe blocks
        // inside io_submit). io_destroy returns only when every submitted
        // request is done; only then may the slab drop the buffers.
        let slab = &mut self.slab;
        self.queue.retain(|&idx| slab.slot(idx).continued);
        if self.forked() {
            // The contexts are the parent's; the buffers are this child's
            // own copies, which no driver writes.
            self.queue.clear();
            return;
        }
        // But a request `Auto` tried in the kernel with `RWF_NOWAIT` was
        // submitted: if the kernel's event sends it on to the engine (where
        // nothing blocks io_submit), it runs. Polls and parked stream
        // transfers, which io_destroy would cancel, are cancelled first so
        // that they cannot hold the room it needs. If this fails,
        // io_destroy still waits for whatever is in flight.
        if !self.queue.is_empty() || self.nowait_in_flight() {
            for idx in 0..self.slab.len() as u32 {
                self.cancel(idx);
            }
            let _ = self.drive(|c| c.queue.is_empty() && !c.nowait_in_flight());
            self.queue.clear();
        }
        if self.drivers.destroy().is_err() {
            // The kernel may still write the buffers: leak them.
            mem::forget(mem::replace(&mut self.slab, Slab::new()));
        }
    }
}

/// The error of a request in a fork child of the context's process.
fn fork_error(parent: u32) -> io::Error {
    explained(
        Errno::EINVAL,
        format!(
            "this aio context belongs to process {parent}, and this is a fork child of it: \
             Linux gives a child none of its parent's AIO contexts (and their completion \
             ring is shared with the parent); create a new Context in the child"
        ),
    )
}

/// After a [`Route::KernelNowait`] event: whether the engine must run the
/// request (the kernel answered `EAGAIN`) or the rest of it (a short read,
/// which is the page cache ending or the file ending, the engine tells
/// which; or a short write). Prepares the slot for that: `RWF_NOWAIT` off,
/// the done part skipped and counted in `carried`.
fn continue_on_engine(slot: &mut Slot, res: i64) -> bool {
    let iocb = &mut slot.iocb;
    let vectored = iocb.aio_lio_opcode.is_vectored();
    let len: u64 = if vectored {
        slot.iovs.iter().map(|v| v.iov_len).sum()
    } else {
        iocb.aio_nbytes
    };
    let rest = if res == Errno::EAGAIN.as_res() || res == Errno::EOPNOTSUPP.as_res() {
        0
    } else if res > 0 && (res as u64) < len {
        res as u64
    } else {
        return false;
    };
    if rest > 0 {
        if vectored {
            let mut skip = rest;
            let whole = slot.iovs.iter().take_while(|v| {
                let all = v.iov_len <= skip;
                if all {
                    skip -= v.iov_len;
                }
                all
            });
            let whole = whole.count();
            slot.iovs.drain(..whole);
            if let Some(first) = slot.iovs.first_mut() {
                first.iov_base += skip;
                first.iov_len -= skip;
            }
            iocb.aio_buf = slot.iovs.as_ptr() as u64;
            iocb.aio_nbytes = slot.iovs.len() as u64;
        } else {
            iocb.aio_buf += rest;
            iocb.aio_nbytes -= rest;
        }
        iocb.aio_offset += rest as i64;
        slot.carried += rest as i64;
    }
    iocb.aio_rw_flags = iocb.aio_rw_flags.difference(RwFlags::NOWAIT);
    // A new submission: an event of the kernel's, stale or duplicated,
    // can no longer complete the slot while the engine runs the rest.
    let idx = event_slot(iocb.aio_data).0;
    slot.epoch = slot.epoch.wrapping_add(1);
    iocb.aio_data = event_data(idx, slot.epoch);
    slot.route = Route::Engine;
    slot.state = State::Queued;
    slot.continued = true;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::Driver;
    use crate::op::{ReadV, WriteV};

    fn core() -> Core {
        Core::new(
            Drivers::new(Driver::Engine, 4, true, true, None).unwrap(),
            4,
            false,
            0,
        )
    }

    #[test]
    fn one_segment_goes_as_the_plain_command() {
        let mut core = core();
        let file = tempfile::tempfile().unwrap();
        let buf = vec![0u8; 4096];
        let at = buf.as_ptr() as u64;
        let key = core.push(|iovs| ReadV::new(&file, vec![buf], 512).prepare(iovs), 0);
        let iocb = core.slab.slot(key.idx).iocb;
        assert_eq!(iocb.aio_lio_opcode, Opcode::PREAD);
        assert_eq!(
            (iocb.aio_buf, iocb.aio_nbytes, iocb.aio_offset),
            (at, 4096, 512)
        );
        let key = core.push(
            |iovs| WriteV::new(&file, vec![vec![1u8; 8]], 0).prepare(iovs),
            0,
        );
        assert_eq!(core.slab.slot(key.idx).iocb.aio_lio_opcode, Opcode::PWRITE);
    }

    /// An `Auto` read answered short by the kernel (`RWF_NOWAIT`) goes on
    /// to the engine; the kernel's event, delivered again while the engine
    /// runs the rest, must not complete the slot (its buffer would go back
    /// to the caller while a worker writes into it).
    #[test]
    fn a_stale_event_cannot_complete_a_rerouted_request() {
        let mut core = core();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let file = tempfile::tempfile().unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &data, 0).unwrap();
        let key = core.push(
            |iovs| crate::op::Read::new(&file, vec![0u8; 4096], 0).prepare(iovs),
            0,
        );
        // As if `submit_some` had sent it to the kernel with RWF_NOWAIT.
        let slot = core.slab.slot(key.idx);
        slot.route = Route::KernelNowait;
        slot.state = State::InFlight;
        slot.iocb.aio_rw_flags |= RwFlags::NOWAIT;
        let kernel_data = slot.iocb.aio_data;
        core.queue.clear();
        core.in_flight = 1;
        core.drivers.in_flight = [1, 0];
        // The kernel read 100 bytes: the engine is asked for the rest.
        core.events[0] = IoEvent {
            data: kernel_data,
            res: 100,
            ..IoEvent::default()
        };
        core.process(1);
        assert!(core.take_requeued());
        assert_eq!(core.submit_some(), Submitted::All);
        assert_eq!(core.slab.slot(key.idx).state, State::InFlight);
        // The kernel's event again, while the engine's request is in flight.
        core.events[0] = IoEvent {
            data: kernel_data,
            res: 4096,
            ..IoEvent::default()
        };
        core.process(1);
        assert!(!core.is_done(key), "a stale event completed the request");
        assert_eq!(core.stats().foreign_events, 1);
        core.drive(|c| c.is_done(key)).unwrap();
        // SAFETY: `key` was pushed above as a `Read<&File, Vec<u8>>`.
        let (n, buf) = unsafe { core.take::<crate::op::Read<&std::fs::File, Vec<u8>>>(key) };
        assert_eq!(n.unwrap(), 4096, "100 bytes carried + 3996 from the engine");
        assert_eq!(buf[100..], data[100..4096]);
    }

    /// A write that `Auto` sent to the kernel with `RWF_NOWAIT`, whose
    /// event (`EAGAIN`) sent it back to the queue for the engine.
    fn requeued_write(core: &mut Core, file: &std::fs::File, scope: u64) -> Key {
        let key = core.push(
            |iovs| crate::op::Write::new(file, b"continued".to_vec(), 0).prepare(iovs),
            scope,
        );
        let slot = core.slab.slot(key.idx);
        slot.route = Route::KernelNowait;
        slot.state = State::InFlight;
        slot.iocb.aio_rw_flags |= RwFlags::NOWAIT;
        let data = slot.iocb.aio_data;
        core.queue.clear();
        core.in_flight = 1;
        core.drivers.in_flight = [1, 0];
        core.events[0] = IoEvent {
            data,
            res: Errno::EAGAIN.as_res(),
            ..IoEvent::default()
        };
        core.process(1);
        assert!(core.take_requeued());
        key
    }

    /// Takes the result of a [`requeued_write`] and reads the file back.
    fn written(core: &mut Core, key: Key, file: &std::fs::File) -> (io::Result<usize>, Vec<u8>) {
        assert!(core.is_done(key));
        // SAFETY: `key` was pushed by `requeued_write` as a
        // `Write<&File, Vec<u8>>`.
        let (n, _) = unsafe { core.take::<crate::op::Write<&std::fs::File, Vec<u8>>>(key) };
        let mut back = vec![0u8; 16];
        let len = std::os::unix::fs::FileExt::read_at(file, &mut back, 0).unwrap();
        back.truncate(len);
        (n, back)
    }

    /// A scope that panics drops the requests it never submitted, not one
    /// that `Auto` continues on the engine.
    #[test]
    fn an_abandoned_scope_runs_its_continued_requests() {
        let mut core = core();
        let file = tempfile::tempfile().unwrap();
        let scope = core.open_scope();
        let key = requeued_write(&mut core, &file, scope);
        core.abandon_scope(scope);
        core.drive(|c| c.scope_pending(scope) == 0).unwrap();
        let (n, back) = written(&mut core, key, &file);
        assert_eq!((n.unwrap(), &back[..]), (9, &b"continued"[..]));
    }

    /// Dropping the core drops what was never submitted, not a request
    /// that `Auto` continues on the engine (on any filesystem; ext4 makes
    /// one in `soundness.rs`).
    #[test]
    fn dropping_the_core_runs_continued_requests() {
        let mut core = core();
        let file = tempfile::tempfile().unwrap();
        requeued_write(&mut core, &file, 0);
        drop(core);
        let mut back = vec![0u8; 16];
        let len = std::os::unix::fs::FileExt::read_at(&file, &mut back, 0).unwrap();
        assert_eq!(&back[..len], b"continued");
    }

    /// Shutdown cancels what was never submitted, not a request that
    /// `Auto` continues on the engine.
    #[cfg(feature = "tokio")]
    #[test]
    fn shutdown_runs_continued_requests() {
        let mut core = core();
        let file = tempfile::tempfile().unwrap();
        let key = requeued_write(&mut core, &file, 0);
        core.close().unwrap();
        let (n, back) = written(&mut core, key, &file);
        assert_eq!((n.unwrap(), &back[..]), (9, &b"continued"[..]));
    }

    #[test]
    fn events_for_no_request_in_flight_are_counted_and_ignored() {
        let mut core = core();
        for data in [0, 1 << 40, u64::MAX] {
            core.events[0] = IoEvent {
                data,
                res: 1,
                ..IoEvent::default()
            };
            core.process(1);
        }
        assert_eq!(core.stats().foreign_events, 3);
        assert_eq!(core.in_flight(), 0);
    }

    #[test]
    fn several_segments_stay_vectored() {
        let mut core = core();
        let file = tempfile::tempfile().unwrap();
        let key = core.push(
            |iovs| ReadV::new(&file, vec![vec![0u8; 8], vec![0u8; 8]], 0).prepare(iovs),
            0,
        );
        let slot = core.slab.slot(key.idx);
        assert_eq!(slot.iocb.aio_lio_opcode, Opcode::PREADV);
        assert_eq!(
            (slot.iocb.aio_buf, slot.iocb.aio_nbytes),
            (slot.iovs.as_ptr() as u64, 2)
        );
    }
}
