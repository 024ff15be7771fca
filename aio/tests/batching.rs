//! Batching, back-pressure and ring reaping, shown with `Context::stats`.

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::os::unix::fs::FileExt;

use aio::{AlignedBuf, Context, Driver, Poll, PollEvents, Read, Reap};
use common::{pattern, pipe, scratch_in, shm_dir};

#[test]
fn thirty_two_queued_requests_take_one_io_submit() {
    let mut s = scratch_in(&shm_dir(), false);
    s.file.write_all(&[7u8; 32 * 512]).unwrap();
    let file = s.shared();
    let ctx = Context::new(64).unwrap();
    let tickets: Vec<_> = (0..32u64)
        .map(|i| ctx.push(Read::new(file.clone(), vec![0u8; 512], i * 512)))
        .collect();
    assert_eq!(ctx.stats().submit_calls, 0, "push must not submit");
    assert_eq!(ctx.submit(), 32);
    let stats = ctx.stats();
    assert_eq!((stats.requests, stats.submitted), (32, 32));
    assert_eq!(stats.submit_calls, 1, "{stats:?}");
    for t in tickets {
        let (n, buf) = t.wait();
        assert_eq!(n.unwrap(), 512);
        assert!(buf.iter().all(|&b| b == 7));
    }
    assert_eq!(ctx.stats().submit_calls, 1);
}

#[test]
fn completions_come_from_the_ring_without_syscalls() {
    // Buffered tmpfs reads complete inside io_submit: their events are in
    // the ring when it returns, so reaping needs no io_getevents.
    let mut s = scratch_in(&shm_dir(), false);
    s.file.write_all(&[1u8; 4096]).unwrap();
    let ctx = Context::builder()
        .queue_depth(16)
        .reap(Reap::Ring)
        .build()
        .unwrap();
    assert!(ctx.reaps_ring());
    for _ in 0..100 {
        let (n, _) = ctx.run(Read::new(&s.file, vec![0u8; 4096], 0));
        assert_eq!(n.unwrap(), 4096);
    }
    let stats = ctx.stats();
    assert_eq!(stats.getevents_calls, 0, "{stats:?}");
    assert_eq!(stats.completions, 100);
    assert!(stats.ring_reaps >= 1);
}

fn ten_thousand_through_depth_64(reap: Reap) {
    const N: u64 = 10_000;
    let s = scratch_in(&shm_dir(), false);
    // Each 8-byte record holds its own index.
    let mut data = Vec::with_capacity(N as usize * 8);
    for i in 0..N {
        data.extend_from_slice(&i.to_le_bytes());
    }
    s.file.write_all_at(&data, 0).unwrap();
    let file = s.shared();
    let ctx = Context::builder()
        .queue_depth(64)
        .reap(reap)
        .build()
        .unwrap();
    let tickets: Vec<_> = (0..N)
        .map(|i| ctx.push(Read::new(file.clone(), vec![0u8; 8], i * 8)))
        .collect();
    assert_eq!(ctx.queued(), N as usize);
    let mut seen = HashSet::new();
    for (i, t) in tickets.into_iter().enumerate() {
        let (n, buf) = t.wait();
        assert_eq!(n.unwrap(), 8);
        let got = u64::from_le_bytes(buf.try_into().unwrap());
        assert_eq!(got, i as u64, "request {i} got record {got}");
        assert!(seen.insert(got), "record {got} delivered twice");
        assert!(ctx.in_flight() <= 64);
    }
    assert_eq!(seen.len(), N as usize);
    let stats = ctx.stats();
    assert_eq!(
        (stats.requests, stats.submitted, stats.completions),
        (N, N, N)
    );
    // Split only at the depth: at least N/64 calls, and not one per request.
    assert!(stats.submit_calls >= N / 64, "{stats:?}");
    assert!(stats.submit_calls <= N / 2, "{stats:?}");
    assert_eq!((ctx.in_flight(), ctx.queued()), (0, 0));
}

#[test]
fn ten_thousand_requests_through_depth_64_ring() {
    ten_thousand_through_depth_64(Reap::Ring);
}

#[test]
fn ten_thousand_requests_through_depth_64_syscall() {
    ten_thousand_through_depth_64(Reap::Syscall);
}

#[test]
fn dropped_tickets_still_run_and_release_their_slots() {
    let s = scratch_in(&shm_dir(), false);
    let file = s.shared();
    let ctx = Context::new(8).unwrap();
    for i in 0..100u64 {
        drop(ctx.push(aio::Write::new(file.clone(), vec![i as u8; 10], i * 10)));
    }
    ctx.drain();
    let mut back = vec![0u8; 1000];
    s.file.read_exact_at(&mut back, 0).unwrap();
    for i in 0..100 {
        assert!(back[i * 10..i * 10 + 10].iter().all(|&b| b == i as u8));
    }
    assert_eq!(ctx.stats().completions, 100);
}

