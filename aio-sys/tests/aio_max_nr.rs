//! `fs.aio-max-nr` exhaustion gives EAGAIN. Lowers the sysctl as root, for
//! as few system calls as each check needs, and restores it at once, also
//! when a check fails: other programs' `io_setup` fails while the limit is
//! low. A test binary of its own, so no other test of this crate runs
//! meanwhile; `cargo xtask test` runs it once (its `test` step), not on
//! every filesystem of the matrix, since the limit is the machine's.

mod common;

use aio_sys::abi::Errno;
use aio_sys::probe::{SetupFailure, read_fs_sysctl};
use aio_sys::{io_destroy, io_setup};
use common::*;

const MAX_NR: &str = "/proc/sys/fs/aio-max-nr";

/// `fs.aio-max-nr` lowered to a value until dropped (also during a panic),
/// then restored.
struct Lowered(u64);

impl Lowered {
    fn to(limit: u64, original: u64) -> Lowered {
        std::fs::write(MAX_NR, limit.to_string()).expect("lower fs.aio-max-nr");
        Lowered(original)
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        std::fs::write(MAX_NR, self.0.to_string()).expect("restore fs.aio-max-nr");
    }
}

/// One attempt at the whole check; `Err` when another process changed
/// `aio-nr` meanwhile (then the numbers mean nothing and we try again).
fn attempt(original: u64) -> Result<(), String> {
    let in_use = read_fs_sysctl("aio-nr").unwrap();
    let disturbed = |expected: u64| {
        let now = read_fs_sysctl("aio-nr").unwrap();
        (now != expected).then(|| format!("aio-nr is {now}, expected {expected}"))
    };
    let (too_big, first, second) = {
        // Room for exactly 100 more requested events.
        let _low = Lowered::to(in_use + 100, original);
        // More than the whole limit: refused before any accounting.
        let too_big = io_setup((in_use + 101) as u32);
        // Fits: accepted, and accounted with the requested count.
        let first = io_setup(60);
        // 60 + 60 > 100.
        let second = first.is_ok().then(|| io_setup(60));
        (too_big, first, second)
    };
    let first_nr = read_fs_sysctl("aio-nr").unwrap();
    for ctx in [first.ok(), second.and_then(Result::ok)]
        .into_iter()
        .flatten()
    {
        // SAFETY: no view of these rings exists; each destroyed once.
        unsafe { io_destroy(ctx) }.unwrap();
    }
    if let Err(e) = first {
        return Err(disturbed(in_use).unwrap_or(format!("io_setup(60): {e:?}")));
    }
    let ours = if second.is_some_and(|s| s.is_ok()) {
        120
    } else {
        60
    };
    if first_nr != in_use + ours {
        return Err(format!(
            "aio-nr was {first_nr} with our contexts, {in_use} before"
        ));
    }
    assert_eq!(too_big, Err(Errno::EAGAIN));
    assert_eq!(second.map(|s| s.map(drop)), Some(Err(Errno::EAGAIN)));

    // With nothing left, the probe explains what to do.
    let probe = {
        let _low = Lowered::to(in_use, original);
        aio_sys::probe(None)
    };
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
    // Other processes on the machine may set up or destroy contexts while
    // this runs; CI runs nothing else, so the first attempt decides there.
    let mut last = String::new();
    for _ in 0..20 {
        match attempt(original) {
            Ok(()) => return,
            Err(why) => last = why,
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("aio-nr kept changing under the test: {last}");
}
