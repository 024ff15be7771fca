//! Every operation on tmpfs (buffered), on a buffered and an `O_DIRECT`
//! file in the scratch directory (the root filesystem unless
//! `AIO_TEST_DIR` says otherwise), and on a raw block device (`O_DIRECT`),
//! through each driver (`Auto`, the kernel, the engine): data written with
//! one segment layout reads back byte-exact through another.

mod common;

use std::fs::File;

use aio::{AlignedBuf, Context, Driver, Fdatasync, Fsync, Read, ReadV, Write, WriteV};
use common::{
    BlockDevice, DRIVERS, Scratch, bufs_from, concat, context_on, direct_scratch_in, layout,
    pattern, scratch_dir, scratch_in, shm_dir,
};
use proptest::prelude::*;

/// A file to test on and the granularity its requests must respect.
struct Target {
    file: File,
    /// Segment lengths and offsets are multiples of this.
    unit: usize,
    /// Buffer alignment.
    mem_align: usize,
    /// Bytes used by one round trip.
    total: usize,
    _scratch: Option<Scratch>,
    _device: Option<BlockDevice>,
}

fn tmpfs() -> Target {
    let s = scratch_in(&shm_dir(), false);
    Target {
        file: s.file.try_clone().unwrap(),
        unit: 1,
        mem_align: 1,
        total: 1 << 20,
        _scratch: Some(s),
        _device: None,
    }
}

/// A buffered file on the filesystem under test: `Auto` reads it in the
/// kernel with `RWF_NOWAIT` (or, where the filesystem refuses that, on the
/// engine) and writes it on the engine.
fn buffered_file() -> Target {
    let s = scratch_in(&scratch_dir(), false);
    Target {
        file: s.file.try_clone().unwrap(),
        unit: 1,
        mem_align: 1,
        total: 1 << 20,
        _scratch: Some(s),
        _device: None,
    }
}

fn direct_file() -> Option<Target> {
    let s = direct_scratch_in(&scratch_dir())?;
    let a = aio::dio_alignment(&s.file).expect("dio alignment of the scratch file");
    Some(Target {
        file: s.file.try_clone().unwrap(),
        unit: a.offset,
        mem_align: a.memory.max(8),
        total: 256 * a.offset,
        _scratch: Some(s),
        _device: None,
    })
}

fn raw_device() -> Option<Target> {
    let dev = BlockDevice::get(64 << 20)?;
    let file = dev.open(true);
    let a = aio::dio_alignment(&file).expect("dio alignment of the device");
    Some(Target {
        file,
        unit: a.offset,
        mem_align: a.memory.max(8),
        total: 256 * a.offset,
        _scratch: None,
        _device: Some(dev),
    })
}

/// Writes with layout `seed_w`, reads back with layout `seed_r`, both
/// vectored, at `offset`.
fn vectored_round_trip(ctx: &Context, t: &Target, offset: u64, seed_w: u64, seed_r: u64) {
    let data = pattern(t.total, seed_w ^ seed_r);
    let wl = layout(t.total, t.unit, seed_w);
    let rl = layout(t.total, t.unit, seed_r);
    let (n, _) = ctx.run(WriteV::new(
        &t.file,
        bufs_from(&data, &wl, t.mem_align),
        offset,
    ));
    assert_eq!(n.expect("writev"), t.total);
    let zero: Vec<AlignedBuf> = rl
        .iter()
        .map(|&l| AlignedBuf::new(l, t.mem_align))
        .collect();
    let (n, back) = ctx.run(ReadV::new(&t.file, zero, offset));
    assert_eq!(n.expect("readv"), t.total);
    assert!(concat(&back) == data, "layouts {wl:?} -> {rl:?} differ");
}

fn every_operation(t: &Target) {
    for driver in DRIVERS {
        every_operation_on(t, driver);
    }
}

fn every_operation_on(t: &Target, driver: Driver) {
    let ctx = context_on(driver, 64);
    // Vectored in, vectored out, two different layouts.
    vectored_round_trip(&ctx, t, 0, 1, 2);

    // Vectored in, one segment out.
    let (n, whole) = ctx.run(Read::new(&t.file, AlignedBuf::new(t.total, t.mem_align), 0));
    assert_eq!(n.unwrap(), t.total);
    assert!(whole[..] == pattern(t.total, 1 ^ 2)[..]);

    // One segment in, vectored out, at a nonzero offset.
    let offset = t.total as u64;
    let data = pattern(t.total, 77);
    let (n, _) = ctx.run(Write::new(
        &t.file,
        AlignedBuf::from_slice(&data, t.mem_align),
        offset,
    ));
    assert_eq!(n.unwrap(), t.total);
    let rl = layout(t.total, t.unit, 3);
    let zero: Vec<AlignedBuf> = rl
        .iter()
        .map(|&l| AlignedBuf::new(l, t.mem_align))
        .collect();
    let (n, back) = ctx.run(ReadV::new(&t.file, zero, offset));
    assert_eq!(n.unwrap(), t.total);
    assert!(concat(&back) == data);

    ctx.run(Fsync::new(&t.file))
        .expect("fsync completes with 0");
    ctx.run(Fdatasync::new(&t.file))
        .expect("fdatasync completes with 0");

    // Borrowed buffers through a scope, in a third and fourth layout.
    let data = pattern(t.total, 5);
    let src = AlignedBuf::from_slice(&data, t.mem_align);
    let mut dst = AlignedBuf::new(t.total, t.mem_align);
    let wl = layout(t.total, t.unit, 11);
    let rl = layout(t.total, t.unit, 12);
    ctx.scope(|s| {
        let mut rest: &[u8] = &src;
        let mut segs = Vec::new();
        for &l in &wl {
            let (a, b) = rest.split_at(l);
            segs.push(a);
            rest = b;
        }
        assert_eq!(s.writev_at(&t.file, segs, 0).wait().0.unwrap(), t.total);
        let mut rest: &mut [u8] = &mut dst;
        let mut segs = Vec::new();
        for &l in &rl {
            let (a, b) = rest.split_at_mut(l);
            segs.push(a);
            rest = b;
        }
        s.readv_at(&t.file, segs, 0);
    });
    assert!(dst[..] == data[..]);

    // The driver asked for is the one that ran the requests.
    let st = ctx.stats();
    match driver {
        Driver::Kernel => assert_eq!(st.engine_submitted, 0, "{st:?}"),
        Driver::Engine => assert_eq!(st.engine_submitted, st.submitted, "{st:?}"),
        // A request the kernel answered EAGAIN (or a short count) under
        // Auto's RWF_NOWAIT is submitted again, to the engine.
        _ => assert_eq!(st.submitted, st.requests + st.nowait_retries, "{st:?}"),
    }
}

