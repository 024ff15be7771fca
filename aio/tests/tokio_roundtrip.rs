//! Every operation of `aio::tokio::File` on tmpfs (buffered) and on a
//! buffered and an `O_DIRECT` file in the scratch directory, on both
//! runtime flavours and through each driver: data written with one segment
//! layout reads back byte-exact through another.
#![cfg(feature = "tokio")]

mod common;

use std::path::Path;

use aio::tokio::{Builder, File, Handle};
use aio::{AlignedBuf, Driver};
use common::{DRIVERS, bufs_from, concat, layout, pattern, scratch_dir, shm_dir};

/// Opens a fresh file in `dir` through the tokio API; `None` if `direct`
/// and the filesystem has no `O_DIRECT`.
async fn open(dir: &Path, direct: bool, handle: &Handle) -> Option<(File, tempfile::TempDir)> {
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let r = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .direct(direct)
        .handle(handle)
        .open(tmp.path().join("f"))
        .await;
    match r {
        Ok(f) => Some((f, tmp)),
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("SKIPPED: {} does not support O_DIRECT", dir.display());
            None
        }
        Err(e) => panic!("open in {}: {e}", dir.display()),
    }
}

async fn every_operation(dir: &Path, direct: bool) {
    for driver in DRIVERS {
        every_operation_on(dir, direct, driver).await;
    }
}

async fn every_operation_on(dir: &Path, direct: bool, driver: Driver) {
    let handle = Builder::new().driver(driver).build().unwrap();
    let Some((file, _tmp)) = open(dir, direct, &handle).await else {
        return;
    };
    let (unit, align) = if direct {
        let a = aio::dio_alignment(&file).unwrap();
        (a.offset, a.memory.max(8))
    } else {
        // Buffered I/O takes any size; 512 keeps layouts within UIO_MAXIOV.
        (512, 1)
    };
    let total = 64 * unit.max(4096);

    // Vectored in, vectored out, in two different layouts.
    for (w, r) in [(1, 2), (7, 3)] {
        let data = pattern(total, w ^ r);
        let wl = layout(total, unit, w);
        let rl = layout(total, unit, r);
        assert_ne!(wl, rl);
        let (n, _) = file.writev_at(bufs_from(&data, &wl, align), 0).await;
        assert_eq!(n.unwrap(), total);
        let zero: Vec<AlignedBuf> = rl.iter().map(|&l| AlignedBuf::new(l, align)).collect();
        let (n, back) = file.readv_at(zero, 0).await;
        assert_eq!(n.unwrap(), total);
        assert!(concat(&back) == data, "layouts {wl:?} -> {rl:?} differ");
    }

    // One segment in, one out, at a nonzero offset.
    let data = pattern(total, 9);
    let at = total as u64;
    let (n, _) = file
        .write_at(AlignedBuf::from_slice(&data, align), at)
        .await;
    assert_eq!(n.unwrap(), total);
    let (n, back) = file.read_at(AlignedBuf::new(total, align), at).await;
    assert_eq!(n.unwrap(), total);
    assert!(back[..] == data[..]);

    // The looping forms, and a read past the end.
    let data = pattern(total, 11);
    let (r, _) = file
        .write_all_at(AlignedBuf::from_slice(&data, align), 2 * at)
        .await;
    r.unwrap();
    let (r, back) = file
        .read_exact_at(AlignedBuf::new(total, align), 2 * at)
        .await;
    r.unwrap();
    assert!(back[..] == data[..]);
    let (r, _) = file
        .read_exact_at(AlignedBuf::new(total, align), 2 * at + unit as u64)
        .await;
    assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);

    file.sync_all().await.unwrap();
    file.sync_data().await.unwrap();
    let ready = file.poll(aio::PollEvents::IN).await.unwrap();
    assert!(ready.contains(aio::PollEvents::IN));

    // A misaligned O_DIRECT read is refused with the alignment named.
    if direct && unit > 1 {
        let (r, _) = file.read_at(vec![0u8; 3], 1).await;
        let e = r.unwrap_err();
        assert_eq!(aio::errno(&e), Some(libc::EINVAL));
        assert!(e.to_string().contains("O_DIRECT"), "{e}");
    }

    // The driver asked for is the one that ran the requests.
    let st = handle.stats();
    match driver {
        Driver::Kernel => assert_eq!(st.engine_submitted, 0, "{st:?}"),
        Driver::Engine => assert_eq!(st.engine_submitted, st.submitted, "{st:?}"),
        _ => assert!(st.submitted >= 10, "{st:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_operation_on_tmpfs_current_thread() {
    every_operation(&shm_dir(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_tmpfs_multi_thread() {
    every_operation(&shm_dir(), false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn every_operation_on_a_buffered_file_current_thread() {
    every_operation(&scratch_dir(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_a_buffered_file_multi_thread() {
    every_operation(&scratch_dir(), false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn every_operation_on_an_o_direct_file_current_thread() {
    every_operation(&scratch_dir(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_an_o_direct_file_multi_thread() {
    every_operation(&scratch_dir(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_on_both_workers_share_the_default_driver() {
    let tmp = tempfile::tempdir_in(shm_dir()).unwrap();
    let path = tmp.path().join("f");
    let file = std::sync::Arc::new(
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .open(&path)
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let file = file.clone();
            tokio::spawn(async move {
                let data = pattern(1000, i);
                let (r, _) = file.write_all_at(data.clone(), i * 1000).await;
                r.unwrap();
                let (r, back) = file.read_exact_at(vec![0u8; 1000], i * 1000).await;
                r.unwrap();
                assert_eq!(back, data);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(file.handle().stats().completions, 128);
}

#[test]
fn outside_a_runtime_the_handle_says_so() {
    let e = Handle::current().unwrap_err();
    assert!(e.to_string().contains("runtime"), "{e}");
}

/// Futures can be spawned on the multi-thread runtime.
#[test]
fn futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn check(file: &File, handle: &Handle) {
        send(&file.read_at(vec![0u8; 1], 0));
        send(&file.writev_at(vec![vec![0u8; 1]], 0));
        send(&file.read_exact_at(AlignedBuf::new(1, 1), 0));
        send(&file.write_all_at(vec![0u8; 1], 0));
        send(&file.sync_all());
        send(&handle.poll(std::os::fd::AsFd::as_fd(file), aio::PollEvents::IN));
        send(&aio::tokio::poll(file, aio::PollEvents::IN));
    }
    let _ = check;
}

#[test]
#[should_panic(expected = "IO is disabled")]
fn a_runtime_without_io_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = Handle::new();
    });
}
