//! A deterministic simulated host, for unit tests and fuzzing: sparse user
//! memory (any address is safe to pass), scripted files, virtual time with
//! timers, a settable CPU and pending-signal flag. Nothing here touches the
//! real system.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use aio_abi::{Errno, PollEvents, RwFlags};

use crate::host::{
    Completion, EventFd, File, FileMode, Host, IoStatus, PollWaiter, RingMemory, RwOp, Segments,
    WaitOutcome,
};

/// The largest simulated file (writes beyond it fail with `EFBIG`).
pub const MAX_FILE: usize = 16 << 20;

/// The simulated page size.
pub const PAGE: u64 = 4096;

/// User memory: regions keyed by start address; everything else faults.
#[derive(Default)]
pub struct Mem {
    regions: Mutex<BTreeMap<u64, Region>>,
}

#[derive(Clone)]
struct Region {
    data: Arc<Mutex<Vec<u8>>>,
    writable: bool,
}

impl Mem {
    fn find(&self, addr: u64, len: u64) -> Option<(u64, Region)> {
        let regions = self.regions.lock().unwrap();
        let (&start, r) = regions.range(..=addr).next_back()?;
        let size = r.data.lock().unwrap().len() as u64;
        let end = addr.checked_add(len)?;
        (end <= start + size).then(|| (start, r.clone()))
    }

    /// Maps `len` zeroed bytes at `addr`; false if it would overlap.
    pub fn map(&self, addr: u64, len: usize, writable: bool) -> bool {
        let mut regions = self.regions.lock().unwrap();
        let end = addr + len as u64;
        let overlaps = regions.iter().any(|(&s, r)| {
            let e = s + r.data.lock().unwrap().len() as u64;
            s < end && addr < e
        });
        if overlaps {
            return false;
        }
        regions.insert(
            addr,
            Region {
                data: Arc::new(Mutex::new(alloc::vec![0; len])),
                writable,
            },
        );
        true
    }

    /// Fills a region regardless of its protection (test setup).
    pub fn regions_write_ro(&self, addr: u64, src: &[u8]) {
        let (start, r) = self.find(addr, src.len() as u64).unwrap();
        let off = (addr - start) as usize;
        r.data.lock().unwrap()[off..off + src.len()].copy_from_slice(src);
    }

    fn unmap(&self, addr: u64) {
        self.regions.lock().unwrap().remove(&addr);
    }

    /// Copies out of mapped memory; `EFAULT` if any byte is unmapped.
    pub fn read(&self, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
        if dst.is_empty() {
            return Ok(());
        }
        let (start, r) = self.find(addr, dst.len() as u64).ok_or(Errno::EFAULT)?;
        let data = r.data.lock().unwrap();
        let off = (addr - start) as usize;
        dst.copy_from_slice(&data[off..off + dst.len()]);
        Ok(())
    }

    /// Copies into writable memory; `EFAULT` otherwise.
    pub fn write(&self, addr: u64, src: &[u8]) -> Result<(), Errno> {
        if src.is_empty() {
            return Ok(());
        }
        let (start, r) = self.find(addr, src.len() as u64).ok_or(Errno::EFAULT)?;
        if !r.writable {
            return Err(Errno::EFAULT);
        }
        let mut data = r.data.lock().unwrap();
        let off = (addr - start) as usize;
        data[off..off + src.len()].copy_from_slice(src);
        Ok(())
    }
}

/// A ring that lives in the simulated user memory, so that user space can
/// read and scribble on its header as on a real ring.
pub struct MockRing {
    mem: Arc<Mem>,
    addr: u64,
    len: u64,
}

impl MockRing {
    /// A ring in a private memory map, for layout tests.
    pub fn new(addr: u64, len: u64) -> Self {
        let mem = Arc::new(Mem::default());
        assert!(mem.map(addr, len as usize, true));
        MockRing { mem, addr, len }
    }
}

impl Drop for MockRing {
    fn drop(&mut self) {
        self.mem.unmap(self.addr);
    }
}

impl RingMemory for MockRing {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn size(&self) -> u64 {
        self.len
    }
    fn load_u32(&self, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.mem.read(self.addr + offset, &mut b).unwrap();
        u32::from_ne_bytes(b)
    }
    fn store_u32(&self, offset: u64, value: u32) {
        self.mem
            .write(self.addr + offset, &value.to_ne_bytes())
            .unwrap();
    }
    fn write(&self, offset: u64, src: &[u8]) {
        self.mem.write(self.addr + offset, src).unwrap();
    }
    fn read(&self, offset: u64, dst: &mut [u8]) {
        self.mem.read(self.addr + offset, dst).unwrap();
    }
}

