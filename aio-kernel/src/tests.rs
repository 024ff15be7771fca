//! Unit tests of the core against the mock host.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use aio_abi::{Errno, IoEvent, IoVec, Iocb, IocbFlags, Opcode, PollEvents, RwFlags};
use zerocopy::{FromBytes, IntoBytes};

use crate::Kernel;
use crate::host::{FileMode, IoStatus};
use crate::sim::{MockFile, MockHost, PAGE, Step};

struct T {
    host: Arc<MockHost>,
    k: Kernel<MockHost>,
    next: AtomicU64,
}

impl T {
    fn new(cpus: u32) -> T {
        let host = MockHost::new(cpus);
        T {
            k: Kernel::new(host.clone()),
            host,
            next: AtomicU64::new(0x1000_0000),
        }
    }

    /// Maps `len` bytes of user memory and returns the address.
    fn alloc(&self, len: usize) -> u64 {
        let len = len.max(1);
        let addr = self
            .next
            .fetch_add((len as u64).div_ceil(PAGE) * PAGE + PAGE, Ordering::SeqCst);
        assert!(self.host.mem.map(addr, len, true));
        addr
    }

    fn put(&self, bytes: &[u8]) -> u64 {
        let a = self.alloc(bytes.len());
        self.host.mem.write(a, bytes).unwrap();
        a
    }

    fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.host.mem.read(addr, &mut v).unwrap();
        v
    }

    fn setup(&self, nr: u32) -> u64 {
        let ctxp = self.alloc(8);
        self.k.io_setup(nr, ctxp).unwrap();
        u64::from_ne_bytes(self.get(ctxp, 8).try_into().unwrap())
    }

    /// Writes the iocbs and the pointer array; returns the iocb addresses.
    fn submit(&self, ctx: u64, iocbs: &[Iocb]) -> (Result<usize, Errno>, Vec<u64>) {
        let addrs: Vec<u64> = iocbs.iter().map(|i| self.put(i.as_bytes())).collect();
        let ptrs: Vec<u8> = addrs.iter().flat_map(|a| a.to_ne_bytes()).collect();
        let arr = self.put(&ptrs);
        (self.k.io_submit(ctx, iocbs.len() as i64, arr), addrs)
    }

    fn submit1(&self, ctx: u64, iocb: Iocb) -> Result<usize, Errno> {
        self.submit(ctx, &[iocb]).0
    }

    fn getevents(
        &self,
        ctx: u64,
        min: i64,
        nr: i64,
        timeout: Option<(i64, i64)>,
    ) -> Result<Vec<IoEvent>, Errno> {
        let out = self.alloc(nr.max(1) as usize * 32);
        let ts = timeout.map_or(0, |(s, n)| {
            let mut b = s.to_ne_bytes().to_vec();
            b.extend_from_slice(&n.to_ne_bytes());
            self.put(&b)
        });
        let n = self.k.io_getevents(ctx, min, nr, out, ts)?;
        Ok(self
            .get(out, n * 32)
            .chunks(32)
            .map(|c| IoEvent::read_from_bytes(c).unwrap())
            .collect())
    }

    fn file(&self, fd: i32, data: Vec<u8>, mode: FileMode) -> Arc<MockFile> {
        let f = MockFile::new(&self.host, data, mode);
        self.host.add_file(fd, f.clone());
        f
    }

    fn iovecs(&self, lens: &[u64]) -> (u64, Vec<u64>) {
        let bufs: Vec<u64> = lens.iter().map(|&l| self.alloc(l as usize)).collect();
        let raw: Vec<u8> = bufs
            .iter()
            .zip(lens)
            .flat_map(|(&b, &l)| {
                IoVec {
                    iov_base: b,
                    iov_len: l,
                }
                .as_bytes()
                .to_vec()
            })
            .collect();
        (self.put(&raw), bufs)
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

// ---- io_setup / io_destroy ----

#[test]
fn setup_geometry_and_errors() {
    let t = T::new(8);
    let ctx = t.setup(1);
    let hdr = t.get(ctx, 32);
    assert_eq!(u32::from_ne_bytes(hdr[4..8].try_into().unwrap()), 127);
    assert_eq!(t.k.aio_nr(), 1);
    let ctx2 = t.setup(128);
    assert_eq!(
        u32::from_ne_bytes(t.get(ctx2 + 4, 4).try_into().unwrap()),
        383
    );
    assert_eq!(u32::from_ne_bytes(t.get(ctx2, 4).try_into().unwrap()), 1);

    let ctxp = t.alloc(8);
    assert_eq!(t.k.io_setup(0, ctxp), Err(Errno::EINVAL));
    assert_eq!(t.k.io_setup(u32::MAX, ctxp), Err(Errno::EINVAL));
    assert_eq!(t.k.io_setup(1, 0), Err(Errno::EFAULT));
    t.host.mem.write(ctxp, &5u64.to_ne_bytes()).unwrap();
    assert_eq!(t.k.io_setup(1, ctxp), Err(Errno::EINVAL));
    t.host.mem.write(ctxp, &0u64.to_ne_bytes()).unwrap();
    assert_eq!(t.k.io_setup(65537, ctxp), Err(Errno::EAGAIN));
    // aio-nr + N > aio-max-nr.
    assert_eq!(t.k.io_setup(65536 - 128, ctxp), Err(Errno::EAGAIN));
    assert_eq!(t.k.aio_nr(), 129);
    // Read-only ctxp: the ring is torn down again.
    let ro = t.alloc(8);
    t.host.mem.map(ro + PAGE * 16, 8, false);
    assert_eq!(t.k.io_setup(1, ro + PAGE * 16), Err(Errno::EFAULT));
    assert_eq!(t.k.aio_nr(), 129);
    assert_eq!(t.k.contexts().len(), 2);

    assert_eq!(t.k.io_destroy(ctx), Ok(()));
    assert_eq!(t.k.io_destroy(ctx), Err(Errno::EINVAL));
    assert_eq!(t.k.io_destroy(u64::MAX), Err(Errno::EINVAL));
    assert_eq!(t.k.aio_nr(), 128);
    // The ring memory is gone with the context.
    assert!(t.host.mem.read(ctx, &mut [0; 4]).is_err());
    // Table slot 0 is reused.
    let ctx3 = t.setup(4);
    assert_eq!(u32::from_ne_bytes(t.get(ctx3, 4).try_into().unwrap()), 0);
}

#[test]
fn explicit_ring_address() {
    let t = T::new(2);
    let ctxp = t.alloc(8);
    let at = 0x5555_0000_0000;
    t.k.io_setup_at(1, ctxp, at).unwrap();
    assert_eq!(u64::from_ne_bytes(t.get(ctxp, 8).try_into().unwrap()), at);
    assert_eq!(t.get(at + 16, 4), 0xa10a10a1u32.to_ne_bytes());
    let ctxp2 = t.alloc(8);
    assert_eq!(t.k.io_setup_at(1, ctxp2, at), Err(Errno::EEXIST));
    assert_eq!(t.k.io_setup_at(1, ctxp2, at + 1), Err(Errno::EINVAL));
    t.k.io_destroy(at).unwrap();
    t.k.io_setup_at(1, ctxp2, at).unwrap();
}

#[test]
fn lookup_checks_the_id_in_the_ring() {
    let t = T::new(2);
    let a = t.setup(1);
    let _b = t.setup(1);
    assert_eq!(t.submit1(a, Iocb::fsync(99)), Err(Errno::EBADF));
    // Point ring a's id at b's slot: no longer a valid context.
    t.host.mem.write(a, &1u32.to_ne_bytes()).unwrap();
    assert_eq!(t.submit1(a, Iocb::fsync(99)), Err(Errno::EINVAL));
    assert_eq!(t.k.io_submit(0, 1, 0), Err(Errno::EINVAL));
}

// ---- io_submit validation order ----

#[test]
fn submit_validation_order() {
    let t = T::new(2);
    let ctx = t.setup(8);
    t.file(3, pattern(100), MockFile::regular());
    let buf = t.alloc(100);

    assert_eq!(t.k.io_submit(ctx, -1, 0), Err(Errno::EINVAL));
    assert_eq!(t.k.io_submit(ctx, 0, 0), Ok(0));
    assert_eq!(t.k.io_submit(ctx, 1, 0), Err(Errno::EFAULT));
    let null_ptr = t.put(&0u64.to_ne_bytes());
    assert_eq!(t.k.io_submit(ctx, 1, null_ptr), Err(Errno::EFAULT));

    // Reserved beats a bad fd; a bad fd beats a bad opcode.
    let mut i = Iocb::pread(-1, buf, 10, 0);
    i.aio_reserved2 = 1;
    assert_eq!(t.submit1(ctx, i), Err(Errno::EINVAL));
    let mut i = Iocb::pread(-1, buf, 10, 0);
    i.aio_lio_opcode = Opcode(42);
    assert_eq!(t.submit1(ctx, i), Err(Errno::EBADF));
    let i = Iocb::pread(3, buf, 1 << 63, 0);
    assert_eq!(t.submit1(ctx, i), Err(Errno::EINVAL));
    for op in [4u16, 6, 9, 0xffff] {
        let mut i = Iocb::pread(3, buf, 10, 0);
        i.aio_lio_opcode = Opcode(op);
        assert_eq!(t.submit1(ctx, i), Err(Errno::EINVAL), "opcode {op}");
    }
    // RESFD: closed fd, then a non-eventfd.
    assert_eq!(
        t.submit1(ctx, Iocb::pread(3, buf, 10, 0).with_eventfd(77)),
        Err(Errno::EBADF)
    );
    assert_eq!(
        t.submit1(ctx, Iocb::pread(3, buf, 10, 0).with_eventfd(3)),
        Err(Errno::EINVAL)
    );
    // The key write needs a writable iocb, and happens before the opcode.
    let ro = 0x3000_0000;
    t.host.mem.map(ro, 64, false);
    let mut bad = Iocb::pread(3, buf, 10, 0);
    bad.aio_lio_opcode = Opcode(42);
    t.host.mem.regions_write_ro(ro, bad.as_bytes());
    let arr = t.put(&ro.to_ne_bytes());
    assert_eq!(t.k.io_submit(ctx, 1, arr), Err(Errno::EFAULT));

    // Offsets and counts.
    assert_eq!(
        t.submit1(ctx, Iocb::pread(3, buf, 10, -1)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        t.submit1(ctx, Iocb::pread(3, buf, 10, i64::MAX - 5)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        t.submit1(ctx, Iocb::pread(3, 0x7fff_ffff_f000 - 5, 10, 0)),
        Err(Errno::EFAULT)
    );
    // Nothing above posted an event or kept a slot.
    assert_eq!(t.getevents(ctx, 0, 10, None).unwrap().len(), 0);
    assert_eq!(t.k.aio_nr(), 8);

    // Stop at the first error and return the count.
    let good = Iocb::pread(3, buf, 10, 0).with_data(1);
    let (r, _) = t.submit(ctx, &[good, good, Iocb::pread(-1, buf, 1, 0), good]);
    assert_eq!(r, Ok(2));
    let evs = t.getevents(ctx, 2, 10, None).unwrap();
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| e.res == 10 && e.data == 1));
}

#[test]
fn access_modes_and_methods() {
    let t = T::new(2);
    let ctx = t.setup(8);
    let ro = FileMode {
        write: false,
        ..MockFile::regular()
    };
    t.file(3, pattern(10), ro);
    let dir = FileMode {
        has_read_iter: false,
        has_write_iter: false,
        write: false,
        ..MockFile::regular()
    };
    t.file(4, vec![], dir);
    let pipe = FileMode {
        has_fsync: false,
        regular: false,
        ..MockFile::regular()
    };
    t.file(5, vec![], pipe);
    let buf = t.alloc(10);
    assert_eq!(
        t.submit1(ctx, Iocb::pwrite(3, buf, 1, 0)),
        Err(Errno::EBADF)
    );
    assert_eq!(
        t.submit1(ctx, Iocb::pread(4, buf, 1, 0)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        t.submit1(ctx, Iocb::pwrite(4, buf, 1, 0)),
        Err(Errno::EBADF)
    );
    assert_eq!(t.submit1(ctx, Iocb::fsync(5)), Err(Errno::EINVAL));
    let mut f = Iocb::fsync(3);
    f.aio_offset = 1;
    assert_eq!(t.submit1(ctx, f), Err(Errno::EINVAL));
    assert_eq!(t.submit1(ctx, Iocb::fdsync(3)), Ok(1));
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 0);
}

#[test]
fn rw_flags_checks() {
    let t = T::new(2);
    let ctx = t.setup(8);
    let no_nowait = FileMode {
        nowait: false,
        append: true,
        append_only: true,
        ..MockFile::regular()
    };
    t.file(3, pattern(10), no_nowait);
    let buf = t.alloc(10);
    let r = |f: RwFlags, write: bool| {
        let i = if write {
            Iocb::pwrite(3, buf, 1, 0)
        } else {
            Iocb::pread(3, buf, 1, 0)
        };
        t.submit1(ctx, i.with_rw_flags(f))
    };
    assert_eq!(r(RwFlags(0x200), false), Err(Errno::EOPNOTSUPP));
    assert_eq!(
        r(RwFlags::APPEND | RwFlags::NOAPPEND, true),
        Err(Errno::EINVAL)
    );
    assert_eq!(r(RwFlags::NOWAIT, false), Err(Errno::EOPNOTSUPP));
    assert_eq!(r(RwFlags::ATOMIC, false), Err(Errno::EOPNOTSUPP));
    assert_eq!(r(RwFlags::ATOMIC, true), Err(Errno::EOPNOTSUPP));
    assert_eq!(r(RwFlags::DONTCACHE, false), Err(Errno::EOPNOTSUPP));
    assert_eq!(r(RwFlags::NOAPPEND, true), Err(Errno::EPERM));
    assert_eq!(r(RwFlags::HIPRI | RwFlags::DSYNC, false), Ok(1));
    // IOPRIO: RT needs the capability; NONE with a level is invalid.
    let p = |prio: u16| t.submit1(ctx, Iocb::pread(3, buf, 1, 0).with_ioprio(prio));
    assert_eq!(p(aio_abi::ioprio::value(1, 0)), Err(Errno::EPERM));
    assert_eq!(p(aio_abi::ioprio::value(0, 3)), Err(Errno::EINVAL));
    assert_eq!(p(aio_abi::ioprio::value(5, 0)), Err(Errno::EINVAL));
    assert_eq!(p(aio_abi::ioprio::value(2, 7)), Ok(1));
}

#[test]
fn vectored_import() {
    let t = T::new(2);
    let ctx = t.setup(8);
    t.file(3, pattern(4096), MockFile::regular());
    assert_eq!(
        t.submit1(ctx, Iocb::preadv(3, 0x1234, 1025, 0)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        t.submit1(ctx, Iocb::preadv(3, 0x1234, 1, 0)),
        Err(Errno::EFAULT)
    );
    // Zero segments: a zero-length read.
    assert_eq!(t.submit1(ctx, Iocb::preadv(3, 0, 0, 0)), Ok(1));
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 0);
    // Negative length beats a bad base in a later segment.
    let raw: Vec<u8> = [
        IoVec {
            iov_base: 0x1000_0000,
            iov_len: 1,
        },
        IoVec {
            iov_base: 0x8000_0000_0000,
            iov_len: 1,
        },
        IoVec {
            iov_base: 0,
            iov_len: u64::MAX,
        },
    ]
    .iter()
    .flat_map(|v| v.as_bytes().to_vec())
    .collect();
    let iov = t.put(&raw);
    assert_eq!(
        t.submit1(ctx, Iocb::preadv(3, iov, 3, 0)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        t.submit1(ctx, Iocb::preadv(3, iov, 2, 0)),
        Err(Errno::EFAULT)
    );
    // An in-range but unmapped buffer fails in the event.
    assert_eq!(t.submit1(ctx, Iocb::pread(3, 0x6000_0000, 10, 0)), Ok(1));
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, -14);
    // The iovec array is copied: freeing it after submit is fine.
    let (iov, bufs) = t.iovecs(&[3, 5]);
    let f = t.file(4, pattern(100), MockFile::regular());
    f.push(&[Step::Queue]);
    assert_eq!(t.submit1(ctx, Iocb::preadv(4, iov, 2, 10)), Ok(1));
    t.host.mem.write(iov, &[0; 32]).unwrap();
    f.finish_queued();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 8);
    assert_eq!(t.get(bufs[0], 3), pattern(100)[10..13]);
    assert_eq!(t.get(bufs[1], 5), pattern(100)[13..18]);
}

