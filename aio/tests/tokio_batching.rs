//! The tokio driver: requests of futures polled together reach the kernel
//! in one `io_submit` (shown with the driver's counters), on both runtime
//! flavours; readiness of sockets and pipes through `IOCB_CMD_POLL`.
#![cfg(feature = "tokio")]

mod common;

use std::io::Write as _;
use std::os::fd::AsFd;
use std::time::Duration;

use aio::PollEvents;
use aio::tokio::{File, Handle};
use common::{pattern, pipe, scratch_in, shm_dir};
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;

const N: usize = 32;

fn data_file() -> (common::Scratch, Vec<u8>) {
    let mut s = scratch_in(&shm_dir(), false);
    let data = pattern(N * 512, 3);
    s.file.write_all(&data).unwrap();
    (s, data)
}

fn check(results: Vec<(std::io::Result<usize>, Vec<u8>)>, data: &[u8]) {
    for (i, (n, buf)) in results.into_iter().enumerate() {
        assert_eq!(n.unwrap(), 512);
        assert_eq!(&buf[..], &data[i * 512..(i + 1) * 512], "read {i}");
    }
}

/// The most `io_submit` calls 32 requests queued in one pass may take. On
/// a current-thread runtime, one. On a multi-thread runtime the driver
/// task runs beside the queuing worker and submits a batch that stopped
/// growing for one of its passes, which a descheduled worker causes (on a
/// busy machine, often): how many calls that makes is up to the scheduler,
/// but requests still share calls, not one each.
fn most_calls() -> u64 {
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => 1,
        _ => N as u64 - 1,
    }
}

async fn thirty_two_reads_join_all() {
    let (s, data) = data_file();
    let handle = Handle::new().unwrap();
    let file = File::from_std_with(s.file.try_clone().unwrap(), &handle);
    let reads = (0..N).map(|i| file.read_at(vec![0u8; 512], (i * 512) as u64));
    check(join_all(reads).await, &data);
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.submitted), (N as u64, N as u64));
    assert!(stats.submit_calls <= most_calls(), "{stats:?}");
}

