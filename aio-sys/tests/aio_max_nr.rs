//! `fs.aio-max-nr` exhaustion gives EAGAIN. Lowers the sysctl as root and
//! restores it even when the test fails; a test binary of its own, so no
//! other test of this crate runs while the limit is low.

mod common;

use aio_sys::abi::Errno;
use aio_sys::probe::{SetupFailure, read_fs_sysctl};
use aio_sys::{io_destroy, io_setup};
use common::*;

const MAX_NR: &str = "/proc/sys/fs/aio-max-nr";

/// Restores `fs.aio-max-nr` on drop, also during a panic.
struct RestoreMaxNr(u64);

impl Drop for RestoreMaxNr {
    fn drop(&mut self) {
        std::fs::write(MAX_NR, self.0.to_string()).expect("restore fs.aio-max-nr");
    }
}

#[test]
fn exhausted_aio_max_nr_gives_eagain() {
    if !require_root("lowering fs.aio-max-nr") {
        return;
    }
    let original = read_fs_sysctl("aio-max-nr").expect("read fs.aio-max-nr");
    let _restore = RestoreMaxNr(original);
    let in_use = read_fs_sysctl("aio-nr").unwrap();
    // Leave room for exactly 100 more requested events.
    std::fs::write(MAX_NR, (in_use + 100).to_string()).unwrap();

    // More than the whole limit: refused before any accounting.
    assert_eq!(io_setup((in_use + 101) as u32), Err(Errno::EAGAIN));
    // Fits: accepted, and accounted with the requested count.
    let ctx = io_setup(60).expect("60 of 100 remaining");
    assert_eq!(read_fs_sysctl("aio-nr"), Some(in_use + 60));
    // 60 + 60 > 100.
    assert_eq!(io_setup(60), Err(Errno::EAGAIN));
    let probe = aio_sys::probe(None);
    assert!(probe.setup.is_ok(), "the probe needs only 8 of the 40 left");
    // SAFETY: no view of this ring exists.
    unsafe { io_destroy(ctx) }.unwrap();
    assert_eq!(read_fs_sysctl("aio-nr"), Some(in_use));

    // With nothing left, the probe explains what to do.
    std::fs::write(MAX_NR, in_use.to_string()).unwrap();
    let probe = aio_sys::probe(None);
    assert_eq!(probe.setup, Err(SetupFailure::LimitReached));
    assert!(SetupFailure::LimitReached.advice().contains("aio-max-nr"));
}