// ---- the seed's bug: resuming partial vectored transfers ----

const SEGS: &[u64] = &[5, 1, 0, 7, 16, 3, 9];
const FILE_OFF: i64 = 11;

/// Every way of stopping a vectored read at byte `cut` must deliver the
/// same bytes to the same places.
fn check_read_resume(steps: &[Step], write_ready_after: bool) {
    let t = T::new(2);
    let ctx = t.setup(8);
    let data = pattern(200);
    let f = t.file(3, data.clone(), MockFile::regular());
    f.push(steps);
    let (iov, bufs) = t.iovecs(SEGS);
    let n = SEGS.len() as u64;
    assert_eq!(t.submit1(ctx, Iocb::preadv(3, iov, n, FILE_OFF)), Ok(1));
    if write_ready_after {
        // The core is waiting for readiness; no event yet.
        assert_eq!(t.getevents(ctx, 0, 1, None).unwrap().len(), 0);
        f.set_ready(PollEvents::IN);
    }
    let ev = t.getevents(ctx, 1, 1, None).unwrap();
    let total: u64 = SEGS.iter().sum();
    assert_eq!(ev[0].res, total as i64, "{steps:?}");
    let mut off = FILE_OFF as usize;
    for (b, &l) in bufs.iter().zip(SEGS) {
        assert_eq!(
            t.get(*b, l as usize),
            data[off..off + l as usize],
            "{steps:?}"
        );
        off += l as usize;
    }
    // Each call started where the previous one stopped: file position and
    // bytes left moved by the same amount.
    let calls = f.calls.lock().unwrap().clone();
    assert_eq!(calls[0], (FILE_OFF, total));
    for w in calls.windows(2) {
        let moved = (w[1].0 - w[0].0) as u64;
        assert_eq!(w[0].1 - w[1].1, moved, "{steps:?}: {calls:?}");
    }
}