#[test]
fn eventfd_counts_completions() {
    let s = scratch_in(&shm_dir(), false);
    let ctx = Context::builder()
        .queue_depth(8)
        .eventfd(true)
        .build()
        .unwrap();
    for i in 0..3u64 {
        let (n, _) = ctx.run(aio::Write::new(&s.file, vec![1u8; 4], i * 4));
        assert_eq!(n.unwrap(), 4);
    }
    let fd = ctx.eventfd().expect("eventfd requested");
    let mut count = [0u8; 8];
    // SAFETY: reads 8 bytes into a local buffer.
    let n = unsafe {
        libc::read(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            count.as_mut_ptr().cast(),
            8,
        )
    };
    assert_eq!(n, 8);
    assert_eq!(u64::from_ne_bytes(count), 3);
}

#[test]
fn a_context_with_requests_in_flight_moves_to_another_thread() {
    let mut s = scratch_in(&shm_dir(), false);
    s.file.write_all(&[4u8; 64 * 1024]).unwrap();
    let file = s.shared();
    let ctx = Context::new(16).unwrap();
    for i in 0..16u64 {
        drop(ctx.push(Read::new(file.clone(), vec![0u8; 4096], i * 4096)));
    }
    ctx.submit();
    let ctx = std::thread::spawn(move || {
        ctx.drain();
        ctx
    })
    .join()
    .unwrap();
    assert_eq!(ctx.stats().completions, 16);
}

/// Pushes 32 reads of 4 KiB from `file` (holding `data`), submits them
/// once, checks them; returns the `io_submit` calls that took.
fn thirty_two_reads(ctx: &Context, file: &std::fs::File, data: &[u8]) -> u64 {
    let before = ctx.stats().submit_calls;
    ctx.scope(|s| {
        let tickets: Vec<_> = (0..32u64)
            .map(|i| {
                let at = (i * 4096 * 5) % data.len() as u64;
                (at, s.push(Read::new(file, AlignedBuf::new(4096, 4096), at)))
            })
            .collect();
        assert_eq!(s.submit(), 32);
        let calls = ctx.stats().submit_calls - before;
        for (at, t) in tickets {
            let (n, buf) = t.wait();
            assert_eq!(n.unwrap(), 4096);
            let at = at as usize;
            assert!(buf[..] == data[at..at + 4096], "read at {at}");
        }
        calls
    })
}

/// A kernel context that submits in calls of 8 or more on a device.
fn split_by_eight() -> Context {
    Context::builder()
        .driver(Driver::Kernel)
        .queue_depth(64)
        .submit_batch(8)
        .build()
        .unwrap()
}

/// Polls `n` empty pipes, which complete only when written to (never
/// inside io_submit, as reads of a slow device); returns the `io_submit`
/// calls their one submission took.
fn polls_of_empty_pipes(ctx: &Context, n: usize) -> u64 {
    let before = ctx.stats().submit_calls;
    let (polls, writers): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| {
            let (r, w) = pipe();
            (ctx.push(Poll::new(r, PollEvents::IN)), w)
        })
        .unzip();
    assert_eq!(ctx.submit(), n);
    let calls = ctx.stats().submit_calls - before;
    for w in &writers {
        (&*w).write_all(b"x").unwrap();
    }
    for p in polls {
        assert!(p.wait().unwrap().contains(PollEvents::IN));
    }
    calls
}

#[test]
fn requests_done_after_io_submit_go_in_calls_of_submit_batch() {
    let ctx = split_by_eight();
    assert_eq!(polls_of_empty_pipes(&ctx, 32), 4);
    // 17 go in two calls (9 and 8): never fewer than `submit_batch`.
    assert_eq!(polls_of_empty_pipes(&ctx, 17), 2);
}

#[test]
fn requests_done_inside_io_submit_go_in_one_call_despite_submit_batch() {
    let mut s = scratch_in(&shm_dir(), false);
    let data = pattern(1 << 20, 12);
    s.file.write_all(&data).unwrap();
    let ctx = split_by_eight();
    // The first submission learns that tmpfs completes them inline.
    thirty_two_reads(&ctx, &s.file, &data);
    for round in 0..3 {
        assert_eq!(thirty_two_reads(&ctx, &s.file, &data), 1, "round {round}");
    }
}