type Timer = (u64, Box<dyn FnOnce() + Send>);

/// The simulated host.
pub struct MockHost {
    /// Its user memory.
    pub mem: Arc<Mem>,
    next_ring: AtomicU64,
    files: Mutex<BTreeMap<i32, Arc<dyn File>>>,
    /// Eventfds by fd number.
    pub eventfds: Mutex<BTreeMap<i32, Arc<MockEventFd>>>,
    now: AtomicU64,
    timers: Mutex<Vec<Timer>>,
    /// The CPU [`Host::current_cpu`] reports.
    pub cpu: AtomicU32,
    /// `num_possible_cpus()`.
    pub cpus: u32,
    /// Whether a signal is pending.
    pub signal: AtomicBool,
    /// `fs.aio-max-nr`.
    pub aio_max_nr: AtomicU64,
    /// How many times waiters were woken.
    pub wakes: AtomicU64,
}

impl MockHost {
    /// A host with `cpus` possible CPUs and nothing mapped or open.
    pub fn new(cpus: u32) -> Arc<Self> {
        Arc::new(MockHost {
            mem: Arc::new(Mem::default()),
            next_ring: AtomicU64::new(0x7000_0000),
            files: Mutex::new(BTreeMap::new()),
            eventfds: Mutex::new(BTreeMap::new()),
            now: AtomicU64::new(1_000_000_000),
            timers: Mutex::new(Vec::new()),
            cpu: AtomicU32::new(0),
            cpus,
            signal: AtomicBool::new(false),
            aio_max_nr: AtomicU64::new(65536),
            wakes: AtomicU64::new(0),
        })
    }

    /// Installs `file` as `fd`.
    pub fn add_file(&self, fd: i32, file: Arc<dyn File>) {
        self.files.lock().unwrap().insert(fd, file);
    }

    /// Installs a new eventfd as `fd`.
    pub fn add_eventfd(&self, fd: i32) -> Arc<MockEventFd> {
        let e = Arc::new(MockEventFd::default());
        self.eventfds.lock().unwrap().insert(fd, e.clone());
        e
    }

    /// Runs `f` at virtual time `now + after_ns`, during some `wait`.
    pub fn at(&self, after_ns: u64, f: impl FnOnce() + Send + 'static) {
        let t = self.now.load(Ordering::SeqCst) + after_ns;
        self.timers.lock().unwrap().push((t, Box::new(f)));
    }

    /// Virtual monotonic time.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

impl Host for MockHost {
    type Ring = MockRing;

