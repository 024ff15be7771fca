//! Scoped borrowed buffers.

mod common;

use std::io::Write as _;
use std::os::unix::fs::FileExt;

use aio::{Context, Read, ReadV, Write, WriteV};
use common::{pattern, scratch_in, shm_dir};

#[test]
fn stack_buffers_are_filled_when_the_scope_returns() {
    let mut s = scratch_in(&shm_dir(), false);
    s.file.write_all(&pattern(10_000, 1)).unwrap();
    let ctx = Context::new(16).unwrap();
    let mut a = [0u8; 100];
    let mut b = [0u8; 900];
    let mut c = [0u8; 4000];
    let total = ctx.scope(|s2| {
        // Tickets dropped at once: the scope still waits for them.
        let _ = s2.read_at(&s.file, &mut a, 0);
        let t = s2.readv_at(&s.file, [&mut b[..], &mut c[..]], 100);
        t.wait().0.unwrap()
    });
    assert_eq!(total, 4900);
    let expect = pattern(10_000, 1);
    assert_eq!(&a[..], &expect[..100]);
    assert_eq!(&b[..], &expect[100..1000]);
    assert_eq!(&c[..], &expect[1000..5000]);
}

#[test]
fn forgotten_tickets_cannot_skip_the_wait() {
    let mut s = scratch_in(&shm_dir(), false);
    s.file.write_all(&[9u8; 4096]).unwrap();
    let ctx = Context::new(16).unwrap();
    let mut bufs = vec![[0u8; 512]; 8];
    ctx.scope(|sc| {
        for (i, b) in bufs.iter_mut().enumerate() {
            std::mem::forget(sc.read_at(&s.file, b, i as u64 * 512));
        }
    });
    assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 9)));
    // The forgotten tickets' slots were released by the scope.
    assert_eq!((ctx.in_flight(), ctx.queued()), (0, 0));
}

#[test]
fn generic_operations_with_borrowed_buffers() {
    let s = scratch_in(&shm_dir(), false);
    let ctx = Context::new(16).unwrap();
    let src = pattern(3000, 4);
    let mut dst = vec![0u8; 3000];
    ctx.scope(|sc| {
        let (one, two) = src.split_at(1000);
        let (n, _) = sc.push(WriteV::new(&s.file, [one, two], 0)).wait();
        assert_eq!(n.unwrap(), 3000);
        let (x, y) = dst.split_at_mut(1);
        let (n, back) = sc.push(ReadV::new(&s.file, vec![x, y], 0)).wait();
        assert_eq!(n.unwrap(), 3000);
        assert_eq!(back.len(), 2);
        // Read and Write with a borrowed slice.
        let (n, _) = sc.push(Write::new(&s.file, &src[..10], 5000)).wait();
        assert_eq!(n.unwrap(), 10);
    });
    assert_eq!(dst, src);
    let mut tail = [0u8; 10];
    ctx.scope(|sc| {
        let (n, buf) = sc.push(Read::new(&s.file, &mut tail[..], 5000)).wait();
        assert_eq!(n.unwrap(), 10);
        assert_eq!(buf, &src[..10]);
    });
}

#[test]
fn nested_scopes_and_owned_requests_mix() {
    let s = scratch_in(&shm_dir(), false);
    s.file.write_all_at(&pattern(8192, 3), 0).unwrap();
    let ctx = Context::new(4).unwrap();
    let mut outer = [0u8; 4096];
    let mut inner = [0u8; 4096];
    let owned = ctx.scope(|so| {
        so.read_at(&s.file, &mut outer, 0);
        let owned = so.context().push(Read::new(s.shared(), vec![0u8; 8192], 0));
        ctx.scope(|si| {
            si.read_at(&s.file, &mut inner, 4096);
        });
        owned.wait().1
    });
    let expect = pattern(8192, 3);
    assert_eq!(&outer[..], &expect[..4096]);
    assert_eq!(&inner[..], &expect[4096..]);
    assert_eq!(owned, expect);
}

#[test]
fn many_scoped_requests_beyond_the_depth() {
    let s = scratch_in(&shm_dir(), false);
    s.file.write_all_at(&pattern(64 * 1024, 8), 0).unwrap();
    let ctx = Context::new(4).unwrap();
    let mut big = vec![0u8; 64 * 1024];
    ctx.scope(|sc| {
        for (i, chunk) in big.chunks_mut(1024).enumerate() {
            let _ = sc.read_at(&s.file, chunk, i as u64 * 1024);
        }
    });
    assert_eq!(big, pattern(64 * 1024, 8));
}
