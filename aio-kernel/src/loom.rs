//! Model checks of the core's concurrency protocols with loom, on the
//! real code: the core's atomics and spin locks are loom's under
//! `--cfg loom` (see `sync.rs`), and a host made of loom primitives runs
//! the real `Kernel` (submission, completion, `io_getevents`,
//! `io_destroy`) and the real [`Waker`] futex protocol.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p aio-kernel --release --lib loom
//! ```
//!
//! What is checked, over every interleaving loom explores:
//! - ring publishing: an event posted by a completing thread is either
//!   not yet visible to a concurrent `io_getevents` or visible whole (the
//!   slot is written before `tail` is published with release, and read
//!   after `tail` is loaded with acquire); none is lost or read twice;
//! - wake-up and destroy: a waiter sleeping on the generation futex is
//!   woken by a completion or by a concurrent `io_destroy` (never a lost
//!   wake-up: loom reports a deadlock), and `io_destroy` returns only
//!   after the request in flight has completed;
//! - parking: of a readiness wake-up, `io_destroy` and `io_cancel`,
//!   exactly one takes a parked transfer, and `io_cancel` never takes one
//!   that has moved data.

use alloc::sync::Arc;
use alloc::vec::Vec;

use aio_abi::{Errno, IoEvent, Iocb, PollEvents, RwFlags};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::{Condvar, Mutex};
use zerocopy::{FromBytes, IntoBytes};

use crate::Kernel;
use crate::host::{
    Completion, EventFd, File, FileMode, Host, IoStatus, PollWaiter, RingMemory, RwOp, WaitOutcome,
};
use crate::park::Park;
use crate::wake::{Futex, Slept, Waker};

/// A futex: the generation word, and a lock and condition variable that
/// play the futex hash bucket (the value is compared under the lock the
/// waker takes to wake).
struct LoomFutex {
    word: AtomicU32,
    bucket: Mutex<()>,
    sleepers: Condvar,
}

impl Futex for LoomFutex {
    fn load(&self) -> u32 {
        self.word.load(Ordering::SeqCst)
    }
    fn bump(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
    }
    fn wait(&self, seen: u32, timeout_ns: Option<u64>) -> Slept {
        assert!(timeout_ns.is_none(), "the models never time out");
        let bucket = self.bucket.lock().unwrap();
        if self.word.load(Ordering::SeqCst) == seen {
            drop(self.sleepers.wait(bucket).unwrap());
        }
        Slept::Again
    }
    fn wake_all(&self) {
        let _bucket = self.bucket.lock().unwrap();
        self.sleepers.notify_all();
    }
}

/// Ring memory: the header words as atomics (acquire loads, release
/// stores, as the engine's mapping does them) and one cell per event
/// slot, so loom reports any unordered access to a slot.
struct LoomRing {
    addr: u64,
    header: [AtomicU32; 8],
    slots: Vec<UnsafeCell<[u8; 32]>>,
}

// SAFETY: the slots are shared as the engine's mapping is: writes and
// reads are ordered by the ring protocol under test, and loom reports any
// access that is not.
unsafe impl Sync for LoomRing {}

impl RingMemory for LoomRing {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn size(&self) -> u64 {
        32 + 32 * self.slots.len() as u64
    }
    fn load_u32(&self, offset: u64) -> u32 {
        self.header[offset as usize / 4].load(Ordering::Acquire)
    }
    fn store_u32(&self, offset: u64, value: u32) {
        self.header[offset as usize / 4].store(value, Ordering::Release);
    }
    fn write(&self, offset: u64, src: &[u8]) {
        assert!(offset >= 32 && offset % 32 == 0 && src.len() == 32);
        let slot = (offset as usize - 32) / 32;
        self.slots[slot].with_mut(|p| {
            // SAFETY: loom checks that no other access to this slot races.
            unsafe { (*p).copy_from_slice(src) }
        });
    }
    fn read(&self, offset: u64, dst: &mut [u8]) {
        assert!(offset >= 32 && offset % 32 == 0 && dst.len() % 32 == 0);
        let first = (offset as usize - 32) / 32;
        for (i, chunk) in dst.chunks_mut(32).enumerate() {
            self.slots[first + i].with(|p| {
                // SAFETY: as in `write`.
                chunk.copy_from_slice(unsafe { &*p })
            });
        }
    }
}

