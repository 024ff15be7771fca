//! PWRITEV then PREADV through a different segment layout, byte-exact, on
//! tmpfs, the scratch filesystem (buffered and O_DIRECT) and, when
//! `AIO_TEST_DEVICE` names one, a raw block device.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use aio_sys::abi::{Errno, IoVec, Iocb, UIO_MAXIOV};
use common::*;

/// Segments in separate allocations, so a misplaced copy cannot land in a
/// neighbour by accident.
struct Segments(Vec<Aligned>);

impl Segments {
    fn new(lens: &[usize], align: usize) -> Segments {
        Segments(lens.iter().map(|&l| Aligned::new(l, align)).collect())
    }

    fn fill_from(&mut self, data: &[u8]) {
        let mut off = 0;
        for seg in &mut self.0 {
            let s = seg.as_mut_slice();
            s.copy_from_slice(&data[off..off + s.len()]);
            off += s.len();
        }
    }

    fn iovecs(&mut self) -> Vec<IoVec> {
        self.0
            .iter_mut()
            .map(|seg| {
                let s = seg.as_mut_slice();
                IoVec {
                    iov_base: s.as_mut_ptr() as u64,
                    iov_len: s.len() as u64,
                }
            })
            .collect()
    }

    fn concat(&mut self) -> Vec<u8> {
        self.0
            .iter_mut()
            .flat_map(|s| s.as_mut_slice().to_vec())
            .collect()
    }
}

/// Writes `nsegs` unequal segments at `offset`, reads them back through
/// another layout, and compares.
fn round_trip(file: &File, nsegs: usize, unit: usize, offset: i64, seed: u64) {
    let ctx = Ctx::new(4);
    let mut rng = Rng(seed | 1);
    let total = unit * (nsegs + rng.below(nsegs as u64 + 3) as usize);
    let mut data = vec![0u8; total];
    pattern(&mut data, seed);

    let wlens = layout(total, nsegs, unit, &mut rng);
    let mut wsegs = Segments::new(&wlens, unit);
    wsegs.fill_from(&data);
    let wiov = wsegs.iovecs();
    let ev = ctx
        .run(
            Iocb::pwritev(
                file.as_raw_fd(),
                wiov.as_ptr() as u64,
                wiov.len() as u64,
                offset,
            )
            .with_data(7),
        )
        .expect("submit PWRITEV");
    assert_eq!(
        (ev.data, ev.res),
        (7, total as i64),
        "PWRITEV of {nsegs} segments"
    );

    // A different layout: another segment count and other cut points.
    let rsegs_n = if nsegs == 1 {
        1
    } else {
        1 + rng.below(nsegs as u64) as usize
    };
    let mut rlens = layout(total, rsegs_n, unit, &mut rng);
    if rlens == wlens && nsegs > 1 {
        rlens = layout(total, nsegs - 1, unit, &mut rng);
    }
    let mut rsegs = Segments::new(&rlens, unit);
    let riov = rsegs.iovecs();
    let ev = ctx
        .run(
            Iocb::preadv(
                file.as_raw_fd(),
                riov.as_ptr() as u64,
                riov.len() as u64,
                offset,
            )
            .with_data(8),
        )
        .expect("submit PREADV");
    assert_eq!(
        (ev.data, ev.res),
        (8, total as i64),
        "PREADV into {} segments",
        rlens.len()
    );
    let back = rsegs.concat();
    if let Some(i) = (0..total).find(|&i| back[i] != data[i]) {
        panic!(
            "{nsegs} segments written, {} read: first mismatch at byte {i}",
            rlens.len()
        );
    }
}

const SEGMENT_COUNTS: [usize; 5] = [1, 2, 7, 64, 1024];

#[test]
fn vectored_round_trips_on_tmpfs() {
    let file = scratch_file_in(&tmpfs_dir(), false).expect("tmpfs scratch file");
    for (i, n) in SEGMENT_COUNTS.into_iter().enumerate() {
        round_trip(&file, n, 1, 13 * i as i64, 0x5eed + i as u64);
    }
}