    fn copy_from_user(&self, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
        self.mem.read(addr, dst)
    }
    fn copy_to_user(&self, addr: u64, src: &[u8]) -> Result<(), Errno> {
        self.mem.write(addr, src)
    }
    fn user_addr_limit(&self) -> u64 {
        0x7fff_ffff_f000
    }
    fn fget(&self, fd: i32) -> Result<Arc<dyn File>, Errno> {
        self.files
            .lock()
            .unwrap()
            .get(&fd)
            .cloned()
            .ok_or(Errno::EBADF)
    }
    fn eventfd_get(&self, fd: i32) -> Result<Arc<dyn EventFd>, Errno> {
        if let Some(e) = self.eventfds.lock().unwrap().get(&fd) {
            return Ok(e.clone());
        }
        if self.files.lock().unwrap().contains_key(&fd) {
            Err(Errno::EINVAL)
        } else {
            Err(Errno::EBADF)
        }
    }
    fn map_ring(&self, len: u64, at: Option<u64>) -> Result<MockRing, Errno> {
        let addr = match at {
            Some(a) => a,
            None => self.next_ring.fetch_add(len + PAGE, Ordering::SeqCst),
        };
        if !self.mem.map(addr, len as usize, true) {
            return Err(Errno::EEXIST);
        }
        Ok(MockRing {
            mem: self.mem.clone(),
            addr,
            len,
        })
    }
    fn now_ns(&self) -> u64 {
        self.now()
    }
    fn wait(
        &self,
        deadline: Option<u64>,
        _sigmask: Option<u64>,
        ready: &mut dyn FnMut() -> bool,
    ) -> WaitOutcome {
        loop {
            if ready() {
                return WaitOutcome::Ready;
            }
            if self.signal.load(Ordering::SeqCst) {
                return WaitOutcome::Interrupted;
            }
            let next = {
                let mut timers = self.timers.lock().unwrap();
                let i = (0..timers.len()).min_by_key(|&i| timers[i].0);
                match i {
                    Some(i) if deadline.is_none_or(|d| timers[i].0 <= d) => {
                        Some(timers.swap_remove(i))
                    }
                    _ => None,
                }
            };
            match (next, deadline) {
                (Some((t, f)), _) => {
                    self.now.fetch_max(t, Ordering::SeqCst);
                    f();
                }
                (None, Some(d)) => {
                    self.now.fetch_max(d, Ordering::SeqCst);
                    return WaitOutcome::TimedOut;
                }
                (None, None) => panic!("mock host: wait would sleep forever"),
            }
        }
    }
    fn wake_all(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_pending(&self) -> bool {
        self.signal.load(Ordering::SeqCst)
    }
    fn current_cpu(&self) -> u32 {
        self.cpu.load(Ordering::SeqCst)
    }
    fn possible_cpus(&self) -> u32 {
        self.cpus
    }
    fn page_size(&self) -> u64 {
        PAGE
    }
    fn aio_max_nr(&self) -> u64 {
        self.aio_max_nr.load(Ordering::SeqCst)
    }
    fn sigset_size(&self) -> u64 {
        8
    }
    fn rw_flags_supported(&self) -> RwFlags {
        RwFlags::ALL_KNOWN
    }
    fn capable_sys_nice(&self) -> bool {
        false
    }
}

/// A simulated eventfd: counts its signals.
#[derive(Default)]
pub struct MockEventFd {
    /// Signals so far.
    pub count: AtomicU64,
}

impl EventFd for MockEventFd {
    fn signal(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// What a scripted file does on its next read or write call.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Move at most `n` bytes and return `Partial`.
    Short(usize),
    /// Move at most `n` bytes and return `WouldBlock`; the file stops being
    /// ready until `set_ready`.
    Block(usize),
    /// Return `Queued`; the test finishes it with `finish_queued`.
    Queue,
    /// Fail with this errno.
    Fail(Errno),
}

/// An in-memory file whose transfers follow a script.
pub struct MockFile {
    mem: Arc<Mem>,
    /// The file's contents.
    pub data: Mutex<Vec<u8>>,
    /// Its mode bits.
    pub mode: FileMode,
    /// What the next calls do.
    pub script: Mutex<VecDeque<Step>>,
    /// `(pos, len)` of every call, to check where each resume started.
    pub calls: Mutex<Vec<(i64, u64)>>,
    /// Operations queued by [`Step::Queue`], with their completions.
    pub queued: Mutex<Vec<(RwOp, bool, Completion)>>,
    /// Current readiness.
    pub ready: Mutex<PollEvents>,
    /// Registered poll waiters.
    pub waiters: Mutex<Vec<(PollEvents, PollWaiter)>>,
    /// What the next fsync returns (default `Done(0)`).
    pub fsync_status: Mutex<Option<IoStatus>>,
}

impl MockFile {
    /// A file with `data` in `host`'s memory world.
    pub fn new(host: &MockHost, data: Vec<u8>, mode: FileMode) -> Arc<Self> {
        Arc::new(MockFile {
            mem: host.mem.clone(),
            data: Mutex::new(data),
            mode,
            script: Mutex::new(VecDeque::new()),
            calls: Mutex::new(Vec::new()),
            queued: Mutex::new(Vec::new()),
            ready: Mutex::new(PollEvents::IN | PollEvents::OUT),
            waiters: Mutex::new(Vec::new()),
            fsync_status: Mutex::new(None),
        })
    }

    /// The mode of a read-write regular file with every method.
    pub fn regular() -> FileMode {
        FileMode {
            read: true,
            write: true,
            has_read_iter: true,
            has_write_iter: true,
            has_fsync: true,
            has_poll: true,
            nowait: true,
            regular: true,
            ..FileMode::default()
        }
    }

    /// Appends steps to the script.
    pub fn push(&self, steps: &[Step]) {
        self.script.lock().unwrap().extend(steps.iter().copied());
    }

    /// Changes readiness and wakes the waiters, as a driver's wake-up would.
    pub fn set_ready(&self, ev: PollEvents) {
        *self.ready.lock().unwrap() = ev;
        let waiters = core::mem::take(&mut *self.waiters.lock().unwrap());
        let mut keep = Vec::new();
        for (want, w) in waiters {
            if !w.wake(ev) {
                keep.push((want, w));
            }
        }
        self.waiters.lock().unwrap().extend(keep);
    }

