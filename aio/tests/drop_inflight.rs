//! Dropping tickets and contexts while reads are in flight: every buffer is
//! dropped exactly once, and only after the kernel has finished writing it
//! (its Drop finds the complete data there).

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aio::{AlignedBuf, Context, IoBuf, IoBufMut, Read};
use common::{Scratch, direct_scratch_in, pattern, scratch_dir, scratch_in};

const N: usize = 64;
const LEN: usize = 256 << 10;

/// A read buffer that, when dropped, counts itself and checks that the
/// read into it had completed.
struct Checked {
    buf: AlignedBuf,
    expect: Arc<Vec<u8>>,
    drops: Arc<AtomicUsize>,
    complete_at_drop: Arc<AtomicUsize>,
}

impl Drop for Checked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        if self.buf[..] == self.expect[..] {
            self.complete_at_drop.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// SAFETY: delegates to AlignedBuf, whose bytes are a separate heap
// allocation that does not move with the value.
unsafe impl IoBuf for Checked {
    fn stable_ptr(&self) -> *const u8 {
        self.buf.stable_ptr()
    }
    fn bytes_len(&self) -> usize {
        self.buf.bytes_len()
    }
}

// SAFETY: as above.
unsafe impl IoBufMut for Checked {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.buf.stable_mut_ptr()
    }
}

struct Fixture {
    scratch: Scratch,
    expect: Arc<Vec<u8>>,
    drops: Arc<AtomicUsize>,
    complete: Arc<AtomicUsize>,
}

/// An O_DIRECT file of N records: reads of it really are in flight after
/// io_submit returns.
fn fixture() -> Fixture {
    let scratch =
        direct_scratch_in(&scratch_dir()).unwrap_or_else(|| scratch_in(&scratch_dir(), false));
    let record = pattern(LEN, 42);
    let aligned = AlignedBuf::from_slice(&record, 4096);
    for i in 0..N {
        scratch
            .file
            .write_all_at(&aligned, (i * LEN) as u64)
            .unwrap();
    }
    Fixture {
        scratch,
        expect: Arc::new(record),
        drops: Arc::new(AtomicUsize::new(0)),
        complete: Arc::new(AtomicUsize::new(0)),
    }
}

impl Fixture {
    fn buf(&self) -> Checked {
        Checked {
            buf: AlignedBuf::new(LEN, 4096),
            expect: self.expect.clone(),
            drops: self.drops.clone(),
            complete_at_drop: self.complete.clone(),
        }
    }

    fn assert_all_dropped_complete(&self) {
        assert_eq!(self.drops.load(Ordering::SeqCst), N, "buffers dropped");
        assert_eq!(
            self.complete.load(Ordering::SeqCst),
            N,
            "buffers dropped before their read completed"
        );
    }
}

type Reads<'c> = Vec<aio::Ticket<'c, Read<std::sync::Arc<std::fs::File>, Checked>>>;

fn submit_reads<'c>(ctx: &'c Context, f: &Fixture) -> Reads<'c> {
    let file = f.scratch.shared();
    let tickets: Vec<_> = (0..N)
        .map(|i| ctx.push(Read::new(file.clone(), f.buf(), (i * LEN) as u64)))
        .collect();
    ctx.submit();
    tickets
}

#[test]
fn dropping_the_context_with_reads_in_flight_after_dropping_tickets() {
    let f = fixture();
    let ctx = Context::new(N as u32).unwrap();
    let tickets = submit_reads(&ctx, &f);
    assert_eq!(ctx.stats().submitted, N as u64);
    drop(tickets);
    drop(ctx);
    f.assert_all_dropped_complete();
}

#[test]
fn dropping_the_context_with_reads_in_flight_after_forgetting_tickets() {
    let f = fixture();
    let ctx = Context::new(N as u32).unwrap();
    for t in submit_reads(&ctx, &f) {
        std::mem::forget(t);
    }
    drop(ctx);
    f.assert_all_dropped_complete();
}

#[test]
fn dropping_the_context_drops_unsubmitted_requests_without_running_them() {
    let f = fixture();
    let ctx = Context::new(8).unwrap();
    // At depth 8, submit() hands all 64 over, 8 at a time, reaping in
    // between; then 64 more stay queued.
    drop(submit_reads(&ctx, &f));
    let file = f.scratch.shared();
    for i in 0..N {
        drop(ctx.push(Read::new(file.clone(), f.buf(), (i * LEN) as u64)));
    }
    assert_eq!(ctx.queued(), N);
    drop(ctx);
    assert_eq!(f.drops.load(Ordering::SeqCst), 2 * N);
    // The submitted ones had completed; the queued ones never ran.
    assert_eq!(f.complete.load(Ordering::SeqCst), N);
}

#[test]
fn dropped_tickets_release_buffers_as_events_arrive() {
    let f = fixture();
    let ctx = Context::new(N as u32).unwrap();
    drop(submit_reads(&ctx, &f));
    ctx.drain();
    // The context is still alive: the slots dropped the buffers on arrival.
    f.assert_all_dropped_complete();
}