#[test]
fn every_operation_on_tmpfs() {
    every_operation(&tmpfs());
}

#[test]
fn every_operation_on_a_buffered_file() {
    every_operation(&buffered_file());
}

#[test]
fn every_operation_on_an_o_direct_file() {
    if let Some(t) = direct_file() {
        every_operation(&t);
    }
}

#[test]
fn every_operation_on_a_raw_block_device() {
    if let Some(t) = raw_device() {
        every_operation(&t);
    }
}

#[test]
fn odd_segment_sizes_on_tmpfs() {
    // Buffered I/O takes any sizes: 1 byte, page-straddling, large.
    for (t, driver) in DRIVERS.map(|d| (tmpfs(), d)) {
        let ctx = context_on(driver, 8);
        let lens = [1usize, 4095, 4097, 65_537, 3, 200_000];
        let total: usize = lens.iter().sum();
        let data = pattern(total, 9);
        let (n, _) = ctx.run(WriteV::new(&t.file, bufs_from(&data, &lens, 1), 7));
        assert_eq!(n.unwrap(), total);
        let back = vec![vec![0u8; 100_000], vec![0u8; total - 100_000]];
        let (n, back) = ctx.run(ReadV::new(&t.file, back, 7));
        assert_eq!(n.unwrap(), total, "{driver:?}");
        assert!(back.concat() == data, "{driver:?}");
    }
}

#[test]
fn layouts_stay_within_uio_maxiov() {
    // This seed drew 1031 segments for 1 MiB before `layout` capped them,
    // and the readv of any_two_layouts_agree_on_tmpfs failed with EINVAL.
    let l = layout(1 << 20, 1, 316986122782490429);
    assert!(l.len() <= 1024, "{} segments", l.len());
    assert_eq!(l.iter().sum::<usize>(), 1 << 20);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn any_two_layouts_agree_on_tmpfs(
        w in any::<u64>(), r in any::<u64>(), off in 0u64..10_000, d in 0..DRIVERS.len()
    ) {
        let t = tmpfs();
        let ctx = context_on(DRIVERS[d], 16);
        vectored_round_trip(&ctx, &t, off, w, r);
    }

    #[test]
    fn any_two_layouts_agree_on_a_buffered_file(
        w in any::<u64>(), r in any::<u64>(), off in 0u64..10_000, d in 0..DRIVERS.len()
    ) {
        let t = buffered_file();
        let ctx = context_on(DRIVERS[d], 16);
        vectored_round_trip(&ctx, &t, off, w, r);
    }

    #[test]
    fn any_two_layouts_agree_with_o_direct(
        w in any::<u64>(), r in any::<u64>(), off in 0u64..64, d in 0..DRIVERS.len()
    ) {
        if let Some(t) = direct_file() {
            let ctx = context_on(DRIVERS[d], 16);
            vectored_round_trip(&ctx, &t, off * t.unit as u64, w, r);
        }
    }
}

#[test]
fn rw_flags_and_ioprio_reach_the_kernel() {
    for driver in DRIVERS {
        rw_flags_and_ioprio_on(driver);
    }
}

fn rw_flags_and_ioprio_on(driver: Driver) {
    use aio::{RwFlags, ioprio};
    let t = tmpfs();
    let ctx = context_on(driver, 8);
    let prio = ioprio::value(ioprio::CLASS_BE, 4);
    let (n, _) = ctx.run(
        Write::new(&t.file, b"flagged".to_vec(), 0)
            .rw_flags(RwFlags::DSYNC)
            .ioprio(prio),
    );
    assert_eq!(n.unwrap(), 7);
    let (n, buf) = ctx.run(
        ReadV::new(&t.file, vec![vec![0u8; 3], vec![0u8; 4]], 0)
            .rw_flags(RwFlags::HIPRI)
            .ioprio(prio),
    );
    assert_eq!(n.unwrap(), 7);
    assert_eq!(buf.concat(), b"flagged");
    // The idle class needs no privilege; an invalid class is refused.
    let (n, _) =
        ctx.run(Read::new(&t.file, vec![0u8; 7], 0).ioprio(ioprio::value(ioprio::CLASS_IDLE, 0)));
    assert_eq!(n.unwrap(), 7);
    let (r, _) = ctx.run(Read::new(&t.file, vec![0u8; 7], 0).ioprio(ioprio::value(7, 0)));
    assert_eq!(aio::errno(&r.unwrap_err()), Some(libc::EINVAL));
}
