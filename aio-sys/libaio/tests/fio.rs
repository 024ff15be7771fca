//! fio from Debian, unchanged, with `--ioengine=libaio`, loading our
//! `libaio.so.1` through `LD_LIBRARY_PATH`: random reads and random writes
//! with `--verify=crc32c`, `--userspace_reap=1`, `--nowait=1` (and
//! `--libaio_vectored=1` where fio has it), at depths 1 and 32; then the
//! same runs under a seccomp filter that refuses the AIO system calls, where
//! the engine serves them.
//!
//! Each run must show in our log that our library was loaded and which
//! driver served each context: a pass on the system's libaio proves nothing.

mod common;

use std::path::Path;

use common::{FioRun, Lib, fio, fio_has_libaio_vectored, have_tool, scratch};

const SIZE: &str = "16m";

fn seccomp_exec() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_aio-seccomp-exec"))
}

/// Whether files in `dir` can be opened with O_DIRECT (not on tmpfs before
/// Linux 6.6): the runs use it where they can.
fn direct_ok(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let ok = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dir.join("direct-probe"))
        .is_ok();
    if !ok {
        eprintln!(
            "NOTE: no O_DIRECT in {}: buffered fio runs (set AIO_TEST_DIR)",
            dir.display()
        );
    }
    ok
}

/// The options every run shares.
fn common_args(file: &Path, depth: u32) -> Vec<String> {
    let direct = direct_ok(file.parent().expect("file in a directory"));
    let mut a: Vec<String> = [
        format!("--filename={}", file.display()),
        format!("--size={SIZE}"),
        "--ioengine=libaio".into(),
        format!("--direct={}", u8::from(direct)),
        "--bs=4k".into(),
        format!("--iodepth={depth}"),
        "--verify=crc32c".into(),
        "--userspace_reap=1".into(),
        "--nowait=1".into(),
        "--randrepeat=0".into(),
    ]
    .into();
    if fio_has_libaio_vectored() {
        a.push("--libaio_vectored=1".into());
    }
    a
}

/// Random writes, each block verified (crc32c) after the write phase.
fn randwrite(file: &Path, depth: u32) -> Vec<String> {
    let mut a = common_args(file, depth);
    a.extend(["--name=randwrite".into(), "--rw=randwrite".into()]);
    a
}

/// A sequential fill with verify headers, then random reads that verify
/// every block they read.
fn randread(file: &Path, depth: u32) -> Vec<String> {
    let mut a = common_args(file, depth);
    a.extend([
        "--name=fill".into(),
        "--rw=write".into(),
        "--do_verify=0".into(),
        "--name=randread".into(),
        "--stonewall".into(),
        "--rw=randread".into(),
    ]);
    a
}

/// The checks every run of ours must pass; returns the total number of
/// blocks verified.
fn check(run: &FioRun, what: &str, driver: &str) -> u64 {
    let jobs = run.json["jobs"].as_array().expect("jobs");
    let mut verified = 0;
    for j in jobs {
        assert_eq!(
            j["error"].as_i64(),
            Some(0),
            "{what}: job error\n{}",
            run.stderr
        );
        verified += j["read"]["total_ios"].as_u64().unwrap_or(0);
    }
    assert!(
        !run.stderr.contains("verify:"),
        "{what}: verify errors:\n{}",
        run.stderr
    );
    // 16 MiB of 4 KiB blocks are read back and verified.
    assert_eq!(verified, 4096, "{what}: blocks read back and verified");
    assert!(
        run.log.contains("loaded aio-libaio"),
        "{what}: our library was not loaded:\n{}",
        run.log
    );
    let setups = run.log.matches(&format!("served by the {driver}")).count();
    assert!(
        setups >= 1,
        "{what}: no context served by the {driver}:\n{}",
        run.log
    );
    let destroyed = run.log.matches(") = 0: ").count();
    assert_eq!(
        setups, destroyed,
        "{what}: every context must be destroyed cleanly:\n{}",
        run.log
    );
    verified
}

fn matrix(lib: Lib, driver: &str) {
    if !have_tool("fio", "runs fio against our libaio") || !have_tool("cc", "cargo needs a linker")
    {
        return;
    }
    if !fio_has_libaio_vectored() {
        eprintln!(
            "NOTE: this fio has no --libaio_vectored (fio 3.33 in Debian 12); \
             vectored requests are covered by the c_api tests"
        );
    }
    let work = scratch();
    for depth in [1, 32] {
        for (name, args) in [
            ("randwrite", randwrite(&work.path().join("data"), depth)),
            ("randread", randread(&work.path().join("data"), depth)),
        ] {
            let what = format!("{name} depth {depth} ({lib:?})");
            let run = fio(work.path(), lib, &args, seccomp_exec());
            let n = check(&run, &what, driver);
            println!(
                "ok {what}: {n} blocks verified, {:.0} read IOPS, {:.0} write IOPS",
                common::fio_iops(&run, "read"),
                common::fio_iops(&run, "write")
            );
        }
    }
}

#[test]
fn fio_verifies_random_reads_and_writes_through_our_libaio() {
    matrix(Lib::Ours, "kernel");
}

#[test]
fn fio_passes_under_a_seccomp_filter_with_the_engine() {
    matrix(Lib::OursSeccomp, "engine");
}

/// Without `--userspace_reap`, fio takes every completion through
/// io_getevents. With buffered I/O the kernel posts each completion inside
/// io_submit, so when fio asks, the events are in the ring: ours must hand
/// them over without a system call.
#[test]
fn fio_completions_come_from_our_ring_reaper() {
    if !have_tool("fio", "runs fio against our libaio") {
        return;
    }
    let work = scratch();
    let file = work.path().join("data");
    let args: Vec<String> = [
        format!("--filename={}", file.display()),
        format!("--size={SIZE}"),
        "--ioengine=libaio".into(),
        "--direct=0".into(),
        "--bs=4k".into(),
        "--iodepth=32".into(),
        "--iodepth_batch_complete_min=1".into(),
        "--iodepth_batch_complete_max=32".into(),
        "--name=randread".into(),
        "--rw=randread".into(),
    ]
    .into();
    let run = fio(work.path(), Lib::Ours, &args, seccomp_exec());
    let line = run
        .log
        .lines()
        .find(|l| l.contains("events reaped from the ring"))
        .unwrap_or_else(|| panic!("no io_destroy report:\n{}", run.log));
    let from_ring: u64 = line
        .split(": ")
        .nth(2)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line}"));
    println!("{line}");
    assert!(from_ring > 0, "{line}");
    assert!(line.contains(" 0 calls waited in the kernel"), "{line}");
}
