//! Contexts: `io_setup`, `io_destroy`, the context table, slot accounting
//! and event publication (spec §2, §4).

use alloc::sync::Arc;
use alloc::vec::Vec;

use aio_abi::{Errno, IoEvent, ring_layout};

use crate::host::{EventFd, Host, WaitOutcome};
use crate::ring::Ring;
use crate::sync::SpinLock;
use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Something on a context's cancellable list (a waiting `POLL`).
pub(crate) trait Cancel: Send + Sync {
    fn obj(&self) -> u64;
    /// Ends the request (`io_destroy`, or `io_cancel` of a `POLL`).
    fn cancel(self: Arc<Self>);
    /// `io_cancel`: ends the request if it may be cancelled now.
    fn try_cancel(self: Arc<Self>) -> bool {
        self.cancel();
        true
    }
}

/// The state of one address space's AIO: its context table and `aio-nr`.
///
/// Every method is one system call, with Linux's argument shapes: user
/// addresses are `u64`s and are only accessed through the [`Host`].
pub struct Kernel<H: Host> {
    pub(crate) host: Arc<H>,
    table: SpinLock<Vec<Option<Arc<Ctx<H>>>>>,
    aio_nr: SpinLock<u64>,
}

pub(crate) struct Slots {
    /// `ctx->reqs_available`.
    global: u32,
    /// `kcpu->reqs_available` per CPU.
    percpu: Vec<u32>,
}

pub(crate) struct Completed {
    /// `ctx->tail`: the trusted producer index.
    tail: u32,
    /// Events posted whose slots have not been returned yet.
    completed_events: u32,
}

pub(crate) struct Ctx<H: Host> {
    pub(crate) host: Arc<H>,
    pub(crate) user_id: u64,
    pub(crate) max_reqs: u32,
    pub(crate) req_batch: u32,
    pub(crate) ring: Ring<H::Ring>,
    pub(crate) dead: AtomicBool,
    pub(crate) slots: SpinLock<Slots>,
    pub(crate) completed: SpinLock<Completed>,
    /// `ctx->ring_lock`: one reader of the ring at a time.
    pub(crate) ring_lock: SpinLock<()>,
    /// `ctx->active_reqs`: requests `io_cancel` can find.
    pub(crate) active: SpinLock<Vec<Arc<dyn Cancel>>>,
    /// Reads and writes waiting for readiness (the retry path): ended by
    /// `io_destroy`, which would otherwise wait for a pipe that may never
    /// be written, and by `io_cancel` if no byte has moved yet.
    pub(crate) parked: SpinLock<Vec<Arc<dyn Cancel>>>,
    /// Requests submitted and not yet completed.
    pub(crate) inflight: AtomicUsize,
}

impl<H: Host> Ctx<H> {
    pub(crate) fn nr_events(&self) -> u32 {
        self.ring.nr
    }

    /// `__get_reqs_available`: take a slot from this CPU's cache, refilling
    /// the cache a batch at a time from the global count.
    fn try_get_slot(&self) -> bool {
        let cpu = self.host.current_cpu() as usize;
        let mut s = self.slots.lock();
        let cpu = cpu % s.percpu.len();
        if s.percpu[cpu] == 0 {
            if s.global < self.req_batch {
                return false;
            }
            s.global -= self.req_batch;
            s.percpu[cpu] += self.req_batch;
        }
        s.percpu[cpu] -= 1;
        true
    }

    /// `get_reqs_available`: on failure, first return the slots of events
    /// user space has consumed, then try again.
    pub(crate) fn get_slot(&self) -> bool {
        if self.try_get_slot() {
            return true;
        }
        self.user_refill();
        self.try_get_slot()
    }

    /// `put_reqs_available`.
    pub(crate) fn put_slots(&self, nr: u32) {
        let cpu = self.host.current_cpu() as usize;
        let mut s = self.slots.lock();
        let cpu = cpu % s.percpu.len();
        s.percpu[cpu] += nr;
        while s.percpu[cpu] >= self.req_batch * 2 {
            s.percpu[cpu] -= self.req_batch;
            s.global += self.req_batch;
        }
    }

