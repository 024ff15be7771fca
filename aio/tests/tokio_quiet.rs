//! The tokio driver leaves `IOCB_FLAG_RESFD` off kernel requests that are
//! expected to complete inside `io_submit`, and polls the ring for any that
//! do not: none is lost, whatever the guess.
#![cfg(feature = "tokio")]

mod common;

use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::time::Duration;

use aio::tokio::{Builder, File};
use aio::{AlignedBuf, Driver};
use common::{BlockDevice, on_tmpfs, pattern, scratch_dir, scratch_in};
use futures::future::join_all;

const BATCH: usize = 32;
const BLOCK: usize = 4096;

/// Reads `rounds` batches of `BATCH` blocks of `len` bytes through `file`
/// (`data` is what it holds), each batch within 30 s, and checks the data.
async fn read_rounds(file: &File, data: &[u8], len: usize, rounds: usize) {
    let blocks = data.len() / len;
    for round in 0..rounds {
        let reads = (0..BATCH).map(|i| {
            let at = (round * BATCH + i) * 7 % blocks * len;
            let read = file.read_at(AlignedBuf::new(len, BLOCK), at as u64);
            async move { (at, read.await) }
        });
        let done = tokio::time::timeout(Duration::from_secs(30), join_all(reads))
            .await
            .unwrap_or_else(|_| panic!("round {round}: a read never completed"));
        for (at, (n, buf)) in done {
            assert_eq!(n.unwrap(), len, "read at {at}");
            assert!(buf[..] == data[at..at + len], "read at {at}: wrong bytes");
        }
    }
}

/// A buffered scratch file of `len` bytes of pattern `seed`.
fn buffered_file(len: usize, seed: u64) -> (common::Scratch, Vec<u8>) {
    let mut s = scratch_in(&scratch_dir(), false);
    let data = pattern(len, seed);
    s.file.write_all(&data).unwrap();
    (s, data)
}

/// Whether `Auto` sends buffered reads of `file` to the engine: on a
/// filesystem that refuses `RWF_NOWAIT` for them (jfs, reiserfs), except
/// tmpfs, whose reads `Auto` hands to the kernel as they are.
fn auto_reads_on_engine(file: &std::fs::File) -> bool {
    !on_tmpfs(file) && !takes_nowait_reads(file)
}

/// Whether the filesystem of `file` takes `RWF_NOWAIT` for buffered reads.
fn takes_nowait_reads(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    let iov = libc::iovec {
        iov_base: (&mut byte as *mut u8).cast(),
        iov_len: 1,
    };
    // SAFETY: one iovec naming a local byte.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    !(n < 0 && matches!(errno, Some(libc::EOPNOTSUPP | libc::EINVAL)))
}

async fn buffered_reads_go_quiet(driver: Driver) {
    let (s, data) = buffered_file(64 * BLOCK, 5);
    let handle = Builder::new().driver(driver).build().unwrap();
    let file = File::from_std_with(s.file.try_clone().unwrap(), &handle);
    read_rounds(&file, &data, BLOCK, 64).await;
    let stats = handle.stats();
    if driver == Driver::Auto && auto_reads_on_engine(&s.file) {
        // Every read ran on the engine, whose completions nothing needs
        // to signal: none went quiet, and none was lost.
        assert_eq!(stats.engine_submitted, stats.submitted, "{stats:?}");
        assert_eq!(stats.quiet_submitted, 0, "{stats:?}");
        assert_eq!(stats.completions, stats.submitted, "{stats:?}");
        return;
    }
    // Linux reads buffered files inside io_submit: after the first 1024
    // requests (or at once, for Auto's RWF_NOWAIT reads), none signals.
    assert!(stats.quiet_submitted >= 900, "{driver:?}: {stats:?}");
    // And none was left for the driver to poll for.
    assert_eq!(stats.quiet_polls, 0, "{driver:?}: {stats:?}");
    assert_eq!(stats.completions, stats.submitted, "{driver:?}: {stats:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn buffered_reads_go_without_an_eventfd_signal() {
    buffered_reads_go_quiet(Driver::Kernel).await;
    buffered_reads_go_quiet(Driver::Auto).await;
}

/// After a long run of requests that completed inside `io_submit`, reads
/// of a loop device (which completes them on its worker thread) go quiet
/// too, and complete late: the driver must find them without a signal.
async fn late_quiet_reads_are_found(driver: Driver) {
    let handle = Builder::new().driver(driver).build().unwrap();
    const LEN: usize = 64 * 1024;
    let Some(dev) = BlockDevice::new_loop(8 << 20) else {
        return;
    };
    let data = pattern(8 << 20, 9);
    let w = dev.open(false);
    w.write_all_at(&data, 0).unwrap();
    w.sync_all().unwrap();
    let device = File::from_std_with(dev.open(true), &handle);
    let (s, cached) = buffered_file(64 * BLOCK, 6);
    if driver == Driver::Auto && auto_reads_on_engine(&s.file) {
        // `Auto` runs the buffered reads on the engine: they never earn the
        // trust that makes kernel reads quiet. Nothing to test here.
        eprintln!("the scratch filesystem refuses RWF_NOWAIT: no quiet reads under Auto");
        return;
    }
    let buffered = File::from_std_with(s.file.try_clone().unwrap(), &handle);

    // Whether a quiet read completes after its io_submit is up to the loop
    // device's worker; each round gives it the chance. Every read must
    // complete (read_rounds fails a round that does not), late or not.
    for _ in 0..20 {
        if handle.stats().quiet_polls > 0 {
            return;
        }
        // Earn the driver's trust (1024 requests done inside io_submit) ...
        read_rounds(&buffered, &cached, BLOCK, 40).await;
        let before = handle.stats();
        // ... then lose it: 32 reads of 64 KiB, queued on one worker.
        read_rounds(&device, &data, LEN, 1).await;
        let after = handle.stats();
        assert!(
            after.quiet_submitted > before.quiet_submitted,
            "the device reads were not quiet: {after:?}"
        );
    }
    eprintln!("the loop device completed every read inside io_submit: the late path did not run");
}

#[tokio::test(flavor = "current_thread")]
async fn late_quiet_reads_are_found_current_thread() {
    late_quiet_reads_are_found(Driver::Kernel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_quiet_reads_are_found_multi_thread() {
    late_quiet_reads_are_found(Driver::Kernel).await;
}

/// The same under `Auto`, which sends `O_DIRECT` reads to the kernel too.
#[tokio::test(flavor = "current_thread")]
async fn late_quiet_reads_are_found_auto() {
    late_quiet_reads_are_found(Driver::Auto).await;
}
