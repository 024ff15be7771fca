//! What the drivers change for the caller: `Auto` never blocks in
//! submission (an empty pipe, cold page-cache data), works where a seccomp
//! filter forbids the AIO system calls, and goes on with the engine where
//! the page cache has only part of a read. With `Kernel`, Linux blocks in
//! `io_submit` for buffered I/O, as documented.

mod common;

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aio::{Driver, Read, ReadV, Write, WriteV};
use common::{context_on, pattern, pipe, scratch_dir, scratch_in, shm_dir};

#[test]
fn an_empty_pipe_read_through_auto_returns_from_submission_at_once() {
    let (r, mut w) = pipe();
    let ctx = context_on(Driver::Auto, 8);
    let ticket = ctx.push(Read::new(r, vec![0u8; 5], 0));
    let t0 = Instant::now();
    assert_eq!(ctx.submit(), 1);
    let took = t0.elapsed();
    // Blocking would mean forever: nobody writes yet.
    assert!(took < Duration::from_secs(1), "submit took {took:?}");
    assert_eq!(ctx.reap(), 0);
    assert!(!ticket.is_done());
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        w.write_all(b"hello").unwrap();
    });
    let (n, buf) = ticket.wait();
    assert_eq!((n.unwrap(), &buf[..]), (5, &b"hello"[..]));
    writer.join().unwrap();
    let st = ctx.stats();
    assert_eq!(st.engine_submitted, 1, "{st:?}");
}