fn boundaries() -> Vec<usize> {
    let total: u64 = SEGS.iter().sum();
    (1..total as usize).collect()
}

#[test]
fn seed_bug_short_read_at_every_byte() {
    for cut in boundaries() {
        check_read_resume(&[Step::Short(cut)], false);
    }
}

#[test]
fn seed_bug_eagain_at_every_byte() {
    for cut in boundaries() {
        check_read_resume(&[Step::Block(cut)], true);
    }
}

#[test]
fn seed_bug_two_stops_and_queued_resume() {
    for cut in boundaries() {
        for cut2 in [1usize, 2, 6, 13] {
            check_read_resume(&[Step::Short(cut), Step::Short(cut2)], false);
            check_read_resume(&[Step::Block(cut), Step::Short(cut2)], true);
        }
    }
}

#[test]
fn resume_positions_follow_the_bytes_moved() {
    let t = T::new(2);
    let ctx = t.setup(8);
    let f = t.file(3, pattern(200), MockFile::regular());
    f.push(&[Step::Short(4), Step::Block(6), Step::Short(10)]);
    let (iov, _) = t.iovecs(SEGS);
    t.submit1(ctx, Iocb::preadv(3, iov, SEGS.len() as u64, FILE_OFF))
        .unwrap();
    f.set_ready(PollEvents::IN);
    let total: u64 = SEGS.iter().sum();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, total as i64);
    let calls = f.calls.lock().unwrap().clone();
    let o = FILE_OFF;
    let tl = total;
    assert_eq!(
        calls,
        vec![
            (o, tl),
            (o + 4, tl - 4),
            (o + 10, tl - 10),
            (o + 20, tl - 20)
        ]
    );
}

#[test]
fn seed_bug_vectored_write_resumes_everywhere() {
    for cut in boundaries() {
        for blocked in [false, true] {
            let t = T::new(2);
            let ctx = t.setup(8);
            let f = t.file(3, vec![0; 10], MockFile::regular());
            f.push(&[if blocked {
                Step::Block(cut)
            } else {
                Step::Short(cut)
            }]);
            let lens = SEGS;
            let (iov, bufs) = t.iovecs(lens);
            let mut expect = Vec::new();
            for (i, (b, &l)) in bufs.iter().zip(lens).enumerate() {
                let bytes: Vec<u8> = (0..l).map(|j| (i as u8) * 40 + j as u8).collect();
                t.host.mem.write(*b, &bytes).unwrap();
                expect.extend(bytes);
            }
            t.submit1(ctx, Iocb::pwritev(3, iov, lens.len() as u64, 3))
                .unwrap();
            if blocked {
                f.set_ready(PollEvents::OUT);
            }
            let ev = t.getevents(ctx, 1, 1, None).unwrap();
            assert_eq!(ev[0].res, expect.len() as i64);
            assert_eq!(f.data.lock().unwrap()[3..], expect[..], "cut {cut}");
        }
    }
}