/// Where the models keep user memory: `*ctxp`, iocbs, the pointer array,
/// event arrays, a zero timeout.
const USER: u64 = 0x10000;
const CTXP: u64 = USER;
const ZERO_TS: u64 = USER + 0x10;
const IOCBPP: u64 = USER + 0x40;
const IOCBS: u64 = USER + 0x80;
const EVENTS: u64 = USER + 0x200;
const EVENTS2: u64 = USER + 0x400;
const FD: i32 = 3;

/// A file whose `fsync` is queued; the model finishes it from a thread.
struct LoomFile {
    queued: Mutex<Vec<Completion>>,
}

impl File for LoomFile {
    fn mode(&self) -> FileMode {
        FileMode {
            read: true,
            write: true,
            has_fsync: true,
            regular: true,
            ..FileMode::default()
        }
    }
    fn read_iter(&self, _: &RwOp, _: &Completion) -> IoStatus {
        IoStatus::Error(Errno::EINVAL)
    }
    fn write_iter(&self, _: &RwOp, _: &Completion) -> IoStatus {
        IoStatus::Error(Errno::EINVAL)
    }
    fn fsync(&self, _datasync: bool, done: &Completion) -> IoStatus {
        self.queued.lock().unwrap().push(done.clone());
        IoStatus::Queued
    }
    fn poll(&self, _: PollEvents, _: Option<&PollWaiter>) -> PollEvents {
        PollEvents::EMPTY
    }
}

struct LoomHost {
    mem: Mutex<Vec<u8>>,
    file: Arc<LoomFile>,
    waker: Waker<LoomFutex>,
}

impl LoomHost {
    fn new() -> Arc<LoomHost> {
        Arc::new(LoomHost {
            mem: Mutex::new(alloc::vec![0; 0x1000]),
            file: Arc::new(LoomFile {
                queued: Mutex::new(Vec::new()),
            }),
            waker: Waker::new(LoomFutex {
                word: AtomicU32::new(0),
                bucket: Mutex::new(()),
                sleepers: Condvar::new(),
            }),
        })
    }

    fn range(addr: u64, len: usize) -> Result<core::ops::Range<usize>, Errno> {
        let start = addr.checked_sub(USER).ok_or(Errno::EFAULT)? as usize;
        let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > 0x1000 {
            return Err(Errno::EFAULT);
        }
        Ok(start..end)
    }

    fn put(&self, addr: u64, src: &[u8]) {
        self.copy_to_user(addr, src).unwrap();
    }

    fn events(&self, addr: u64, n: usize) -> Vec<IoEvent> {
        let mut raw = alloc::vec![0u8; 32 * n];
        self.copy_from_user(addr, &mut raw).unwrap();
        raw.chunks(32)
            .map(|c| IoEvent::read_from_bytes(c).unwrap())
            .collect()
    }

    /// The completions of the queued requests, oldest first.
    fn take_queued(&self) -> Vec<Completion> {
        core::mem::take(&mut *self.file.queued.lock().unwrap())
    }
}

impl Host for LoomHost {
    type Ring = LoomRing;