    /// `refill_reqs_available`: slots of events no longer in the ring return.
    fn refill(&self, c: &mut Completed, head: u32, tail: u32) {
        let nr = self.nr_events();
        let head = head % nr;
        let in_ring = if head <= tail {
            tail - head
        } else {
            nr - (head - tail)
        };
        let freed = c.completed_events.saturating_sub(in_ring);
        if freed == 0 {
            return;
        }
        c.completed_events -= freed;
        self.put_slots(freed);
    }

    /// `user_refill_reqs_available`: honours a `head` stored by a user-space
    /// reaper as much as one stored by `io_getevents`.
    fn user_refill(&self) {
        let mut c = self.completed.lock();
        if c.completed_events != 0 {
            let head = self.ring.head();
            let tail = c.tail;
            self.refill(&mut c, head, tail);
        }
    }

    /// `aio_complete`: event, then tail, then eventfd, then waiters.
    pub(crate) fn post_event(&self, ev: &IoEvent, eventfd: Option<&dyn EventFd>) {
        {
            let mut c = self.completed.lock();
            let pos = c.tail;
            let mut tail = pos + 1;
            if tail >= self.nr_events() {
                tail = 0;
            }
            self.ring.write_event(pos, ev);
            self.ring.set_tail(tail);
            c.tail = tail;
            let head = self.ring.head();
            c.completed_events += 1;
            if c.completed_events > 1 {
                self.refill(&mut c, head, tail);
            }
        }
        if let Some(efd) = eventfd {
            efd.signal();
        }
        self.host.wake_all();
    }

    /// One request fewer in flight; `io_destroy` may be waiting for zero.
    pub(crate) fn request_done(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.host.wake_all();
        }
    }
}

impl<H: Host> Kernel<H> {
    /// A fresh address space on `host`.
    pub fn new(host: Arc<H>) -> Self {
        Kernel {
            host,
            table: SpinLock::new(Vec::new()),
            aio_nr: SpinLock::new(0),
        }
    }

    /// The host this kernel runs on.
    pub fn host(&self) -> &Arc<H> {
        &self.host
    }

    /// `aio-nr`: the sum of the `nr_events` of the live contexts.
    pub fn aio_nr(&self) -> u64 {
        *self.aio_nr.lock()
    }

    /// `io_setup(nr_events, ctxp)` (spec §2.1).
    pub fn io_setup(&self, nr_events: u32, ctxp: u64) -> Result<(), Errno> {
        self.setup(nr_events, ctxp, None)
    }

    /// `io_setup` with the ring placed at `ring_addr`, as the seed patch
    /// allowed: the address must be page-aligned (`EINVAL`) and the host
    /// decides whether the range is free. Otherwise identical to
    /// [`Kernel::io_setup`]; the context is keyed by `ring_addr`.
    pub fn io_setup_at(&self, nr_events: u32, ctxp: u64, ring_addr: u64) -> Result<(), Errno> {
        self.setup(nr_events, ctxp, Some(ring_addr))
    }

    fn setup(&self, nr_events: u32, ctxp: u64, at: Option<u64>) -> Result<(), Errno> {
        let mut old = [0u8; 8];
        self.host.copy_from_user(ctxp, &mut old)?;
        if u64::from_ne_bytes(old) != 0 || nr_events == 0 {
            return Err(Errno::EINVAL);
        }
        let ctx = self.alloc(nr_events, at)?;
        if let Err(e) = self.host.copy_to_user(ctxp, &ctx.user_id.to_ne_bytes()) {
            self.kill(&ctx);
            return Err(e);
        }
        Ok(())
    }