#[test]
fn nowait_partial_and_errors_after_progress() {
    let t = T::new(2);
    let ctx = t.setup(8);
    let f = t.file(3, pattern(100), MockFile::regular());
    let (iov, _) = t.iovecs(&[10, 10]);
    f.push(&[Step::Block(0)]);
    t.submit1(ctx, Iocb::preadv2(3, iov, 2, 0, RwFlags::NOWAIT))
        .unwrap();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, -11);
    f.push(&[Step::Block(7)]);
    t.submit1(ctx, Iocb::preadv2(3, iov, 2, 0, RwFlags::NOWAIT))
        .unwrap();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 7);
    f.push(&[Step::Short(3), Step::Fail(Errno::EIO)]);
    t.submit1(ctx, Iocb::preadv(3, iov, 2, 0)).unwrap();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 3);
    f.push(&[Step::Fail(Errno::ERESTARTSYS)]);
    t.submit1(ctx, Iocb::preadv(3, iov, 2, 0)).unwrap();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, -4);
    // Short read at end of file is final.
    t.submit1(ctx, Iocb::preadv(3, iov, 2, 95)).unwrap();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 5);
}

// ---- slots ----

#[test]
fn slot_accounting_matches_linux_per_cpu_batches() {
    // 2 CPUs, nr 1: ring_nr 127, req_batch 126 / 8 = 15: one CPU can take
    // 8 batches = 120 slots before EAGAIN.
    let t = T::new(2);
    let ctx = t.setup(1);
    t.file(3, pattern(10), MockFile::regular());
    let buf = t.alloc(10);
    let one = Iocb::pread(3, buf, 1, 0);
    for i in 0..120 {
        assert_eq!(t.submit1(ctx, one), Ok(1), "{i}");
    }
    assert_eq!(t.submit1(ctx, one), Err(Errno::EAGAIN));
    // The other CPU finds the global count below a batch too.
    t.host.cpu.store(1, Ordering::SeqCst);
    assert_eq!(t.submit1(ctx, one), Err(Errno::EAGAIN));
    t.host.cpu.store(0, Ordering::SeqCst);
    // Consuming events frees their slots.
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap().len(), 1);
    assert_eq!(t.submit1(ctx, one), Ok(1));
    assert_eq!(t.submit1(ctx, one), Err(Errno::EAGAIN));
    // A batch submit stops at the first EAGAIN and reports the count.
    assert_eq!(t.getevents(ctx, 3, 3, None).unwrap().len(), 3);
    let (r, _) = t.submit(ctx, &[one; 5]);
    assert_eq!(r, Ok(3));
}

#[test]
fn user_space_reaper_frees_slots() {
    // 1 CPU, nr 1: ring_nr 127, req_batch 126 / 4 = 31, 4 batches.
    let t = T::new(1);
    let ctx = t.setup(1);
    t.file(3, pattern(10), MockFile::regular());
    let buf = t.alloc(10);
    let one = Iocb::pread(3, buf, 1, 0);
    let mut n = 0;
    while t.submit1(ctx, one).is_ok() {
        n += 1;
    }
    assert_eq!(n, 124);
    // Reap like aio-sys's RingView: read tail, store head.
    let tail = t.get(ctx + 12, 4);
    t.host.mem.write(ctx + 8, &tail).unwrap();
    assert_eq!(t.submit1(ctx, one), Ok(1));
    // A head stored out of range is reduced modulo nr.
    let tail = u32::from_ne_bytes(t.get(ctx + 12, 4).try_into().unwrap());
    t.host
        .mem
        .write(ctx + 8, &(tail + 127).to_ne_bytes())
        .unwrap();
    assert_eq!(t.getevents(ctx, 0, 10, None).unwrap().len(), 0);
}

#[test]
fn nr_is_clamped_to_ring_nr() {
    let t = T::new(1);
    let ctx = t.setup(1);
    // 1 CPU: req_batch 31, so 124 slots; nr is clamped to ring_nr 127, and
    // the slots run out first: the pointer at 127 is never read.
    t.file(3, pattern(10), MockFile::regular());
    let buf = t.alloc(10);
    let addr = t.put(Iocb::pread(3, buf, 1, 0).as_bytes());
    let mut ptrs: Vec<u8> = (0..127).flat_map(|_| addr.to_ne_bytes()).collect();
    ptrs.extend(0u64.to_ne_bytes());
    let arr = t.put(&ptrs);
    assert_eq!(t.k.io_submit(ctx, 1000, arr), Ok(124));
}

// ---- getevents ----

