//! Reaping from the mapped ring agrees with io_getevents, across
//! wrap-around, with completions arriving while reaping, and when the ring
//! is full.

mod common;

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use aio_sys::abi::{Errno, IoEvent, Iocb, ring_layout};
use aio_sys::{RingView, io_getevents};
use common::*;

/// The events of `n` small buffered writes, each submitted alone so the
/// ring order is the submission order, reaped in batches of `batch`
/// through the ring (`use_ring`) or through io_getevents.
fn events_of_writes(n: usize, batch: usize, use_ring: bool) -> Vec<IoEvent> {
    let ctx = Ctx::new(8);
    let file = scratch_file();
    let data = [0xabu8; 64];
    // SAFETY: `ctx` outlives the view.
    let mut ring = unsafe { RingView::new(ctx.0) };
    assert!(ring.is_mapped(), "the kernel's ring should be usable");
    // Buffered writes complete inside io_submit; the iocb addresses are
    // fixed so `obj` compares between the two runs.
    let mut iocbs: Vec<Iocb> = vec![Iocb::default(); batch];
    let mut out = Vec::with_capacity(n);
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        for (j, iocb) in iocbs[..k].iter_mut().enumerate() {
            let len = 1 + (sent + j) % 64;
            *iocb = Iocb::pwrite(
                file.as_raw_fd(),
                data.as_ptr() as u64,
                len as u64,
                (sent + j) as i64,
            )
            .with_data((sent + j) as u64);
        }
        for iocb in &mut iocbs[..k] {
            assert_eq!(ctx.submit(std::slice::from_mut(iocb)), Ok(1));
        }
        let mut evs = vec![IoEvent::default(); k];
        let got = if use_ring {
            let r = ring.try_reap(&mut evs);
            assert_eq!(r, k, "events of completed buffered writes are in the ring");
            r
        } else {
            // SAFETY: the view of this context is not reaping during the call.
            unsafe { io_getevents(ctx.0, k, &mut evs, Some(Duration::from_secs(5))) }.unwrap()
        };
        assert_eq!(got, k);
        out.extend(evs.into_iter().map(|mut e| {
            // `obj` is an address in this run's vector: keep the slot index.
            e.obj = (e.obj - iocbs.as_ptr() as u64) / 64;
            e
        }));
        sent += k;
    }
    out
}

#[test]
fn ring_reaping_equals_io_getevents_across_wraparound() {
    // io_setup(8) gives a ring of at least 127 events; 5000 requests wrap it
    // dozens of times, in batches that straddle the end.
    let by_ring = events_of_writes(5000, 7, true);
    let by_syscall = events_of_writes(5000, 7, false);
    assert_eq!(by_ring.len(), 5000);
    assert_eq!(by_ring, by_syscall);
    for (i, e) in by_ring.iter().enumerate() {
        assert_eq!((e.data, e.res, e.res2), (i as u64, 1 + (i % 64) as i64, 0));
    }
}

#[test]
fn ring_capacity_matches_io_setup_geometry() {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            // "0-N" or "0"
            let last = s.trim().rsplit(['-', ',']).next()?.parse::<u32>().ok()?;
            Some(last + 1)
        })
        .expect("possible CPUs");
    for nr in [1u32, 8, 128, 1000] {
        let ctx = Ctx::new(nr);
        // SAFETY: `ctx` outlives the view.
        let ring = unsafe { RingView::new(ctx.0) };
        let expect = ring_layout::for_request(nr, cpus, 4096).unwrap();
        assert_eq!(
            ring.capacity(),
            Some(expect.ring_nr),
            "io_setup({nr}) on {cpus} CPUs"
        );
    }
}

