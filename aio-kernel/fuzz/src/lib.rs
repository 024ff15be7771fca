//! Fuzz harness for the validation and submission path of `aio-kernel`,
//! run against the simulated host (`aio_kernel::sim`), where every address
//! is safe to pass. The same `run` drives cargo-fuzz, cargo-afl, and the
//! corpus replay in `aio-kernel/tests/fuzz_corpus.rs`.
//!
//! The input is a program: a few setup bytes, then operations (submit a
//! batch of raw iocbs with optional fix-ups that point them at mapped
//! memory and open fds, reap, cancel, change a file's readiness, finish
//! queued I/O, script a file's next transfers, destroy and set up again).
//! After every operation and at the end it checks the invariants of spec
//! §9: at most `ring_nr - 1` events outstanding, one event per accepted
//! iocb and none for a rejected one, head and tail inside the ring.

use std::collections::HashMap;
use std::sync::Arc;

use aio_abi::{Errno, IoEvent, IoVec, Iocb, PollEvents};
use aio_kernel::sim::{MockFile, MockHost, Step};
use aio_kernel::{FileMode, Kernel};
use zerocopy::{FromBytes, IntoBytes};

const BUF: u64 = 0x1000_0000;
const BUF_LEN: usize = 64 * 1024;
const RO: u64 = 0x2000_0000;
const IOCBS: u64 = 0x3000_0000;
const IOCB_SLOTS: u64 = 4096;
const ARRAYS: u64 = 0x4000_0000;
const EVENTS: u64 = 0x5000_0000;
const CTXP: u64 = 0x6000_0000;
const FIRST_FD: i32 = 3;
const NFILES: i32 = 6;
const EVENTFD: i32 = 9;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        let mut v = a.to_vec();
        v.resize(n.max(v.len()), 0);
        v
    }
    fn u64(&mut self) -> u64 {
        let mut b = self.take(8);
        b.resize(8, 0);
        u64::from_le_bytes(b.try_into().unwrap())
    }
}

struct World {
    host: Arc<MockHost>,
    k: Kernel<MockHost>,
    files: Vec<Arc<MockFile>>,
    ctx: Option<u64>,
    ring_nr: u32,
    next_slot: u64,
    /// obj -> events seen, for every accepted iocb.
    accepted: HashMap<u64, u32>,
    outstanding: u64,
}

fn modes() -> Vec<FileMode> {
    let rw = MockFile::regular();
    vec![
        rw,
        FileMode { write: false, ..rw },
        FileMode { read: false, ..rw },
        FileMode {
            has_read_iter: false,
            has_write_iter: false,
            write: false,
            ..rw
        },
        FileMode {
            regular: false,
            has_fsync: false,
            nowait: true,
            ..rw
        },
        FileMode {
            has_poll: false,
            nowait: false,
            append: true,
            ..rw
        },
    ]
}