#[test]
fn getevents_min_nr_and_timeouts() {
    let t = T::new(2);
    let ctx = t.setup(8);
    let f = t.file(3, pattern(10), MockFile::regular());
    let buf = t.alloc(10);
    assert_eq!(t.getevents(ctx, 2, 1, None), Err(Errno::EINVAL));
    assert_eq!(t.getevents(ctx, -1, 1, None), Err(Errno::EINVAL));
    assert_eq!(t.getevents(0, 0, 1, None), Err(Errno::EINVAL));
    // min_nr 0 never blocks, even with no timeout.
    assert_eq!(t.getevents(ctx, 0, 1, None).unwrap().len(), 0);
    // Zero timeout polls once.
    assert_eq!(t.getevents(ctx, 1, 1, Some((0, 0))).unwrap().len(), 0);
    // A timeout returns what was gathered.
    let t0 = t.host.now();
    assert_eq!(t.getevents(ctx, 1, 1, Some((0, 5000))).unwrap().len(), 0);
    assert_eq!(t.host.now() - t0, 5000);
    // A negative timeout sleeps forever (Linux's hrtimer overflow check):
    // with an event due later, it waits for it.
    f.push(&[Step::Queue]);
    t.submit1(ctx, Iocb::pread(3, buf, 2, 0)).unwrap();
    let f1 = f.clone();
    t.host.at(1_000_000_000_000, move || f1.finish_queued());
    assert_eq!(t.getevents(ctx, 1, 1, Some((0, -1))).unwrap().len(), 1);
    // Gathers across wake-ups until min_nr.
    f.push(&[Step::Queue, Step::Queue, Step::Queue]);
    for _ in 0..3 {
        t.submit1(ctx, Iocb::pread(3, buf, 2, 0)).unwrap();
    }
    let f2 = f.clone();
    t.host.at(100, move || {
        let q = f2.queued.lock().unwrap().pop().unwrap();
        q.2.finish(IoStatus::Done(2));
    });
    let f3 = f.clone();
    t.host.at(200, move || f3.finish_queued());
    let evs = t.getevents(ctx, 3, 8, Some((1, 0))).unwrap();
    assert_eq!(evs.len(), 3);
    // Timed out with fewer than min_nr: the partial count.
    f.push(&[Step::Queue, Step::Queue]);
    t.submit1(ctx, Iocb::pread(3, buf, 2, 0)).unwrap();
    t.submit1(ctx, Iocb::pread(3, buf, 2, 0)).unwrap();
    let f4 = f.clone();
    t.host.at(100, move || {
        let q = f4.queued.lock().unwrap().pop().unwrap();
        q.2.finish(IoStatus::Done(2));
    });
    assert_eq!(t.getevents(ctx, 2, 8, Some((0, 1000))).unwrap().len(), 1);
    // A signal with nothing gathered is EINTR.
    t.host.signal.store(true, Ordering::SeqCst);
    assert_eq!(t.getevents(ctx, 2, 8, None), Err(Errno::EINTR));
    t.host.signal.store(false, Ordering::SeqCst);
    f.finish_queued();
    assert_eq!(t.getevents(ctx, 1, 8, None).unwrap().len(), 1);
    // Timeout pointer fault.
    let out = t.alloc(32);
    assert_eq!(t.k.io_getevents(ctx, 0, 1, out, 8), Err(Errno::EFAULT));
}

#[test]
fn getevents_fault_consumes_nothing_and_wraps() {
    let t = T::new(1);
    let ctx = t.setup(1);
    t.file(3, pattern(10), MockFile::regular());
    let buf = t.alloc(10);
    for i in 0..3 {
        t.submit1(ctx, Iocb::pread(3, buf, 1, 0).with_data(i))
            .unwrap();
    }
    assert_eq!(t.k.io_getevents(ctx, 1, 3, 0, 0), Err(Errno::EFAULT));
    let evs = t.getevents(ctx, 3, 3, None).unwrap();
    assert_eq!(evs.iter().map(|e| e.data).collect::<Vec<_>>(), [0, 1, 2]);
    // Go round the ring several times; order and contents stay right.
    for round in 0..10u64 {
        let batch: Vec<Iocb> = (0..50)
            .map(|i| Iocb::pread(3, buf, 1, 0).with_data(round * 100 + i))
            .collect();
        assert_eq!(t.submit(ctx, &batch).0, Ok(50));
        let evs = t.getevents(ctx, 50, 50, None).unwrap();
        let want: Vec<u64> = (0..50).map(|i| round * 100 + i).collect();
        assert_eq!(evs.iter().map(|e| e.data).collect::<Vec<_>>(), want);
    }
}

#[test]
fn pgetevents_sigset() {
    let t = T::new(1);
    let ctx = t.setup(1);
    let out = t.alloc(32);
    let mask = t.put(&[0; 8]);
    let sig = |m: u64, s: u64| {
        let mut b = m.to_ne_bytes().to_vec();
        b.extend(s.to_ne_bytes());
        t.put(&b)
    };
    assert_eq!(t.k.io_pgetevents(ctx, 0, 1, out, 0, sig(mask, 8)), Ok(0));
    assert_eq!(
        t.k.io_pgetevents(ctx, 0, 1, out, 0, sig(mask, 16)),
        Err(Errno::EINVAL)
    );
    // A null mask skips the size check.
    assert_eq!(t.k.io_pgetevents(ctx, 0, 1, out, 0, sig(0, 16)), Ok(0));
    assert_eq!(
        t.k.io_pgetevents(ctx, 0, 1, out, 0, sig(8, 8)),
        Err(Errno::EFAULT)
    );
    assert_eq!(t.k.io_pgetevents(ctx, 0, 1, out, 0, 8), Err(Errno::EFAULT));
    // The sigset is checked before the context.
    assert_eq!(
        t.k.io_pgetevents(0, 0, 1, out, 0, sig(mask, 9)),
        Err(Errno::EINVAL)
    );
}