    /// Performs a queued operation fully and reports it.
    pub fn finish_queued(&self) {
        let q = core::mem::take(&mut *self.queued.lock().unwrap());
        for (op, write, done) in q {
            let n = self.transfer(&op, write, u64::MAX);
            done.finish(n);
        }
    }

    fn transfer(&self, op: &RwOp, write: bool, max: u64) -> IoStatus {
        let mut data = self.data.lock().unwrap();
        let mut pos = op.pos as u64;
        let mut moved = 0u64;
        for seg in &op.segs {
            let mut len = seg.iov_len.min(max - moved);
            if !write {
                len = len.min((data.len() as u64).saturating_sub(pos));
            }
            if len == 0 {
                if moved >= max || (!write && pos >= data.len() as u64) {
                    break;
                }
                continue;
            }
            let r = if write {
                let end = (pos + len) as usize;
                if end > MAX_FILE {
                    // `s_maxbytes`: the simulated files stay small.
                    return if moved > 0 {
                        IoStatus::Done(moved as usize)
                    } else {
                        IoStatus::Error(Errno::EFBIG)
                    };
                }
                if data.len() < end {
                    data.resize(end, 0);
                }
                self.mem
                    .read(seg.iov_base, &mut data[pos as usize..end])
                    .map(|_| ())
            } else {
                self.mem
                    .write(seg.iov_base, &data[pos as usize..(pos + len) as usize])
            };
            if let Err(e) = r {
                return if moved > 0 {
                    IoStatus::Done(moved as usize)
                } else {
                    IoStatus::Error(e)
                };
            }
            pos += len;
            moved += len;
        }
        IoStatus::Done(moved as usize)
    }

    fn rw(&self, op: &RwOp, done: &Completion, write: bool) -> IoStatus {
        self.calls.lock().unwrap().push((op.pos, op.len()));
        let step = self.script.lock().unwrap().pop_front();
        match step {
            None => self.transfer(op, write, u64::MAX),
            Some(Step::Short(n)) => match self.transfer(op, write, n as u64) {
                IoStatus::Done(m) => IoStatus::Partial(m),
                other => other,
            },
            Some(Step::Block(n)) => {
                let want = if write {
                    PollEvents::OUT
                } else {
                    PollEvents::IN
                };
                let mut ready = self.ready.lock().unwrap();
                *ready = ready.difference(want);
                drop(ready);
                match self.transfer(op, write, n as u64) {
                    IoStatus::Done(m) => IoStatus::WouldBlock(m),
                    other => other,
                }
            }
            Some(Step::Queue) => {
                self.queued
                    .lock()
                    .unwrap()
                    .push((op.clone(), write, done.clone()));
                IoStatus::Queued
            }
            Some(Step::Fail(e)) => IoStatus::Error(e),
        }
    }
}

impl File for MockFile {
    fn mode(&self) -> FileMode {
        self.mode
    }
    fn read_iter(&self, op: &RwOp, done: &Completion) -> IoStatus {
        self.rw(op, done, false)
    }
    fn write_iter(&self, op: &RwOp, done: &Completion) -> IoStatus {
        self.rw(op, done, true)
    }
    fn fsync(&self, _datasync: bool, done: &Completion) -> IoStatus {
        match self.fsync_status.lock().unwrap().take() {
            Some(IoStatus::Queued) => {
                self.queued.lock().unwrap().push((
                    RwOp {
                        segs: Segments::Many(Vec::new()),
                        pos: 0,
                        flags: RwFlags::EMPTY,
                    },
                    false,
                    done.clone(),
                ));
                IoStatus::Queued
            }
            Some(s) => s,
            None => IoStatus::Done(0),
        }
    }
    fn poll(&self, events: PollEvents, waiter: Option<&PollWaiter>) -> PollEvents {
        let ready = *self.ready.lock().unwrap();
        if !(ready & (events | PollEvents::ERR | PollEvents::HUP)).is_empty() {
            return ready;
        }
        if let Some(w) = waiter {
            self.waiters.lock().unwrap().push((events, w.clone()));
        }
        ready
    }
    fn poll_cancel(&self, waiter: &PollWaiter) {
        self.waiters
            .lock()
            .unwrap()
            .retain(|(_, w)| !w.same(waiter));
    }
}