    fn copy_from_user(&self, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
        let r = Self::range(addr, dst.len())?;
        dst.copy_from_slice(&self.mem.lock().unwrap()[r]);
        Ok(())
    }
    fn copy_to_user(&self, addr: u64, src: &[u8]) -> Result<(), Errno> {
        let r = Self::range(addr, src.len())?;
        self.mem.lock().unwrap()[r].copy_from_slice(src);
        Ok(())
    }
    fn user_addr_limit(&self) -> u64 {
        1 << 47
    }
    fn fget(&self, fd: i32) -> Result<Arc<dyn File>, Errno> {
        if fd == FD {
            Ok(self.file.clone())
        } else {
            Err(Errno::EBADF)
        }
    }
    fn eventfd_get(&self, _fd: i32) -> Result<Arc<dyn EventFd>, Errno> {
        Err(Errno::EINVAL)
    }
    fn map_ring(&self, len: u64, _at: Option<u64>) -> Result<LoomRing, Errno> {
        let slots = ((len - 32) / 32) as usize;
        Ok(LoomRing {
            addr: 0x4000_0000,
            header: core::array::from_fn(|_| AtomicU32::new(0)),
            slots: (0..slots).map(|_| UnsafeCell::new([0; 32])).collect(),
        })
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn wait(
        &self,
        deadline_ns: Option<u64>,
        _sigmask: Option<u64>,
        ready: &mut dyn FnMut() -> bool,
    ) -> WaitOutcome {
        self.waker.wait(deadline_ns, &|| 0, ready)
    }
    fn wake_all(&self) {
        self.waker.wake_all();
    }
    fn signal_pending(&self) -> bool {
        false
    }
    fn current_cpu(&self) -> u32 {
        0
    }
    fn possible_cpus(&self) -> u32 {
        1
    }
    fn page_size(&self) -> u64 {
        4096
    }
    fn aio_max_nr(&self) -> u64 {
        65536
    }
    fn sigset_size(&self) -> u64 {
        8
    }
    fn rw_flags_supported(&self) -> RwFlags {
        RwFlags::EMPTY
    }
    fn capable_sys_nice(&self) -> bool {
        false
    }
}

/// A kernel on a loom host with one context and `n` queued `FSYNC`s
/// (data 1..=n); returns the context and the requests' completions.
fn scene(n: usize) -> (Arc<LoomHost>, Arc<Kernel<LoomHost>>, u64, Vec<Completion>) {
    let host = LoomHost::new();
    let k = Arc::new(Kernel::new(host.clone()));
    k.io_setup(4, CTXP).unwrap();
    let mut id = [0u8; 8];
    host.copy_from_user(CTXP, &mut id).unwrap();
    let ctx = u64::from_ne_bytes(id);
    host.put(ZERO_TS, &[0; 16]);
    for i in 0..n {
        let at = IOCBS + 64 * i as u64;
        host.put(at, Iocb::fsync(FD).with_data(i as u64 + 1).as_bytes());
        host.put(IOCBPP + 8 * i as u64, &at.to_ne_bytes());
    }
    assert_eq!(k.io_submit(ctx, n as i64, IOCBPP), Ok(n));
    let queued = host.take_queued();
    assert_eq!(queued.len(), n);
    (host, k, ctx, queued)
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

#[test]
fn loom_ring_publishing_loses_and_tears_no_event() {
    model(|| {
        let (host, k, ctx, mut queued) = scene(2);
        let second = queued.pop().unwrap();
        let first = queued.pop().unwrap();
        let producer = loom::thread::spawn(move || {
            first.finish(IoStatus::Done(0));
            second.finish(IoStatus::Done(0));
        });
        // Reap concurrently with the completions, without waiting.
        let early = k.io_getevents(ctx, 0, 2, EVENTS, ZERO_TS).unwrap();
        let mut seen = host.events(EVENTS, early);
        producer.join().unwrap();
        let late = k.io_getevents(ctx, 0, 2, EVENTS2, ZERO_TS).unwrap();
        seen.extend(host.events(EVENTS2, late));
        let data: Vec<u64> = seen.iter().map(|e| e.data).collect();
        assert_eq!(data, [1, 2], "every event once, in order");
        assert!(seen.iter().all(|e| e.res == 0 && e.obj >= IOCBS));
        assert_eq!(k.io_destroy(ctx), Ok(()));
    });
}

#[test]
fn loom_a_waiter_is_woken_by_a_completion_or_by_destroy() {
    model(|| {
        let (host, k, ctx, mut queued) = scene(1);
        let done = queued.pop().unwrap();
        let completer = loom::thread::spawn(move || done.finish(IoStatus::Done(0)));
        let waiter = {
            let k = k.clone();
            // min_nr 1, no timeout: sleeps on the generation futex.
            loom::thread::spawn(move || k.io_getevents(ctx, 1, 1, EVENTS, 0))
        };
        let held = k.lookup(ctx).unwrap();
        assert_eq!(k.io_destroy(ctx), Ok(()));
        // io_destroy returned only after the request completed.
        assert_eq!(held.inflight.load(Ordering::SeqCst), 0);
        match waiter.join().unwrap() {
            Ok(1) => assert_eq!(host.events(EVENTS, 1)[0].data, 1),
            Err(Errno::EINVAL) => {}
            other => panic!("{other:?}"),
        }
        completer.join().unwrap();
    });
}

#[test]
fn loom_exactly_one_party_takes_a_parked_transfer() {
    for moved in [false, true] {
        model(move || {
            let park = Arc::new(Park::new());
            park.park(moved);
            let wake = {
                let park = park.clone();
                loom::thread::spawn(move || park.take())
            };
            let cancel = {
                let park = park.clone();
                loom::thread::spawn(move || park.take_unstarted())
            };
            let destroy = park.take();
            let (wake, cancel) = (wake.join().unwrap(), cancel.join().unwrap());
            assert_eq!([wake, cancel, destroy].iter().filter(|t| **t).count(), 1);
            assert!(
                !(moved && cancel),
                "a cancel never takes a started transfer"
            );
        });
    }
}