// ---- poll, cancel, eventfd, destroy ----

#[test]
fn poll_ready_now_waiting_and_cancelled() {
    let t = T::new(1);
    let ctx = t.setup(8);
    let f = t.file(3, vec![], MockFile::regular());
    *f.ready.lock().unwrap() = PollEvents::OUT;
    assert_eq!(t.submit1(ctx, Iocb::poll(3, PollEvents::OUT)), Ok(1));
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 4);
    // Bad fields.
    let mut p = Iocb::poll(3, PollEvents::IN);
    p.aio_buf = 0x10000;
    assert_eq!(t.submit1(ctx, p), Err(Errno::EINVAL));
    let mut p = Iocb::poll(3, PollEvents::IN);
    p.aio_nbytes = 1;
    assert_eq!(t.submit1(ctx, p), Err(Errno::EINVAL));
    // Waits; a wake-up outside the mask is ignored; one event only.
    let (r, addrs) = t.submit(ctx, &[Iocb::poll(3, PollEvents::IN).with_data(7)]);
    assert_eq!(r, Ok(1));
    f.set_ready(PollEvents::OUT);
    assert_eq!(t.getevents(ctx, 0, 1, None).unwrap().len(), 0);
    f.set_ready(PollEvents::IN | PollEvents::OUT);
    let ev = t.getevents(ctx, 1, 1, None).unwrap();
    // A wake-up reports its whole mask, as Linux's aio_poll_wake does.
    assert_eq!((ev[0].data, ev[0].obj, ev[0].res), (7, addrs[0], 5));
    f.set_ready(PollEvents::IN);
    assert_eq!(t.getevents(ctx, 0, 1, None).unwrap().len(), 0);
    assert_eq!(t.k.io_cancel(ctx, addrs[0], 0), Err(Errno::EINVAL));
    // Cancel: EINPROGRESS, then an event with res 0.
    *f.ready.lock().unwrap() = PollEvents::EMPTY;
    let (_, addrs) = t.submit(ctx, &[Iocb::poll(3, PollEvents::IN).with_data(9)]);
    assert_eq!(t.k.io_cancel(ctx, addrs[0], 0), Err(Errno::EINPROGRESS));
    let ev = t.getevents(ctx, 1, 1, None).unwrap();
    assert_eq!((ev[0].data, ev[0].res), (9, 0));
    assert!(f.waiters.lock().unwrap().is_empty());
    assert_eq!(t.k.io_cancel(ctx, addrs[0], 0), Err(Errno::EINVAL));
    // io_cancel's own checks: NULL iocb, nonzero key, bad context.
    assert_eq!(t.k.io_cancel(ctx, 0, 0), Err(Errno::EFAULT));
    let keyed = t.put(Iocb::pread(3, 0, 0, 0).with_data(1).as_bytes());
    t.host.mem.write(keyed + 8, &1u32.to_ne_bytes()).unwrap();
    assert_eq!(t.k.io_cancel(ctx, keyed, 0), Err(Errno::EINVAL));
    assert_eq!(t.k.io_cancel(0, addrs[0], 0), Err(Errno::EINVAL));
    // A queued read cannot be cancelled.
    let g = t.file(4, pattern(10), MockFile::regular());
    g.push(&[Step::Queue]);
    let buf = t.alloc(10);
    let (_, addrs) = t.submit(ctx, &[Iocb::pread(4, buf, 1, 0)]);
    assert_eq!(t.k.io_cancel(ctx, addrs[0], 0), Err(Errno::EINVAL));
    g.finish_queued();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 1);
}

#[test]
fn poll_on_a_file_without_poll() {
    let t = T::new(1);
    let ctx = t.setup(8);
    let mode = FileMode {
        has_poll: false,
        ..MockFile::regular()
    };
    t.file(3, vec![], mode);
    assert_eq!(t.submit1(ctx, Iocb::poll(3, PollEvents::IN)), Ok(1));
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 1);
    assert_eq!(
        t.submit1(ctx, Iocb::poll(3, PollEvents::PRI)),
        Err(Errno::EINVAL)
    );
}

#[test]
fn eventfd_is_signalled_after_the_event() {
    let t = T::new(1);
    let ctx = t.setup(8);
    t.file(3, pattern(10), MockFile::regular());
    let efd = t.host.add_eventfd(9);
    let buf = t.alloc(10);
    t.submit1(ctx, Iocb::pread(3, buf, 4, 0).with_eventfd(9))
        .unwrap();
    t.submit1(ctx, Iocb::fsync(3).with_eventfd(9)).unwrap();
    assert_eq!(efd.count.load(Ordering::SeqCst), 2);
    let mut poll = Iocb::poll(3, PollEvents::IN).with_eventfd(9);
    poll.aio_flags |= IocbFlags(0x100);
    t.submit1(ctx, poll).unwrap();
    assert_eq!(efd.count.load(Ordering::SeqCst), 3);
    assert_eq!(t.getevents(ctx, 3, 3, None).unwrap().len(), 3);
}