    /// `ioctx_alloc`.
    fn alloc(&self, nr_events: u32, at: Option<u64>) -> Result<Arc<Ctx<H>>, Errno> {
        let cpus = self.host.possible_cpus().max(1);
        let page = self.host.page_size();
        let geo = ring_layout::for_request(nr_events, cpus, page)?;
        if nr_events as u64 > self.host.aio_max_nr() {
            return Err(Errno::EAGAIN);
        }
        if let Some(addr) = at {
            if addr % page != 0 || addr == 0 {
                return Err(Errno::EINVAL);
            }
        }
        let mem = self.host.map_ring(geo.pages * page, at)?;
        let ring = Ring::init(mem, geo.ring_nr);
        let req_batch = ((geo.ring_nr - 1) / (cpus * 4)).max(1);
        let ctx = Arc::new(Ctx {
            host: self.host.clone(),
            user_id: ring.addr(),
            max_reqs: nr_events,
            req_batch,
            ring,
            dead: AtomicBool::new(false),
            slots: SpinLock::new(Slots {
                global: geo.ring_nr - 1,
                percpu: alloc::vec![0; cpus as usize],
            }),
            completed: SpinLock::new(Completed {
                tail: 0,
                completed_events: 0,
            }),
            ring_lock: SpinLock::new(()),
            active: SpinLock::new(Vec::new()),
            parked: SpinLock::new(Vec::new()),
            inflight: AtomicUsize::new(0),
        });
        {
            let mut nr = self.aio_nr.lock();
            let max = self.host.aio_max_nr();
            match nr.checked_add(nr_events as u64) {
                Some(sum) if sum <= max => *nr = sum,
                _ => return Err(Errno::EAGAIN),
            }
        }
        let mut table = self.table.lock();
        let id = match table.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                table.push(None);
                table.len() - 1
            }
        };
        ctx.ring.set_id(id as u32);
        table[id] = Some(ctx.clone());
        Ok(ctx)
    }

    /// `lookup_ioctx`: the context whose ring is at `ctx_id`, if its
    /// `ring->id` still names its slot in the table. Every failure is
    /// `EINVAL`.
    ///
    /// Linux reads `ring->id` at `ctx_id` first; here the table is searched
    /// for the address and `id` is read from the ring the table holds. The
    /// answers are the same (a scribbled `id` is `EINVAL` either way), but
    /// no address a caller passes is ever read: a bogus, foreign or
    /// destroyed id cannot fault or read memory the context does not own,
    /// and the returned reference keeps the ring mapped while the caller
    /// uses it, even if `io_destroy` runs meanwhile.
    pub(crate) fn lookup(&self, ctx_id: u64) -> Result<Arc<Ctx<H>>, Errno> {
        let table = self.table.lock();
        let (slot, ctx) = table
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.as_ref().filter(|c| c.user_id == ctx_id).map(|c| (i, c)))
            .ok_or(Errno::EINVAL)?;
        if ctx.ring.id() as usize != slot || ctx.dead.load(Ordering::Acquire) {
            return Err(Errno::EINVAL);
        }
        Ok(ctx.clone())
    }

    /// `kill_ioctx`: false if already dying.
    fn kill(&self, ctx: &Arc<Ctx<H>>) -> bool {
        if ctx.dead.swap(true, Ordering::SeqCst) {
            return false;
        }
        {
            let mut table = self.table.lock();
            for slot in table.iter_mut() {
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, ctx)) {
                    *slot = None;
                }
            }
        }
        self.host.wake_all();
        *self.aio_nr.lock() -= ctx.max_reqs as u64;
        let active = core::mem::take(&mut *ctx.active.lock());
        for req in active {
            req.cancel();
        }
        let parked = core::mem::take(&mut *ctx.parked.lock());
        for req in parked {
            req.cancel();
        }
        true
    }

    /// `io_destroy(ctx)` (spec §2.3): cancels what can be cancelled, then
    /// waits, uninterruptibly, until every request in flight has completed.
    /// The ring memory is released when the last reference to the context
    /// goes (the host's `Ring` drop).
    pub fn io_destroy(&self, ctx_id: u64) -> Result<(), Errno> {
        let ctx = self.lookup(ctx_id)?;
        if !self.kill(&ctx) {
            return Err(Errno::EINVAL);
        }
        loop {
            let mut idle = || ctx.inflight.load(Ordering::Acquire) == 0;
            if self.host.wait(None, None, &mut idle) == WaitOutcome::Ready {
                return Ok(());
            }
        }
    }

    /// The live contexts' ring addresses.
    pub fn contexts(&self) -> Vec<u64> {
        self.table
            .lock()
            .iter()
            .flatten()
            .map(|c| c.user_id)
            .collect()
    }
}
