//! The `aio-tools` binary as a user runs it.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = tool().args(args).output().expect("run aio-tools");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A mount, unmounted on drop.
struct Mounted {
    at: PathBuf,
    // Removed after the unmount in Drop.
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn new(dev: &str) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().to_path_buf();
        sh("mount", &[dev, at.to_str().unwrap()]);
        Mounted { at, _dir: dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

fn file_in(dir: &Path) -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir_in(dir).unwrap();
    let f = d.path().join("vectest.dat").to_str().unwrap().to_owned();
    (d, f)
}

#[test]
fn vectest_passes_on_a_default_scratch_file_and_removes_it() {
    let r = run(&["vectest", "--size", "8M", "--seed", "11", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON summary");
    assert_eq!(
        (v["result"].as_str(), v["mismatched_requests"].as_u64()),
        (Some("pass"), Some(0))
    );
    let scratch = v["target"].as_str().unwrap();
    assert!(scratch.starts_with(std::env::temp_dir().to_str().unwrap()));
    assert!(
        !Path::new(scratch).exists(),
        "the scratch file {scratch} is removed"
    );
    // The human summary names what the issue asks for.
    let r = run(&["vectest", "--size", "4M", "--passes", "1"]);
    assert_eq!(r.code, 0);
    for word in [
        "PASS:",
        "requests",
        "bytes",
        "IOPS",
        "MiB/s",
        "p50",
        "p99",
        "p99.9",
        "mismatched",
    ] {
        assert!(r.stdout.contains(word), "{word} missing in {}", r.stdout);
    }
}

#[test]
fn vectest_passes_buffered_and_direct_on_a_file() {
    let (_d, f) = file_in(&scratch_dir());
    let r = run(&[
        "vectest",
        &f,
        "--size",
        "8M",
        "--buffered",
        "--passes",
        "2",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON summary");
    assert_eq!(v["result"], "pass");
    assert_eq!(
        v["bytes"],
        4 * (8 << 20),
        "2 passes x (write + read) x 8 MiB"
    );
    assert_eq!(v["direct"], false);

    let r = run(&["vectest", &f, "--size", "8M", "--direct", "--json"]);
    if r.code == 2 && r.stderr.contains("does not support O_DIRECT") {
        eprintln!("skipping O_DIRECT: {}", r.stderr);
        return;
    }
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["result"].as_str(), v["direct"].as_bool()),
        (Some("pass"), Some(true))
    );
}

#[test]
fn vectest_reports_a_misplaced_block_with_both_offsets() {
    let (_d, f) = file_in(&scratch_dir());
    let r = run(&[
        "vectest",
        &f,
        "--size",
        "4M",
        "--passes",
        "1",
        "--seed",
        "77",
        "--inject-misplaced-block",
        "1M",
    ]);
    assert_eq!(
        r.code, 1,
        "a detected corruption exits 1: {}{}",
        r.stdout, r.stderr
    );
    assert!(
        r.stdout.contains(
            "MISMATCH at offset 1048576 expected data of offset 1048576 pass 1, \
             found data of offset 1052672 pass 1"
        ),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("FAIL:"));
}

#[test]
fn vectest_passes_on_a_raw_loop_device() {
    if !require_root("vectest on a loop device") {
        return;
    }
    let lo = LoopDev::new(32);
    let r = run(&["vectest", &lo.dev, "--passes", "1", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["kind"], "block device");
    assert_eq!(v["direct"], true);
    assert_eq!(v["size"], 32 << 20);
}

#[test]
fn vectest_refuses_formatted_and_mounted_devices() {
    if !require_root("vectest's device refusals") {
        return;
    }
    let lo = LoopDev::new(32);
    sh("mkfs.ext4", &["-q", "-F", &lo.dev]);
    let r = run(&["vectest", &lo.dev]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("ext4 filesystem (signature at byte 1080)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--force"));

    {
        let m = Mounted::new(&lo.dev);
        let r = run(&["vectest", &lo.dev, "--force"]);
        assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&format!("mounted at {}", m.at.display())),
            "{}",
            r.stderr
        );
    }

    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&lo.dev)
            .unwrap();
        let r = run(&["vectest", &lo.dev, "--force"]);
        assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("another program has it open exclusively"),
            "{}",
            r.stderr
        );
    }

    // Unmounted again: --force overwrites the filesystem and passes.
    let r = run(&["vectest", &lo.dev, "--force", "--passes", "1"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--force: overwriting ext4 filesystem"));
}

#[test]
fn vectest_refuses_bad_arguments_with_exit_2() {
    let r = run(&["vectest", "--max-segments", "1025"]);
    assert_eq!(r.code, 2);
    let r = run(&["vectest", "/proc/self"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("neither a regular file nor a block device"),
        "{}",
        r.stderr
    );
    let r = run(&["vectest", "--size", "12q"]);
    assert_eq!(r.code, 2);
}

#[test]
fn probe_json_parses_and_reports_this_kernel() {
    let r = run(&["probe", "--json", scratch_dir().to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("probe --json is JSON");
    assert_eq!(v["aio_works"], true);
    assert_eq!(v["opcodes"]["PREADV"], true);
    assert_eq!(v["opcodes"]["NOOP"], "EINVAL");
    assert!(v["path"]["filesystem"].is_string());
    assert!(
        v["kernel"]
            .as_str()
            .unwrap()
            .starts_with(|c: char| c.is_ascii_digit())
    );
}

#[test]
fn stress_for_ten_seconds_finishes_with_zero_errors() {
    let dir = scratch_dir();
    let r = run(&[
        "stress",
        "--duration",
        "10s",
        "--json",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("stress --json is JSON");
    assert_eq!(
        (v["errors"].as_u64(), v["mismatches"].as_u64()),
        (Some(0), Some(0))
    );
    for w in ["mixed", "append", "sparse", "contexts"] {
        assert!(
            v["workloads"][w]["operations"].as_u64().unwrap() > 0,
            "{w} ran: {v}"
        );
    }
    let left = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("aio-stress-"))
        .count();
    assert_eq!(left, 0, "stress removes its files");
}

#[test]
fn stress_stops_at_the_ops_limit() {
    let r = run(&["stress", "--duration", "60s", "--ops", "20000", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(
        v["elapsed_s"].as_f64().unwrap() < 30.0,
        "stopped by --ops, not --duration: {v}"
    );
}

#[test]
fn bench_reports_iops_latency_cpu_and_syscalls() {
    let (_d, f) = file_in(&scratch_dir());
    let r = run(&[
        "bench",
        &f,
        "--size",
        "16M",
        "--runtime",
        "1s",
        "--iodepth",
        "16",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("bench --json is JSON");
    assert!(v["requests"].as_u64().unwrap() > 100);
    assert_eq!(v["errors"], 0);
    assert!(v["iops"].as_f64().unwrap() > 0.0);
    assert!(v["latency_us"]["p99"].as_f64().unwrap() >= v["latency_us"]["p50"].as_f64().unwrap());
    assert!(v["cpu"]["per_request_us"].as_f64().unwrap() > 0.0);
    // Batching: more requests than io_submit calls at depth 16.
    assert!(
        v["syscalls"]["requests_per_submit"].as_f64().unwrap() > 1.0,
        "{v}"
    );

    let r = run(&[
        "bench",
        &f,
        "--size",
        "16M",
        "--runtime",
        "1s",
        "--rw",
        "randwrite",
        "--segments",
        "64",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        v["requests"].as_u64().unwrap() * 64 * 4096
    );
}

#[test]
fn bench_refuses_a_batch_larger_than_the_depth() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b.dat").display().to_string();
    let r = run(&[
        "bench",
        &f,
        "--size",
        "1M",
        "--iodepth",
        "1",
        "--batch",
        "8",
    ]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("--batch 8") && r.stderr.contains("--batch 1 or less"),
        "{}",
        r.stderr
    );
}

#[test]
fn vectest_and_bench_run_on_the_tokio_api() {
    let (_d, f) = file_in(&scratch_dir());
    let r = run(&["vectest", &f, "--size", "8M", "--api", "tokio", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (v["result"].as_str(), v["api"].as_str()),
        (Some("pass"), Some("tokio"))
    );
    assert!(v["syscalls"]["io_submit"].as_u64().unwrap() > 0);

    let r = run(&[
        "bench",
        &f,
        "--size",
        "8M",
        "--runtime",
        "1s",
        "--api",
        "tokio",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["api"], "tokio");
    assert!(v["requests"].as_u64().unwrap() > 100);
    assert_eq!(v["errors"], 0);
}

#[test]
fn bench_json_carries_the_context_stats() {
    let (_d, f) = file_in(&scratch_dir());
    for api in ["sync", "tokio"] {
        let r = run(&[
            "bench",
            &f,
            "--size",
            "8M",
            "--runtime",
            "300ms",
            "--api",
            api,
            "--json",
        ]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let s = &v["stats"];
        let requests = s["requests"].as_u64().unwrap();
        assert!(requests >= v["requests"].as_u64().unwrap(), "{api}: {v}");
        assert!(s["completions"].as_u64().unwrap() >= v["requests"].as_u64().unwrap());
        assert!(s["submit_calls"].as_u64().unwrap() > 0, "{api}: {v}");
        for k in ["getevents_calls", "ring_reaps"] {
            assert!(s[k].is_u64(), "{api}: {k} in {v}");
        }
    }
}

#[test]
fn bench_runs_tokio_fs_for_comparison() {
    let (_d, f) = file_in(&scratch_dir());
    let r = run(&[
        "bench",
        &f,
        "--size",
        "8M",
        "--runtime",
        "300ms",
        "--api",
        "tokio-fs",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["api"], "tokio-fs");
    assert!(v["requests"].as_u64().unwrap() > 10, "{v}");
    assert_eq!(v["errors"], 0);
    assert!(
        v["stats"].is_null() && v["syscalls"].is_null(),
        "no AIO: {v}"
    );
    // Vectored writes: every byte of every segment is accounted for.
    let r = run(&[
        "bench",
        &f,
        "--size",
        "8M",
        "--runtime",
        "300ms",
        "--rw",
        "randwrite",
        "--segments",
        "8",
        "--iodepth",
        "4",
        "--api",
        "tokio-fs",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["bytes"].as_u64().unwrap(),
        v["requests"].as_u64().unwrap() * 8 * 4096
    );
}

#[test]
fn vectest_stress_and_bench_take_each_driver() {
    let (d, f) = file_in(&scratch_dir());
    for driver in ["auto", "kernel", "engine"] {
        let r = run(&["vectest", &f, "--size", "4M", "--driver", driver, "--json"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(
            (v["result"].as_str(), v["driver"].as_str()),
            (Some("pass"), Some(driver))
        );
        let on_engine = v["syscalls"]["engine_requests"].as_u64().unwrap();
        let requests = v["requests"].as_u64().unwrap();
        match driver {
            "kernel" => assert_eq!(on_engine, 0, "{v}"),
            "engine" => assert_eq!(on_engine, requests, "{v}"),
            // Buffered writes run on the engine, page-cached reads do not.
            _ => assert!(on_engine > 0 && on_engine < requests, "{v}"),
        }

        let r = run(&[
            "bench",
            &f,
            "--size",
            "4M",
            "--runtime",
            "300ms",
            "--jobs",
            "2",
            "--driver",
            driver,
            "--json",
        ]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(
            (v["driver"].as_str(), v["jobs"].as_u64()),
            (Some(driver), Some(2))
        );
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["submit_us"]["p99"].as_f64().unwrap() > 0.0, "{v}");
        let s = &v["stats"];
        assert!(s["requests"].as_u64().unwrap() >= v["requests"].as_u64().unwrap());
        if driver == "engine" {
            assert_eq!(s["engine_submitted"], s["submitted"], "{v}");
        }

        // In its own directory: another test counts the stress files left
        // in the shared one.
        let own = d.path().to_str().unwrap();
        let r = run(&[
            "stress",
            "--duration",
            "1s",
            "--driver",
            driver,
            "--json",
            "--dir",
            own,
        ]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    }
    let r = run(&["vectest", &f, "--driver", "uring"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
}