#[test]
fn an_empty_pipe_read_through_the_kernel_blocks_in_submission() {
    let (r, mut w) = pipe();
    let returned = Arc::new(AtomicBool::new(false));
    let submitter = {
        let returned = returned.clone();
        std::thread::spawn(move || {
            let ctx = context_on(Driver::Kernel, 8);
            let ticket = ctx.push(Read::new(r, vec![0u8; 5], 0));
            ctx.submit();
            returned.store(true, Ordering::SeqCst);
            ticket.wait()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !returned.load(Ordering::SeqCst),
        "io_submit of a read of an empty pipe returned before anything was written"
    );
    w.write_all(b"hello").unwrap();
    let (n, buf) = submitter.join().unwrap();
    assert!(returned.load(Ordering::SeqCst));
    assert_eq!((n.unwrap(), &buf[..]), (5, &b"hello"[..]));
}

/// A scratch file on the filesystem under test, with `len` bytes of
/// pattern `seed` on disk and none of them in the page cache, and whether
/// its filesystem takes `RWF_NOWAIT`; `None` on tmpfs (memory only) or
/// where the cache cannot be dropped.
fn cold_file(len: usize, seed: u64) -> Option<(common::Scratch, Vec<u8>, bool)> {
    let mut s = scratch_in(&scratch_dir(), false);
    let data = pattern(len, seed);
    s.file.write_all(&data).unwrap();
    s.file.sync_all().unwrap();
    if common::on_tmpfs(&s.file) {
        eprintln!("SKIPPED: tmpfs has no page cache to miss");
        return None;
    }
    // Asked while the file is cached: a miss would start readahead.
    let nowait = takes_nowait(&s.file);
    // SAFETY: advice on our own descriptor.
    let r = unsafe { libc::posix_fadvise(s.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
    if !(0..len.div_ceil(4096)).all(|p| !cached(&s.file, p * 4096)) {
        eprintln!("SKIPPED: the page cache kept the file after POSIX_FADV_DONTNEED");
        return None;
    }
    Some((s, data, nowait))
}

/// Whether the page at `offset` is in the page cache, by `mincore` (a
/// probing read could start readahead and change the answer).
fn cached(file: &std::fs::File, offset: usize) -> bool {
    let page = 4096;
    let at = offset / page * page;
    // SAFETY: a fresh read-only shared mapping of one page of the file,
    // unmapped below; mincore writes one byte into a local.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            at as i64,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let mut v = 0u8;
        assert_eq!(libc::mincore(p, page, &mut v), 0);
        libc::munmap(p, page);
        v & 1 != 0
    }
}

/// Whether the filesystem of `file` takes `RWF_NOWAIT`. Those without
/// FMODE_NOWAIT (ext2, jfs, reiserfs and NFS in Linux 6.12) refuse it with
/// EOPNOTSUPP, and Auto then sends their reads to the engine without
/// trying the kernel. Ask with a one-byte `preadv2` of cached data: a
/// miss would start readahead (RWF_NOWAIT is not IOCB_NOIO).
fn takes_nowait(file: &std::fs::File) -> bool {
    let mut b = 0u8;
    let iov = libc::iovec {
        iov_base: (&mut b as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: `iov` describes one writable byte.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    if n >= 0 {
        return true;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => true,
        Some(libc::EOPNOTSUPP) => {
            eprintln!("this filesystem refuses RWF_NOWAIT (EOPNOTSUPP): Auto reads on the engine");
            false
        }
        e => panic!("preadv2(RWF_NOWAIT): {e:?}"),
    }
}

/// Where the filesystem refuses RWF_NOWAIT, a cold read runs on the engine
/// at once. Where it takes it and the kernel has `cachestat` (Linux 6.5),
/// Auto asks before it tries, and a cold read goes to the engine without
/// a miss in the kernel. Without `cachestat` the kernel tries first and a
/// miss (EAGAIN or a short count) goes on to the engine; but since Linux
/// 6.12 such a miss starts readahead, and a device that finishes it at
/// once (zram, a host's cache behind a VM's disk) lets the kernel serve
/// the read: then nothing reaches the engine (docs/spec-errata.md, §1.4).
fn cold_read_went_where_it_should(file: &std::fs::File, st: &aio::Stats, nowait: bool) {
    if !nowait || has_cachestat(file) {
        assert_eq!(st.nowait_retries, 0, "{st:?}");
        assert!(st.engine_submitted >= 1, "{st:?}");
    } else if st.nowait_retries == 0 {
        assert_eq!(st.engine_submitted, 0, "{st:?}");
        eprintln!("the kernel's readahead served the cold read: no miss to retry");
    } else {
        assert!(st.engine_submitted >= st.nowait_retries, "{st:?}");
    }
}

fn has_cachestat(file: &std::fs::File) -> bool {
    let yes = aio_sys::page_cache_holds(file.as_raw_fd(), 0, 1).is_some();
    if !yes {
        eprintln!("no cachestat here: Auto tries reads in the kernel blindly");
    }
    yes
}

#[test]
fn auto_sends_page_cache_misses_to_the_engine() {
    const LEN: usize = 1 << 20;
    let Some((s, data, nowait)) = cold_file(LEN, 3) else {
        return;
    };
    let ctx = context_on(Driver::Auto, 8);
    let (n, buf) = ctx.run(Read::new(&s.file, vec![0u8; LEN], 0));
    assert_eq!(n.unwrap(), LEN);
    assert!(buf == data);
    let st = ctx.stats();
    cold_read_went_where_it_should(&s.file, &st, nowait);
    // Now cached: the kernel serves it inside io_submit (or, without
    // RWF_NOWAIT, the engine does); no retry either way.
    let (n, buf) = ctx.run(Read::new(&s.file, vec![0u8; LEN], 0));
    assert_eq!(n.unwrap(), LEN);
    assert!(buf == data);
    assert_eq!(ctx.stats().nowait_retries, st.nowait_retries);
}

#[test]
fn a_read_half_in_the_page_cache_is_finished_by_the_engine() {
    const LEN: usize = 256 << 10;
    let Some((s, data, nowait)) = cold_file(LEN, 4) else {
        return;
    };
    // The first 100 KiB cached, the rest not (no readahead).
    // SAFETY: advice on our own descriptor.
    unsafe { libc::posix_fadvise(s.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut warm = vec![0u8; 100 << 10];
    s.file.read_exact_at(&mut warm, 0).unwrap();
    if cached(&s.file, 200 << 10) {
        eprintln!("SKIPPED: readahead cached the whole file");
        return;
    }
    let ctx = context_on(Driver::Auto, 8);
    // Segments that straddle the cached boundary at odd places.
    let lens = [1000usize, 50_000, 60_000, 4096, LEN - 115_096];
    let bufs: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
    let (n, back) = ctx.run(ReadV::new(&s.file, bufs, 0));
    assert_eq!(n.unwrap(), LEN);
    assert!(back.concat() == data, "data differs");
    let st = ctx.stats();
    assert!(st.nowait_retries <= 1, "{st:?}");
    cold_read_went_where_it_should(&s.file, &st, nowait);
    // And a plain read from inside the cached part into the cold one,
    // then one past the end of the file: short, as from the kernel.
    // SAFETY: as in cold_file.
    unsafe { libc::posix_fadvise(s.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    s.file.read_exact_at(&mut warm, 0).unwrap();
    let (n, buf) = ctx.run(Read::new(&s.file, vec![0u8; LEN], 50_000));
    assert_eq!(n.unwrap(), LEN - 50_000);
    assert!(buf[..LEN - 50_000] == data[50_000..]);
}

/// With the page cache holding every other page of a file, Auto reads
/// the cached pages in the kernel and sends the others to the engine
/// without trying them first: a miss tried inside `io_submit` would make
/// the submitter pay for the readahead it starts.
#[test]
fn a_patchy_page_cache_costs_the_submitter_no_misses() {
    const PAGES: usize = 64;
    let Some((s, data, nowait)) = cold_file(PAGES * 4096, 6) else {
        return;
    };
    if !nowait || !has_cachestat(&s.file) {
        return;
    }
    // SAFETY: advice on our own descriptor.
    unsafe { libc::posix_fadvise(s.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut page = vec![0u8; 4096];
    for p in (0..PAGES).step_by(2) {
        s.file.read_exact_at(&mut page, (p * 4096) as u64).unwrap();
    }
    if (0..PAGES).any(|p| cached(&s.file, p * 4096) != (p % 2 == 0)) {
        eprintln!("SKIPPED: the page cache does not hold exactly the even pages");
        return;
    }
    let ctx = context_on(Driver::Auto, 8);
    for p in 0..PAGES {
        let (n, buf) = ctx.run(Read::new(&s.file, vec![0u8; 4096], (p * 4096) as u64));
        assert_eq!(n.unwrap(), 4096);
        assert!(buf[..] == data[p * 4096..][..4096], "page {p}");
    }
    let st = ctx.stats();
    assert_eq!(st.nowait_retries, 0, "{st:?}");
    assert_eq!(st.engine_submitted, PAGES as u64 / 2, "{st:?}");
}

/// The child half of the seccomp test: runs only when the parent asks.
#[test]
fn seccomp_child() {
    if std::env::var_os("AIO_TEST_SECCOMP_CHILD").is_none() {
        return;
    }
    aio_sys::seccomp::refuse_aio(aio_sys::seccomp::Refuse::All, aio::Errno::EPERM)
        .expect("install the seccomp filter");
    // The kernel driver says why it cannot work.
    let e = aio::Context::builder()
        .driver(Driver::Kernel)
        .build()
        .unwrap_err();
    assert_eq!(aio::errno(&e), Some(libc::EPERM));
    assert!(e.to_string().contains("seccomp"), "{e}");
    // Auto goes on with the engine: vectored round trips on a buffered
    // file, on tmpfs and through a pipe.
    let ctx = context_on(Driver::Auto, 16);
    for dir in [scratch_dir(), shm_dir()] {
        let s = scratch_in(&dir, false);
        let data = pattern(300_000, 5);
        let lens = [1usize, 4095, 100_000, 195_904];
        let bufs: Vec<Vec<u8>> = common::layout_of(&data, &lens);
        let (n, _) = ctx.run(WriteV::new(&s.file, bufs, 10));
        assert_eq!(n.unwrap(), data.len());
        let back: Vec<Vec<u8>> = [7usize, 299_993].iter().map(|&l| vec![0u8; l]).collect();
        let (n, back) = ctx.run(ReadV::new(&s.file, back, 10));
        assert_eq!(n.unwrap(), data.len());
        assert!(back.concat() == data);
    }
    let (r, w) = pipe();
    let write = ctx.push(Write::new(w, b"through the engine".to_vec(), 0));
    let (n, buf) = ctx.run(Read::new(&r, vec![0u8; 18], 0));
    assert_eq!((n.unwrap(), &buf[..]), (18, &b"through the engine"[..]));
    assert_eq!(write.wait().0.unwrap(), 18);
    let st = ctx.stats();
    assert_eq!(st.engine_submitted, st.submitted, "{st:?}");
    // No call reached the kernel.
    assert_eq!(st.engine_submit_calls, st.submit_calls, "{st:?}");
    assert_eq!(st.engine_getevents_calls, st.getevents_calls, "{st:?}");
    // The context says why the engine runs everything.
    let why = ctx
        .kernel_unavailable()
        .expect("Auto fell back to the engine");
    assert_eq!(why.errno(), aio::Errno::EPERM);
    assert!(
        why.message()
            .starts_with("io_setup refused with EPERM by a seccomp filter"),
        "{why}"
    );
    // A driver chosen explicitly never falls back.
    assert!(context_on(Driver::Engine, 4).kernel_unavailable().is_none());
    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let why = rt.block_on(async { aio::tokio::Handle::new().unwrap().kernel_unavailable() });
        assert_eq!(why.map(|e| e.errno()), Some(aio::Errno::EPERM));
    }
    println!("seccomp child: {} requests on the engine", st.submitted);
}

#[test]
fn where_the_kernel_serves_auto_has_no_fallback_reason() {
    let ctx = context_on(Driver::Auto, 4);
    assert!(ctx.kernel_unavailable().is_none());
    assert!(context_on(Driver::Kernel, 4).kernel_unavailable().is_none());
}

#[test]
fn under_a_seccomp_filter_auto_runs_on_the_engine() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AIO_TEST_SECCOMP_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("seccomp child: 6 requests on the engine"),
        "the child did not run: {stdout}{stderr}"
    );
}

/// The tokio API uses `Auto`: a read of an empty pipe leaves the runtime's
/// only worker free to run other tasks.
#[cfg(feature = "tokio")]
#[test]
fn a_tokio_read_of_an_empty_pipe_leaves_the_only_worker_free() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = aio::tokio::Handle::new().unwrap();
        let (r, mut w) = pipe();
        let file = aio::tokio::File::from_std_with(r, &handle);
        let reader = tokio::spawn(async move { file.read_at(vec![0u8; 5], 0).await });
        // Were the worker stuck in io_submit, nothing below would run:
        // unblock it after a while so that the test fails, not hangs.
        let mut late = w.try_clone().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(5));
            let _ = late.write_all(b"late!");
        });
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the runtime's only worker was blocked for {:?}",
            t0.elapsed()
        );
        let st = handle.stats();
        assert_eq!((st.submitted, st.completions), (1, 0), "{st:?}");
        w.write_all(b"hello").unwrap();
        let (n, buf) = reader.await.unwrap();
        assert_eq!((n.unwrap(), &buf[..]), (5, &b"hello"[..]));
    });
}