#[test]
fn ring_reaping_with_completions_arriving() {
    // O_DIRECT reads complete in the block layer while we reap.
    let file = match scratch_file_in(&scratch_dir(), true) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "skipping: O_DIRECT refused in {}: {e}",
                scratch_dir().display()
            );
            return;
        }
    };
    let mut data = Aligned::new(1 << 20, 4096);
    pattern(data.as_mut_slice(), 3);
    let ctx = Ctx::new(64);
    ctx.run(Iocb::pwrite(
        file.as_raw_fd(),
        data.as_mut_slice().as_ptr() as u64,
        1 << 20,
        0,
    ))
    .unwrap();
    // SAFETY: `ctx` outlives the view.
    let mut ring = unsafe { RingView::new(ctx.0) };
    const TOTAL: usize = 4000;
    const DEPTH: usize = 48;
    let mut bufs: Vec<Aligned> = (0..DEPTH).map(|_| Aligned::new(4096, 4096)).collect();
    let mut iocbs = vec![Iocb::default(); DEPTH];
    let mut free: Vec<usize> = (0..DEPTH).collect();
    let mut seen = HashSet::new();
    let mut submitted = 0;
    let mut evs = [IoEvent::default(); 16];
    let start = Instant::now();
    while seen.len() < TOTAL {
        while submitted < TOTAL && !free.is_empty() {
            let slot = free.pop().unwrap();
            let block = (submitted * 7) % 256;
            iocbs[slot] = Iocb::pread(
                file.as_raw_fd(),
                bufs[slot].as_mut_slice().as_mut_ptr() as u64,
                4096,
                (block * 4096) as i64,
            )
            .with_data(((submitted as u64) << 8) | slot as u64);
            assert_eq!(ctx.submit(&mut iocbs[slot..slot + 1]), Ok(1));
            submitted += 1;
        }
        // Mostly ring reaps; sleep in the syscall only when it is empty.
        let n = ring
            .get_events(1, &mut evs, Some(Duration::from_secs(10)))
            .unwrap();
        assert!(n > 0, "no completion within 10 s");
        for e in &evs[..n] {
            let (req, slot) = ((e.data >> 8) as usize, (e.data & 0xff) as usize);
            assert!(seen.insert(req), "request {req} reported twice");
            assert_eq!(e.obj, &iocbs[slot] as *const Iocb as u64);
            assert_eq!(e.res, 4096);
            let block = (req * 7) % 256;
            let got = &bufs[slot].as_mut_slice()[..];
            let want = &data.as_mut_slice()[block * 4096..(block + 1) * 4096];
            assert!(got == want, "request {req} read the wrong data");
            free.push(slot);
        }
        assert!(start.elapsed() < Duration::from_secs(60));
    }
    assert_eq!(seen.len(), TOTAL);
    assert_eq!(ring.ready(), 0);
}

#[test]
fn full_ring_is_back_pressure_not_loss() {
    let ctx = Ctx::new(1);
    // SAFETY: `ctx` outlives the view.
    let mut ring = unsafe { RingView::new(ctx.0) };
    let cap = ring.capacity().unwrap() as usize;
    let file = scratch_file();
    let byte = [7u8; 1];
    const TOTAL: usize = 3000;
    let mut iocbs: Vec<Iocb> = (0..TOTAL)
        .map(|i| {
            Iocb::pwrite(file.as_raw_fd(), byte.as_ptr() as u64, 1, i as i64).with_data(i as u64)
        })
        .collect();
    let mut next = 0;
    let mut seen = vec![false; TOTAL];
    let mut reaped = 0;
    let mut saw_pressure = false;
    let mut evs = vec![IoEvent::default(); 64];
    while reaped < TOTAL {
        // Offer everything that is left; the kernel takes what fits.
        if next < TOTAL {
            match ctx.submit(&mut iocbs[next..]) {
                Ok(n) => {
                    assert!(n > 0);
                    saw_pressure |= next + n < TOTAL;
                    next += n;
                }
                Err(Errno::EAGAIN) => saw_pressure = true,
                Err(e) => panic!("io_submit: {e}"),
            }
        }
        // Outstanding requests never exceed what the ring can hold.
        assert!(
            next - reaped < cap,
            "{} in flight, ring holds {cap}",
            next - reaped
        );
        let n = ring
            .get_events(1, &mut evs, Some(Duration::from_secs(10)))
            .unwrap();
        for e in &evs[..n] {
            assert!(
                !std::mem::replace(&mut seen[e.data as usize], true),
                "event {} twice",
                e.data
            );
            assert_eq!(e.res, 1);
        }
        reaped += n;
    }
    assert!(
        saw_pressure,
        "3000 requests on a ring of {cap} must meet a full ring"
    );
    assert!(seen.iter().all(|&s| s));
    assert_eq!(
        std::fs::metadata(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .unwrap()
            .len(),
        TOTAL as u64
    );
}

#[test]
fn syscall_only_view_never_reads_the_ring() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    // SAFETY: the only reaper of the context.
    let mut view = unsafe { RingView::syscall_only(ctx.0) };
    assert!(!view.is_mapped());
    ctx.submit(&mut [Iocb::fsync(file.as_raw_fd()).with_data(9)])
        .unwrap();
    let mut evs = [IoEvent::default(); 1];
    assert_eq!(view.try_reap(&mut evs), 0);
    assert_eq!(
        view.get_events(1, &mut evs, Some(Duration::from_secs(5))),
        Ok(1)
    );
    assert_eq!(evs[0].data, 9);
}