#[test]
fn vectored_round_trips_buffered_in_scratch_dir() {
    let file = scratch_file();
    for (i, n) in SEGMENT_COUNTS.into_iter().enumerate() {
        round_trip(&file, n, 1, 4093 * i as i64, 0xb0f + i as u64);
    }
}

/// The logical block size the scratch filesystem needs for O_DIRECT; 4096
/// covers every filesystem and device these tests meet.
const DIRECT_UNIT: usize = 4096;

#[test]
fn vectored_round_trips_direct_in_scratch_dir() {
    let file = match scratch_file_in(&scratch_dir(), true) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!(
                "skipping: {} refuses O_DIRECT (EINVAL)",
                scratch_dir().display()
            );
            return;
        }
        Err(e) => panic!("open O_DIRECT scratch file: {e}"),
    };
    for (i, n) in SEGMENT_COUNTS.into_iter().enumerate() {
        round_trip(
            &file,
            n,
            DIRECT_UNIT,
            (DIRECT_UNIT * 3 * i) as i64,
            0xd1 + i as u64,
        );
    }
}

#[test]
fn vectored_round_trips_direct_on_tmpfs() {
    // tmpfs accepts O_DIRECT since Linux 6.6.
    let file = match scratch_file_in(&tmpfs_dir(), true) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("skipping: this kernel's tmpfs refuses O_DIRECT (EINVAL)");
            return;
        }
        Err(e) => panic!("open O_DIRECT on tmpfs: {e}"),
    };
    for (i, n) in SEGMENT_COUNTS.into_iter().enumerate() {
        round_trip(
            &file,
            n,
            DIRECT_UNIT,
            (DIRECT_UNIT * i) as i64,
            0x7a + i as u64,
        );
    }
}

#[test]
fn vectored_round_trips_on_raw_device() {
    let Some(dev) = test_device() else {
        eprintln!("skipping: AIO_TEST_DEVICE is not set");
        return;
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_EXCL)
        .open(&dev)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT|O_EXCL: {e}", dev.display()));
    for (i, n) in SEGMENT_COUNTS.into_iter().enumerate() {
        round_trip(
            &file,
            n,
            DIRECT_UNIT,
            (DIRECT_UNIT * 1100 * i) as i64,
            0xde0 + i as u64,
        );
    }
}

#[test]
fn more_than_uio_maxiov_segments_is_einval() {
    let file = scratch_file();
    let ctx = Ctx::new(4);
    let mut byte = [0u8; 1025];
    let iov: Vec<IoVec> = byte
        .iter_mut()
        .map(|b| IoVec {
            iov_base: b as *mut u8 as u64,
            iov_len: 1,
        })
        .collect();
    assert_eq!(iov.len() as u64, UIO_MAXIOV + 1);
    for iocb in [
        Iocb::pwritev(file.as_raw_fd(), iov.as_ptr() as u64, 1025, 0),
        Iocb::preadv(file.as_raw_fd(), iov.as_ptr() as u64, 1025, 0),
    ] {
        assert_eq!(ctx.run(iocb).err(), Some(Errno::EINVAL));
    }
    // 1024 is the limit, and is accepted.
    let ev = ctx
        .run(Iocb::pwritev(
            file.as_raw_fd(),
            iov.as_ptr() as u64,
            1024,
            0,
        ))
        .unwrap();
    assert_eq!(ev.res, 1024);
}

#[test]
fn zero_segments_complete_with_zero() {
    let file = scratch_file();
    let ctx = Ctx::new(4);
    for iocb in [
        Iocb::pwritev(file.as_raw_fd(), 0, 0, 0),
        Iocb::preadv(file.as_raw_fd(), 0, 0, 0),
    ] {
        let ev = ctx
            .run(iocb.with_data(5))
            .expect("zero-segment request accepted");
        assert_eq!((ev.data, ev.res), (5, 0));
    }
    assert_eq!(file.metadata().unwrap().len(), 0);
}
