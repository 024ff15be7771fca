//! Steady state allocates nothing per request: slots, iocbs, iovec storage
//! and buffer storage are reused. Counted with a global allocator that
//! tracks the test's own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::unix::fs::FileExt;

use aio::{Context, Read, ReadV, Reap};

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the bookkeeping uses
// const-initialised thread locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACK.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    TRACK.with(|t| t.set(true));
    f();
    TRACK.with(|t| t.set(false));
    COUNT.with(Cell::get)
}

const DEPTH: usize = 64;

type Tickets<'c> = Vec<aio::Ticket<'c, Read<Vec<u8>>>>;

fn rounds<'c>(
    ctx: &'c Context,
    file: &std::fs::File,
    bufs: &mut Vec<Vec<u8>>,
    tickets: &mut Tickets<'c>,
    n: usize,
) {
    for _ in 0..n {
        tickets.clear();
        for i in 0..DEPTH {
            let buf = bufs.pop().unwrap();
            tickets.push(ctx.push(Read::new(file, buf, (i * 4096) as u64)));
        }
        ctx.submit();
        for t in tickets.drain(..) {
            let (r, buf) = t.wait();
            assert_eq!(r.unwrap(), 4096);
            bufs.push(buf);
        }
    }
}

fn no_allocation_per_request(reap: Reap) {
    let file = tempfile::tempfile_in("/dev/shm").unwrap();
    file.write_all_at(&vec![3u8; DEPTH * 4096], 0).unwrap();
    let ctx = Context::builder()
        .queue_depth(DEPTH as u32)
        .reap(reap)
        .build()
        .unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..DEPTH).map(|_| vec![0u8; 4096]).collect();
    // Warm up: slots, queue and scratch arrays reach their steady size.
    let mut tickets = Vec::with_capacity(DEPTH);
    rounds(&ctx, &file, &mut bufs, &mut tickets, 2);
    let n = allocations_during(|| rounds(&ctx, &file, &mut bufs, &mut tickets, 50));
    assert_eq!(n, 0, "{n} allocations for {} requests", 50 * DEPTH);

    // Vectored reads and scoped reads too.
    let mut two = Some(vec![vec![0u8; 100], vec![0u8; 200]]);
    let mut stack = [0u8; 512];
    let step = |two: &mut Option<Vec<Vec<u8>>>, stack: &mut [u8; 512]| {
        let (r, back) = ctx.run(ReadV::new(&file, two.take().unwrap(), 0));
        assert_eq!(r.unwrap(), 300);
        *two = Some(back);
        ctx.scope(|s| {
            let _ = s.read_at(&file, stack, 0);
        });
    };
    step(&mut two, &mut stack);
    let n = allocations_during(|| {
        for _ in 0..100 {
            step(&mut two, &mut stack);
        }
    });
    assert_eq!(n, 0, "{n} allocations for 200 vectored and scoped requests");
}

#[test]
fn no_allocation_per_request_ring() {
    no_allocation_per_request(Reap::Ring);
}

#[test]
fn no_allocation_per_request_syscall() {
    no_allocation_per_request(Reap::Syscall);
}
