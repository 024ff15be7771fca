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

type Tickets<'c> = Vec<aio::Ticket<'c, Read<std::sync::Arc<std::fs::File>, Vec<u8>>>>;

fn rounds<'c>(
    ctx: &'c Context,
    file: &std::sync::Arc<std::fs::File>,
    bufs: &mut Vec<Vec<u8>>,
    tickets: &mut Tickets<'c>,
    n: usize,
) {
    for _ in 0..n {
        tickets.clear();
        for i in 0..DEPTH {
            let buf = bufs.pop().unwrap();
            tickets.push(ctx.push(Read::new(file.clone(), buf, (i * 4096) as u64)));
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
    let file = std::sync::Arc::new(tempfile::tempfile_in("/dev/shm").unwrap());
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

/// The tokio front-end on a current-thread runtime (the driver task runs
/// on this thread too): four reads at a time, joined without a
/// collection, allocate nothing once warm.
#[cfg(feature = "tokio")]
#[test]
fn no_allocation_per_request_tokio() {
    use aio::tokio::{File, Handle};

    let file = tempfile::tempfile_in("/dev/shm").unwrap();
    file.write_all_at(&vec![5u8; 4 * 4096], 0).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = Handle::builder().queue_depth(16).build().unwrap();
        let file = File::from_std_with(file, &handle);
        let mut bufs: [Option<Vec<u8>>; 4] = std::array::from_fn(|_| Some(vec![0u8; 4096]));
        let round = async |bufs: &mut [Option<Vec<u8>>; 4]| {
            let [a, b, c, d] = bufs.each_mut().map(|b| b.take().unwrap());
            let (ra, rb, rc, rd) = futures::join!(
                file.read_at(a, 0),
                file.read_at(b, 4096),
                file.read_at(c, 8192),
                file.read_at(d, 12288),
            );
            for (slot, (n, buf)) in bufs.iter_mut().zip([ra, rb, rc, rd]) {
                assert_eq!(n.unwrap(), 4096);
                *slot = Some(buf);
            }
        };
        for _ in 0..10 {
            round(&mut bufs).await;
        }
        COUNT.with(|c| c.set(0));
        TRACK.with(|t| t.set(true));
        for _ in 0..200 {
            round(&mut bufs).await;
        }
        TRACK.with(|t| t.set(false));
        let n = COUNT.with(Cell::get);
        assert_eq!(n, 0, "{n} allocations for 800 requests");
        // One io_submit per round of four.
        assert_eq!(handle.stats().submit_calls, 210, "{:?}", handle.stats());
    });
}