#[test]
fn destroy_cancels_polls_and_waits_for_io() {
    let t = T::new(1);
    let ctx = t.setup(8);
    let f = t.file(3, pattern(10), MockFile::regular());
    *f.ready.lock().unwrap() = PollEvents::EMPTY;
    let buf = t.alloc(10);
    f.push(&[Step::Queue]);
    t.submit1(ctx, Iocb::poll(3, PollEvents::IN)).unwrap();
    t.submit1(ctx, Iocb::pread(3, buf, 4, 0)).unwrap();
    let f2 = f.clone();
    t.host.at(1000, move || f2.finish_queued());
    let t0 = t.host.now();
    assert_eq!(t.k.io_destroy(ctx), Ok(()));
    // It waited for the queued read.
    assert_eq!(t.host.now() - t0, 1000);
    assert_eq!(t.k.aio_nr(), 0);
    assert_eq!(t.submit1(ctx, Iocb::fsync(3)), Err(Errno::EINVAL));
}

#[test]
fn cancel_ends_a_parked_transfer_that_moved_nothing() {
    let t = T::new(1);
    let ctx = t.setup(8);
    let f = t.file(3, pattern(100), MockFile::regular());
    *f.ready.lock().unwrap() = PollEvents::EMPTY;
    f.push(&[Step::Block(0), Step::Block(4)]);
    let buf = t.alloc(10);
    let (r, addrs) = t.submit(
        ctx,
        &[
            Iocb::pread(3, buf, 10, 0).with_data(1),
            Iocb::pread(3, buf, 10, 0).with_data(2),
        ],
    );
    assert_eq!(r, Ok(2));
    assert_eq!(t.k.io_cancel(ctx, addrs[0], 0), Err(Errno::EINPROGRESS));
    assert_eq!(t.k.io_cancel(ctx, addrs[0], 0), Err(Errno::EINVAL));
    assert_eq!(t.k.io_cancel(ctx, addrs[1], 0), Err(Errno::EINVAL));
    let evs = t.getevents(ctx, 1, 8, Some((0, 0))).unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].data, evs[0].res), (1, Errno::ECANCELED.as_res()));
    assert_eq!(t.k.io_destroy(ctx), Ok(()));
}

#[test]
fn destroy_ends_transfers_waiting_for_readiness() {
    let t = T::new(1);
    let ctx = t.setup(8);
    let f = t.file(3, pattern(100), MockFile::regular());
    *f.ready.lock().unwrap() = PollEvents::EMPTY;
    f.push(&[Step::Block(0), Step::Block(4)]);
    let buf = t.alloc(10);
    let (r, addrs) = t.submit(
        ctx,
        &[Iocb::pread(3, buf, 10, 0), Iocb::pread(3, buf, 10, 0)],
    );
    assert_eq!(r, Ok(2));
    assert_eq!(f.waiters.lock().unwrap().len(), 2);
    // The second one moved 4 bytes before it parked: not cancellable.
    assert_eq!(t.k.io_cancel(ctx, addrs[1], 0), Err(Errno::EINVAL));
    // io_destroy does not wait for readiness that may never come.
    assert_eq!(t.k.io_destroy(ctx), Ok(()));
    assert!(f.waiters.lock().unwrap().is_empty());
}

#[test]
fn fsync_queued_and_failing() {
    let t = T::new(1);
    let ctx = t.setup(8);
    let f = t.file(3, vec![], MockFile::regular());
    *f.fsync_status.lock().unwrap() = Some(IoStatus::Error(Errno::EIO));
    t.submit1(ctx, Iocb::fsync(3)).unwrap();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, -5);
    *f.fsync_status.lock().unwrap() = Some(IoStatus::Queued);
    t.submit1(ctx, Iocb::fdsync(3)).unwrap();
    assert_eq!(t.getevents(ctx, 0, 1, None).unwrap().len(), 0);
    f.finish_queued();
    assert_eq!(t.getevents(ctx, 1, 1, None).unwrap()[0].res, 0);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any segment layout and any sequence of stops delivers exactly the
        /// file's bytes, in order, to the segments.
        #[test]
        fn vectored_read_resumes_correctly(
            lens in proptest::collection::vec(0u64..40, 1..12),
            stops in proptest::collection::vec((any::<bool>(), 0usize..50), 0..8),
            off in 0i64..50,
        ) {
            let t = T::new(2);
            let ctx = t.setup(8);
            let data = pattern(1000);
            let f = t.file(3, data.clone(), MockFile::regular());
            let steps: Vec<Step> = stops
                .iter()
                .map(|&(b, n)| if b { Step::Block(n) } else { Step::Short(n.max(1)) })
                .collect();
            f.push(&steps);
            let (iov, bufs) = t.iovecs(&lens);
            t.submit1(ctx, Iocb::preadv(3, iov, lens.len() as u64, off)).unwrap();
            for _ in 0..steps.len() + 1 {
                if t.getevents(ctx, 0, 1, None).map(|e| e.len()).unwrap_or(0) == 1 {
                    // Completed: check below with a fresh read of the buffers.
                    let mut o = off as usize;
                    for (b, &l) in bufs.iter().zip(&lens) {
                        prop_assert_eq!(t.get(*b, l as usize), data[o..o + l as usize].to_vec());
                        o += l as usize;
                    }
                    return Ok(());
                }
                f.set_ready(PollEvents::IN);
            }
            prop_assert!(false, "never completed");
        }
    }
}