impl World {
    fn new(cpus: u32) -> World {
        let host = MockHost::new(cpus);
        assert!(host.mem.map(BUF, BUF_LEN, true));
        assert!(host.mem.map(RO, 4096, false));
        assert!(host.mem.map(IOCBS, (IOCB_SLOTS * 64) as usize, true));
        assert!(host.mem.map(ARRAYS, 64 * 1024, true));
        assert!(host.mem.map(EVENTS, 64 * 1024, true));
        assert!(host.mem.map(CTXP, 8, true));
        let files: Vec<_> = modes()
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let f = MockFile::new(&host, vec![i as u8; 4096], m);
                host.add_file(FIRST_FD + i as i32, f.clone());
                f
            })
            .collect();
        host.add_eventfd(EVENTFD);
        let k = Kernel::new(host.clone());
        World {
            host,
            k,
            files,
            ctx: None,
            ring_nr: 0,
            next_slot: 0,
            accepted: HashMap::new(),
            outstanding: 0,
        }
    }

    fn setup(&mut self, nr: u32) {
        self.host.mem.write(CTXP, &0u64.to_ne_bytes()).unwrap();
        if self.k.io_setup(nr, CTXP).is_ok() {
            let mut b = [0u8; 8];
            self.host.mem.read(CTXP, &mut b).unwrap();
            let ctx = u64::from_ne_bytes(b);
            let mut nr = [0u8; 4];
            self.host.mem.read(ctx + 4, &mut nr).unwrap();
            self.ctx = Some(ctx);
            self.ring_nr = u32::from_ne_bytes(nr);
        }
    }

    /// Lets every queued or waiting request finish.
    fn settle(&mut self) {
        for _ in 0..64 {
            let mut busy = false;
            for f in &self.files {
                f.script.lock().unwrap().clear();
                if !f.queued.lock().unwrap().is_empty() || !f.waiters.lock().unwrap().is_empty() {
                    busy = true;
                }
                f.set_ready(PollEvents::IN | PollEvents::OUT);
                f.finish_queued();
            }
            if !busy {
                return;
            }
        }
    }

    fn reap(&mut self, min: i64, nr: i64, to: u64) -> Result<usize, Errno> {
        let Some(ctx) = self.ctx else {
            return Err(Errno::EINVAL);
        };
        // A zero timeout: the simulated host cannot sleep forever.
        let ts = EVENTS + 60 * 1024;
        self.host.mem.write(ts, &[0u8; 16]).unwrap();
        let r = self.k.io_getevents(ctx, min, nr, to, ts);
        if let Ok(n) = r {
            assert!(n as i64 <= nr.max(0));
            if to == EVENTS {
                let mut raw = vec![0u8; n * 32];
                self.host.mem.read(EVENTS, &mut raw).unwrap();
                for c in raw.chunks(32) {
                    let ev = IoEvent::read_from_bytes(c).unwrap();
                    let seen = self
                        .accepted
                        .get_mut(&ev.obj)
                        .expect("event for an unknown iocb");
                    *seen += 1;
                    assert_eq!(*seen, 1, "two events for one iocb");
                    assert_eq!(ev.res2, 0);
                    self.outstanding -= 1;
                }
            }
        }
        r
    }

    fn check_ring(&self) {
        if let Some(ctx) = self.ctx {
            let mut h = [0u8; 16];
            self.host.mem.read(ctx, &mut h).unwrap();
            let tail = u32::from_ne_bytes(h[12..16].try_into().unwrap());
            assert!(tail < self.ring_nr);
            assert!(
                self.outstanding < self.ring_nr as u64,
                "more outstanding than the ring holds"
            );
        }
    }

    fn submit(&mut self, inp: &mut Input) {
        let Some(ctx) = self.ctx else { return };
        let n = (inp.byte().unwrap_or(0) % 8) as usize + 1;
        let mut ptrs = Vec::new();
        let mut objs = Vec::new();
        for _ in 0..n {
            let mut raw = inp.take(64);
            raw.resize(64, 0);
            let mut iocb = Iocb::read_from_bytes(&raw[..]).unwrap();
            let fix = inp.byte().unwrap_or(0xff);
            if fix & 1 != 0 {
                iocb.aio_buf = BUF + iocb.aio_buf % (BUF_LEN as u64 - 8192);
                iocb.aio_nbytes %= 8192;
            }
            if fix & 2 != 0 {
                iocb.aio_fildes =
                    (FIRST_FD + (iocb.aio_fildes % (NFILES as u32 + 1)) as i32) as u32;
                iocb.aio_lio_opcode.0 %= 10;
            }
            if fix & 4 != 0 && iocb.aio_lio_opcode.is_vectored() {
                let count = iocb.aio_nbytes % 9;
                let at = BUF + (BUF_LEN as u64 - 4096);
                let segs: Vec<IoVec> = (0..count)
                    .map(|_| {
                        let v = inp.u64();
                        IoVec {
                            iov_base: BUF + (v >> 16) % 32768,
                            iov_len: v % 700,
                        }
                    })
                    .collect();
                self.host.mem.write(at, segs.as_bytes()).unwrap();
                iocb.aio_buf = at;
                iocb.aio_nbytes = count;
            }
            if fix & 8 != 0 {
                iocb.aio_reserved2 = 0;
                iocb.aio_rw_flags.0 &= 0x1ff;
            }
            if fix & 16 != 0 {
                iocb.aio_flags.0 |= 1;
                iocb.aio_resfd = EVENTFD as u32;
            }
            let addr = if fix & 0x60 == 0x60 {
                RO
            } else {
                let a = IOCBS + (self.next_slot % IOCB_SLOTS) * 64;
                self.next_slot += 1;
                self.host.mem.write(a, iocb.as_bytes()).unwrap();
                a
            };
            let addr = if fix & 0x80 != 0 && fix & 0x60 == 0x20 {
                0
            } else {
                addr
            };
            ptrs.extend_from_slice(&addr.to_ne_bytes());
            objs.push(addr);
        }
        // A NULL after the batch: an oversized `nr` stops there (EFAULT)
        // instead of resubmitting stale pointers of an earlier batch.
        ptrs.extend_from_slice(&0u64.to_ne_bytes());
        self.host.mem.write(ARRAYS, &ptrs).unwrap();
        let nr = match inp.byte().unwrap_or(0) {
            0 => -1,
            1 => 1 << 40,
            _ => n as i64,
        };
        let r = self.k.io_submit(ctx, nr, ARRAYS);
        if nr < 0 {
            assert_eq!(r, Err(Errno::EINVAL));
        }
        if let Ok(done) = r {
            assert!(done <= n);
            for &obj in &objs[..done] {
                // A slot in the iocb area is reused only after IOCB_SLOTS
                // submissions; by then its earlier event has been reaped.
                self.accepted.insert(obj, 0);
                self.outstanding += 1;
            }
        }
    }

    fn step(&mut self, inp: &mut Input) -> bool {
        let Some(op) = inp.byte() else { return false };
        match op % 8 {
            0 | 1 => self.submit(inp),
            2 => {
                let nr = (inp.byte().unwrap_or(0) % 40) as i64 - 2;
                let to = if inp.byte().unwrap_or(0) < 16 {
                    8
                } else {
                    EVENTS
                };
                let _ = self.reap(inp.byte().unwrap_or(0) as i64 % 3, nr, to);
            }
            3 => {
                if let Some(ctx) = self.ctx {
                    let back = inp.byte().unwrap_or(0) as u64 + 1;
                    let obj = IOCBS + (self.next_slot.wrapping_sub(back) % IOCB_SLOTS) * 64;
                    let r = self.k.io_cancel(ctx, obj, 0);
                    assert_ne!(r, Ok(()), "io_cancel never returns 0");
                }
            }
            4 => {
                let f = &self.files[(inp.byte().unwrap_or(0) as usize) % self.files.len()];
                f.set_ready(PollEvents(inp.byte().unwrap_or(0) as u32 & 0x3f));
            }
            5 => {
                let f = &self.files[(inp.byte().unwrap_or(0) as usize) % self.files.len()];
                f.finish_queued();
            }
            6 => {
                let f = &self.files[(inp.byte().unwrap_or(0) as usize) % self.files.len()];
                let steps: Vec<Step> = inp
                    .take(3)
                    .iter()
                    .map(|b| match b % 4 {
                        0 => Step::Short((b / 4) as usize + 1),
                        1 => Step::Block((b / 4) as usize),
                        2 => Step::Queue,
                        _ => Step::Fail(Errno::EIO),
                    })
                    .collect();
                f.push(&steps);
            }
            _ => {
                if let Some(ctx) = self.ctx.take() {
                    // Sometimes destroy with transfers still parked on
                    // readiness (io_destroy ends them); queued ones must
                    // finish first or the simulated wait would never end.
                    let abrupt = op & 0x80 != 0
                        && self
                            .files
                            .iter()
                            .all(|f| f.queued.lock().unwrap().is_empty());
                    if !abrupt {
                        self.settle();
                        while matches!(self.reap(0, 64, EVENTS), Ok(n) if n > 0) {}
                    }
                    assert_eq!(self.k.io_destroy(ctx), Ok(()));
                    // Nothing restarts after destroy: waking the files now
                    // must not touch the dead context.
                    for f in &self.files {
                        f.set_ready(PollEvents::IN | PollEvents::OUT);
                    }
                    assert_eq!(self.k.io_destroy(ctx), Err(Errno::EINVAL));
                    self.accepted.retain(|_, seen| *seen == 1);
                    self.outstanding = 0;
                    assert_eq!(self.k.aio_nr(), 0);
                }
                let nr = inp.byte().unwrap_or(1) as u32;
                self.setup(nr);
            }
        }
        self.check_ring();
        true
    }

    /// Every accepted iocb gets exactly one event once all I/O is let go
    /// and waiting polls are cancelled.
    fn finish(&mut self) {
        let Some(ctx) = self.ctx else { return };
        self.settle();
        let pending: Vec<u64> = self
            .accepted
            .iter()
            .filter(|(_, s)| **s == 0)
            .map(|(o, _)| *o)
            .collect();
        for obj in pending {
            let _ = self.k.io_cancel(ctx, obj, 0);
        }
        while matches!(self.reap(0, 64, EVENTS), Ok(n) if n > 0) {}
        let missing: Vec<_> = self.accepted.iter().filter(|(_, s)| **s != 1).collect();
        assert!(
            missing.is_empty(),
            "accepted iocbs without exactly one event: {missing:?}"
        );
        self.k.io_destroy(ctx).unwrap();
    }
}

/// Runs one fuzz input. Panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let mut inp = Input(data);
    let cpus = inp.byte().unwrap_or(0) as u32 % 4 + 1;
    let nr = match inp.byte().unwrap_or(0) {
        b if b < 200 => b as u32 % 16 + 1,
        b => (b as u32) << 8,
    };
    let mut w = World::new(cpus);
    w.setup(nr);
    let mut ops = 0;
    while ops < 400 && w.step(&mut inp) {
        ops += 1;
    }
    w.finish();
}
