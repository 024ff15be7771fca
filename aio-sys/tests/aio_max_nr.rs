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

/// One attempt at the whole check; `Err` when another process changed
/// `aio-nr` meanwhile (then the numbers mean nothing and we try again).
fn attempt() -> Result<(), String> {
    let in_use = read_fs_sysctl("aio-nr").unwrap();
    let disturbed = |expected: u64| {
        let now = read_fs_sysctl("aio-nr").unwrap();
        (now != expected).then(|| format!("aio-nr is {now}, expected {expected}"))
    };
    // Leave room for exactly 100 more requested events.
    std::fs::write(MAX_NR, (in_use + 100).to_string()).unwrap();

    // More than the whole limit: refused before any accounting.
    assert_eq!(io_setup((in_use + 101) as u32), Err(Errno::EAGAIN));
    // Fits: accepted, and accounted with the requested count.
    let ctx = match io_setup(60) {
        Ok(ctx) => ctx,
        Err(e) => return Err(disturbed(in_use).unwrap_or(format!("io_setup(60): {e:?}"))),
    };
    // SAFETY: no view of this ring exists; destroyed once, on every path.
    let destroy = || unsafe { io_destroy(ctx) }.unwrap();
    if let Some(why) = disturbed(in_use + 60) {
        destroy();
        return Err(why);
    }
    // 60 + 60 > 100.
    let second = io_setup(60);
    if let Ok(other) = second {
        // SAFETY: as above, for the context that should not exist.
        unsafe { io_destroy(other) }.unwrap();
    }
    if let Some(why) = disturbed(in_use + 60) {
        destroy();
        return Err(why);
    }
    assert_eq!(second, Err(Errno::EAGAIN));
    let probe = aio_sys::probe(None);
    assert!(probe.setup.is_ok(), "the probe needs only 8 of the 40 left");
    destroy();
    if let Some(why) = disturbed(in_use) {
        return Err(why);
    }

    // With nothing left, the probe explains what to do.
    std::fs::write(MAX_NR, in_use.to_string()).unwrap();
    let probe = aio_sys::probe(None);
    if probe.setup.is_ok() {
        return Err(disturbed(in_use).unwrap_or("io_setup(8) fit in a full aio-nr".into()));
    }
    assert_eq!(probe.setup, Err(SetupFailure::LimitReached));
    assert!(SetupFailure::LimitReached.advice().contains("aio-max-nr"));
    Ok(())
}

#[test]
fn exhausted_aio_max_nr_gives_eagain() {
    if !require_root("lowering fs.aio-max-nr") {
        return;
    }
    let original = read_fs_sysctl("aio-max-nr").expect("read fs.aio-max-nr");
    let _restore = RestoreMaxNr(original);
    // Other processes on the machine may set up or destroy contexts while
    // this runs; CI runs nothing else, so the first attempt decides there.
    let mut last = String::new();
    for _ in 0..20 {
        match attempt() {
            Ok(()) => return,
            Err(why) => last = why,
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("aio-nr kept changing under the test: {last}");
}