async fn thirty_two_reads_futures_unordered() {
    let (s, data) = data_file();
    let handle = Handle::new().unwrap();
    let file = File::from_std_with(s.file.try_clone().unwrap(), &handle);
    let mut reads: FuturesUnordered<_> = (0..N)
        .map(|i| {
            let f = file.read_at(vec![0u8; 512], (i * 512) as u64);
            async move { (i, f.await) }
        })
        .collect();
    let mut got: Vec<_> = (0..N).map(|_| None).collect();
    while let Some((i, r)) = reads.next().await {
        got[i] = Some(r);
    }
    check(got.into_iter().map(Option::unwrap).collect(), &data);
    assert!(
        handle.stats().submit_calls <= most_calls(),
        "{:?}",
        handle.stats()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn thirty_two_reads_one_io_submit_current_thread() {
    thirty_two_reads_join_all().await;
    thirty_two_reads_futures_unordered().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_reads_one_io_submit_multi_thread() {
    thirty_two_reads_join_all().await;
    thirty_two_reads_futures_unordered().await;
    // The same from inside a worker thread.
    tokio::spawn(thirty_two_reads_join_all()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_queue_depth_are_submitted_as_room_appears() {
    let (s, data) = data_file();
    let handle = Handle::builder().queue_depth(4).build().unwrap();
    let file = File::from_std_with(s.file.try_clone().unwrap(), &handle);
    let reads = (0..N).map(|i| file.read_at(vec![0u8; 512], (i * 512) as u64));
    check(join_all(reads).await, &data);
    let stats = handle.stats();
    assert_eq!(stats.submitted, N as u64);
    assert!(stats.submit_calls >= (N / 4) as u64, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_has_one_default_driver() {
    let a = Handle::current().unwrap();
    let b = tokio::spawn(async { Handle::current().unwrap() })
        .await
        .unwrap();
    let before = a.stats().requests;
    let (x, _y) = tokio::net::UnixStream::pair().unwrap();
    b.poll(x.as_fd(), PollEvents::OUT).await.unwrap();
    assert_eq!(a.stats().requests, before + 1);
}

async fn poll_readiness() {
    let handle = Handle::new().unwrap();
    // Socket pair: writable at once; readable only once the peer writes.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let ready = handle.poll(a.as_fd(), PollEvents::OUT).await.unwrap();
    assert!(ready.contains(PollEvents::OUT), "{ready:?}");
    let wait = tokio::spawn({
        let handle = handle.clone();
        let a = a.try_clone().unwrap();
        async move { handle.poll(a.as_fd(), PollEvents::IN).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!wait.is_finished(), "readable before the peer wrote");
    (&b).write_all(b"x").unwrap();
    let ready = wait.await.unwrap().unwrap();
    assert!(ready.contains(PollEvents::IN), "{ready:?}");

    // Pipe: readable once written; hang-up once the writer closes.
    let (rd, mut wr) = pipe();
    let pending = handle.poll(rd.as_fd(), PollEvents::IN);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        wr.write_all(b"ping").unwrap();
        wr
    });
    let ready = pending.await.unwrap();
    assert!(ready.contains(PollEvents::IN), "{ready:?}");
    drop(writer.await.unwrap());
    let mut rest = [0u8; 8];
    assert_eq!(std::io::Read::read(&mut &rd, &mut rest).unwrap(), 4);
    let ready = aio::tokio::poll(&rd, PollEvents::IN).await.unwrap();
    assert!(ready.contains(PollEvents::HUP), "{ready:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn poll_readiness_current_thread() {
    poll_readiness().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_readiness_multi_thread() {
    poll_readiness().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_waiting_poll_cancels_it() {
    let handle = Handle::new().unwrap();
    let (rd, _wr) = pipe();
    // Wait until the poll is in the kernel. (A fixed 20 ms was not always
    // enough under TCG on a loaded host: the future was dropped while still
    // queued, nothing was cancelled and no event came.)
    let mut poll = Box::pin(handle.poll(rd.as_fd(), PollEvents::IN));
    for _ in 0..2000 {
        let timed_out = tokio::time::timeout(Duration::from_millis(5), poll.as_mut()).await;
        assert!(timed_out.is_err(), "an empty pipe became readable");
        if handle.in_flight() == 1 {
            break;
        }
    }
    assert_eq!(handle.in_flight(), 1, "the poll never reached the kernel");
    drop(poll);
    // The drop asked the kernel to cancel the poll; its event (res 0)
    // releases the slot.
    for _ in 0..2000 {
        if handle.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.stats().completions, 1);
}

/// One request at a time (depth 1) is not held back for a batch: after a
/// batch of one, a future's first poll submits its request, and a read the
/// kernel finishes inside `io_submit` (page-cached, kernel driver) is ready
/// on that first poll.
#[tokio::test(flavor = "current_thread")]
async fn depth_one_requests_are_submitted_on_their_first_poll() {
    use std::future::Future as _;
    use std::task::Poll;
    let (_s, data, handle, file) = kernel_driver_file();
    // The first two requests batch as usual: two batches of one in a row
    // make the driver submit the next on its first poll.
    for i in 0..2 {
        let (n, _) = file.read_at(vec![0u8; 512], i * 512).await;
        assert_eq!(n.unwrap(), 512);
    }
    let mut probes = Vec::new();
    for i in 2..N {
        let mut read = std::pin::pin!(file.read_at(vec![0u8; 512], (i * 512) as u64));
        let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
        let (n, buf) = match first {
            Poll::Ready(out) => out,
            // After 16 lone requests, one waits for a batch to form (the
            // driver's check for other requesters).
            Poll::Pending => {
                probes.push(i);
                read.await
            }
        };
        assert_eq!(n.unwrap(), 512);
        assert_eq!(&buf[..], &data[i * 512..(i + 1) * 512]);
    }
    assert_eq!(probes, [18], "reads not done on their first poll");
    let stats = handle.stats();
    assert_eq!(stats.submit_calls, N as u64, "{stats:?}");
    // Requests polled together while one is in flight batch again: the
    // first of eight polls (not ready: in flight) goes alone, the other
    // seven in one io_submit.
    let pairs: Vec<_> = (0..8)
        .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
        .collect();
    let polls = pairs
        .iter()
        .map(|(a, _)| handle.poll(a.as_fd(), PollEvents::IN));
    let writers: Vec<_> = pairs.iter().map(|(_, b)| b.try_clone().unwrap()).collect();
    tokio::spawn(async move {
        for mut w in writers {
            w.write_all(b"x").unwrap();
        }
    });
    for ready in join_all(polls).await {
        assert!(ready.unwrap().contains(PollEvents::IN));
    }
    let stats = handle.stats();
    assert_eq!(stats.submit_calls, N as u64 + 2, "{stats:?}");
}

/// Many loops that each issue one request at a time, where every request
/// completes inside `io_submit`: each loop finds nothing in flight when it
/// issues its next request, yet their requests still share `io_submit`
/// calls (without the driver's probe for other requesters, every request
/// went alone).
#[tokio::test(flavor = "current_thread")]
async fn loops_of_one_request_each_are_batched_together() {
    let (_s, data, handle, file) = kernel_driver_file();
    const ROUNDS: usize = 64;
    // Two lone reads first: the driver then submits each request on its
    // first poll, and must find out by itself that many are coming.
    for _ in 0..2 {
        let (n, _) = file.read_at(vec![0u8; 512], 0).await;
        assert_eq!(n.unwrap(), 512);
    }
    let file = &file;
    let data = &data;
    let lane = |l: usize| async move {
        for r in 0..ROUNDS {
            let i = (l + r) % N;
            let (n, buf) = file.read_at(vec![0u8; 512], (i * 512) as u64).await;
            assert_eq!(n.unwrap(), 512);
            assert_eq!(&buf[..], &data[i * 512..(i + 1) * 512]);
        }
    };
    join_all((0..N).map(lane)).await;
    let stats = handle.stats();
    assert_eq!(stats.requests, (N * ROUNDS) as u64 + 2);
    assert!(
        stats.submit_calls * 4 <= stats.requests,
        "{} io_submit calls for {} requests: {stats:?}",
        stats.submit_calls,
        stats.requests
    );
}

fn kernel_driver_file() -> (common::Scratch, Vec<u8>, Handle, File) {
    let (s, data) = data_file();
    let handle = Handle::builder()
        .driver(aio::Driver::Kernel)
        .build()
        .unwrap();
    let file = File::from_std_with(s.file.try_clone().unwrap(), &handle);
    (s, data, handle, file)
}

/// A task reading in a loop without other awaits, its requests completing
/// inside `io_submit`, still lets the runtime's other tasks run: each
/// request spends tokio's cooperative budget, and every 17th of a lone
/// requester waits for a batch (either alone would do).
#[tokio::test(flavor = "current_thread")]
async fn a_loop_of_immediately_ready_requests_yields_to_other_tasks() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_s, _, _handle, file) = kernel_driver_file();
    // Two batches of one first: the loop's requests are then submitted
    // (and done) on their first polls.
    for _ in 0..2 {
        let (n, _) = file.read_at(vec![0u8; 512], 0).await;
        assert_eq!(n.unwrap(), 512);
    }
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    let mut reads = 0;
    while !ran.load(Ordering::SeqCst) {
        let (n, _) = file.read_at(vec![0u8; 512], 0).await;
        assert_eq!(n.unwrap(), 512);
        reads += 1;
        assert!(reads < 100_000, "the other task never ran");
    }
}
