//! Benchmark (ignored by default): fio's IOPS through our libaio versus the
//! system's libaio, in the same run, at 4 KiB random O_DIRECT reads with
//! depth 32. Runs alternate (system, ours, system, ours, ...) so that drift
//! of the device affects both alike; the ratio of the means must be at
//! least 0.98.
//!
//! ```text
//! cargo test --release -p aio-libaio --test bench -- --ignored --nocapture
//! ```
//!
//! A second benchmark does the same on tmpfs, where the library's own cost
//! is visible.
//!
//! `AIO_BENCH_SECONDS` (default 5) and `AIO_BENCH_ROUNDS` (default 3) set
//! the length of each fio run and the number of pairs; `AIO_TEST_DIR` the
//! directory of the 256 MiB test file.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use common::{Lib, fio, fio_iops, have_tool, scratch};

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "benchmark: run with --ignored (and --release)"]
fn fio_randread_iops_ours_vs_system_libaio() {
    let work = scratch();
    bench(work.path(), "test directory");
}

/// The same on tmpfs (`/dev/shm`, O_DIRECT since Linux 6.6): the "device"
/// costs almost nothing, completions are in the ring when fio asks, and the
/// library's own cost shows: ours answers io_getevents from the ring where
/// the original makes a system call.
#[test]
#[ignore = "benchmark: run with --ignored (and --release)"]
fn fio_randread_iops_ours_vs_system_libaio_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    let Ok(work) = tempfile::Builder::new()
        .prefix("aio-bench-")
        .tempdir_in(shm)
    else {
        eprintln!("SKIP: no /dev/shm");
        return;
    };
    let probe = work.path().join("probe");
    let direct = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    if let Err(e) = direct {
        eprintln!("SKIP: tmpfs refuses O_DIRECT here ({e})");
        return;
    }
    bench(work.path(), "tmpfs");
}

/// Runs the comparison with a 256 MiB file in `dir`; returns the ratio.
fn bench(dir: &Path, label: &str) -> f64 {
    if !have_tool("fio", "the benchmark runs fio") {
        return 0.0;
    }
    if !common::have_system_libaio() {
        eprintln!("SKIP: the system's libaio is needed for the comparison");
        return 0.0;
    }
    let seconds = env_u32("AIO_BENCH_SECONDS", 5);
    let rounds = env_u32("AIO_BENCH_ROUNDS", 3);
    let file = dir.join("bench.dat");
    let base: Vec<String> = vec![
        format!("--filename={}", file.display()),
        "--size=256m".into(),
        "--ioengine=libaio".into(),
        "--direct=1".into(),
        "--bs=4k".into(),
        "--iodepth=32".into(),
        "--rw=randread".into(),
        "--time_based=1".into(),
        format!("--runtime={seconds}"),
        "--ramp_time=1".into(),
        "--name=bench".into(),
    ];
    // Lay the file out once, outside the measured runs.
    let mut layout = base.clone();
    layout.retain(|a| {
        !a.starts_with("--time_based")
            && !a.starts_with("--runtime")
            && !a.starts_with("--ramp_time")
    });
    layout.push("--rw=write".into());
    layout.push("--bs=1m".into());
    fio(dir, Lib::System, &layout, Path::new("/bin/false"));

    let seccomp = Path::new(env!("CARGO_BIN_EXE_aio-seccomp-exec"));
    let (mut system, mut ours) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for lib in [Lib::System, Lib::Ours] {
            let run = fio(dir, lib, &base, seccomp);
            let iops = fio_iops(&run, "read");
            if lib == Lib::Ours {
                assert!(
                    run.log.contains("served by the kernel"),
                    "our library was not used:\n{}",
                    run.log
                );
                ours.push(iops);
            } else {
                system.push(iops);
            }
            println!("round {round}: {lib:?}: {iops:.0} IOPS");
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (s, o) = (mean(&system), mean(&ours));
    let ratio = o / s;
    println!(
        "fio 4k randread O_DIRECT depth 32 on {label}, {rounds}x{seconds}s: system libaio {s:.0} IOPS, aio-libaio {o:.0} IOPS, ratio {ratio:.3}"
    );
    assert!(
        ratio >= 0.98,
        "aio-libaio reached only {ratio:.3}x of the system libaio's IOPS"
    );
    ratio
}
