//! A panic inside `scope` after submitting reads into stack buffers: the
//! scope waits for every read before the panic leaves it, so nothing writes
//! freed memory.
//!
//! Run under valgrind with the syscall reaping path (the ring is shared
//! memory written by the kernel, which valgrind cannot see):
//!
//! ```text
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="valgrind --error-exitcode=1 --trace-children=no" \
//!     cargo test -p aio --test scope_panic
//! ```

mod common;

use std::os::unix::fs::FileExt;
use std::panic::{self, AssertUnwindSafe};

use aio::{AlignedBuf, Context, Reap};
use common::{direct_scratch_in, pattern, scratch_dir, scratch_in, shm_dir};

fn syscall_ctx(depth: u32) -> Context {
    let ctx = Context::builder()
        .queue_depth(depth)
        .reap(Reap::Syscall)
        .build()
        .unwrap();
    assert!(!ctx.reaps_ring());
    ctx
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

#[test]
fn panic_in_scope_waits_for_reads_into_stack_buffers() {
    // O_DIRECT so that the reads are still in flight when the panic starts.
    let s = direct_scratch_in(&scratch_dir()).unwrap_or_else(|| scratch_in(&scratch_dir(), false));
    let data = pattern(16 * 4096, 6);
    s.file
        .write_all_at(&AlignedBuf::from_slice(&data, 4096), 0)
        .unwrap();
    let ctx = syscall_ctx(32);
    let mut pages: [Page; 16] = std::array::from_fn(|_| Page([0; 4096]));
    let caught = panic::catch_unwind(AssertUnwindSafe(|| {
        ctx.scope(|sc| {
            for (i, p) in pages.iter_mut().enumerate() {
                let t = sc.read_at(&s.file, &mut p.0, i as u64 * 4096);
                if i % 2 == 0 {
                    std::mem::forget(t);
                }
            }
            sc.submit();
            panic!("boom after submitting");
        })
    }));
    let msg = caught.expect_err("the panic must propagate");
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom after submitting"));
    assert_eq!((ctx.in_flight(), ctx.queued()), (0, 0));
    for (i, p) in pages.iter().enumerate() {
        assert!(
            p.0[..] == data[i * 4096..(i + 1) * 4096],
            "page {i} incomplete"
        );
    }
}

#[test]
fn panic_in_scope_drops_unsubmitted_requests_and_waits_for_the_rest() {
    let s = scratch_in(&shm_dir(), false);
    s.file.write_all_at(&pattern(8192, 2), 0).unwrap();
    let ctx = syscall_ctx(8);
    // Heap memory borrowed by the scope and freed right after it: a read
    // landing after the free would be a use-after-free valgrind reports.
    let mut heap = vec![0u8; 8192];
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        ctx.scope(|sc| {
            let (a, b) = heap.split_at_mut(4096);
            let _ = sc.read_at(&s.file, a, 0);
            sc.submit();
            // Queued, never submitted: dropped by the panic.
            let _ = sc.read_at(&s.file, b, 4096);
            panic!("boom with one request queued");
        })
    }));
    assert!(r.is_err());
    assert_eq!(&heap[..4096], &pattern(8192, 2)[..4096]);
    assert!(heap[4096..].iter().all(|&b| b == 0), "unsubmitted read ran");
    drop(heap);
    assert_eq!((ctx.in_flight(), ctx.queued()), (0, 0));
}
