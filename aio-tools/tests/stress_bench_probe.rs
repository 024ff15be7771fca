//! stress, bench and probe (and vectest's reports) tell the truth: which
//! driver served the requests, what could not be tested and why, how a
//! run ended (signals, environment failures, usage errors, also with
//! `--json`), and failures as sentences, capped on screen.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use aio_sys::seccomp::{Refuse, refuse_aio};
use assert_cmd::cargo::CommandCargoExt;
use serde_json::Value;

fn tool() -> Command {
    Command::cargo_bin("aio-tools").expect("aio-tools binary")
}

fn scratch_dir() -> PathBuf {
    std::env::var_os("AIO_TEST_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn require_root(what: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!in_ci(), "{what} needs root, and CI runs as root");
    eprintln!("skipping {what}: needs root");
    false
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", self.stdout, self.stderr))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn output(mut cmd: Command) -> Run {
    let out = cmd.output().expect("run aio-tools");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Run {
    let mut cmd = tool();
    cmd.args(args);
    output(cmd)
}

/// `aio-tools args` with the AIO calls of `refuse` failing with `errno`, as
/// under a container runtime's seccomp profile. The filter is installed in
/// the child between fork and exec (`prctl` and `seccomp` only).
fn run_refused(refuse: Refuse, errno: aio::Errno, args: &[&str]) -> Run {
    let mut cmd = tool();
    cmd.args(args);
    // SAFETY: the closure only installs a seccomp filter.
    unsafe { cmd.pre_exec(move || refuse_aio(refuse, errno)) };
    output(cmd)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    at: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().to_path_buf();
        sh(
            "mount",
            &["-t", "tmpfs", "-o", options, "tmpfs", at.to_str().unwrap()],
        );
        Tmpfs { at, _dir: dir }
    }

    fn path(&self) -> &str {
        self.at.to_str().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

const SECCOMP_ENGINE: &str = "engine: io_setup refused with EPERM by a seccomp filter";

fn assert_engine_json(v: &Value) {
    let why = &v["kernel_unavailable"];
    assert_eq!(why["errno"], "EPERM", "{v}");
    assert!(
        why["message"]
            .as_str()
            .unwrap()
            .starts_with("io_setup refused with EPERM by a seccomp filter"),
        "{v}"
    );
}

// --- A: the engine serving everything is said, not hidden ----------------

#[test]
fn vectest_under_seccomp_says_the_engine_serves_everything() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let f = dir.path().join("v.dat");
    let f = f.to_str().unwrap();
    let r = run_refused(
        Refuse::All,
        aio::Errno::EPERM,
        &["vectest", f, "--size", "4M", "--passes", "1", "--json"],
    );
    assert_eq!(r.code, Some(0), "{r}");
    let v = r.json();
    assert_engine_json(&v);
    assert_eq!(v["syscalls"]["io_submit"], 0, "{v}");
    assert_eq!(v["syscalls"]["io_getevents"], 0, "{v}");
    assert_eq!(v["syscalls"]["engine_requests"], v["requests"], "{v}");

    let r = run_refused(
        Refuse::All,
        aio::Errno::EPERM,
        &["vectest", f, "--size", "4M", "--passes", "1"],
    );
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains(SECCOMP_ENGINE), "{r}");
    assert!(r.stdout.contains("syscalls: 0 io_submit"), "{r}");
}

// --- D: failures as sentences, capped on screen, all in JSON -------------

#[test]
fn vectest_caps_its_error_list_on_screen_and_lists_all_in_json() {
    if !require_root("a small tmpfs") {
        return;
    }
    let fs = Tmpfs::new("size=1M");
    let f = format!("{}/v.dat", fs.path());
    let args = [
        "vectest",
        &f,
        "--size",
        "8M",
        "--passes",
        "1",
        "--max-request",
        "64k",
    ];
    let r = run(&[&args[..], &["--json"]].concat());
    assert_eq!(r.code, Some(1), "{r}");
    let v = r.json();
    let errors = v["errors"].as_array().unwrap();
    assert!(errors.len() > 20, "{v}");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("ENOSPC")),
        "{v}"
    );
    let r = run(&args);
    assert_eq!(r.code, Some(1), "{r}");
    let shown = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("error: "))
        .count();
    assert!(shown <= 20, "{r}");
    assert!(r.stdout.contains("more ("), "{r}");
}

// --- E: bench refuses what it cannot measure -----------------------------

#[test]
fn vectest_refuses_a_zero_max_request() {
    let r = run(&["vectest", "--size", "1M", "--max-request", "0"]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("--max-request"), "{r}");
}

fn assert_json_usage_error(args: &[&str]) {
    let r = run(args);
    assert_eq!(r.code, Some(2), "{args:?}: {r}");
    let v = r.json();
    assert_eq!(v["result"], "error", "{args:?}: {v}");
    assert!(!v["error"].as_str().unwrap().is_empty(), "{args:?}: {v}");
}

// --- F: --json always prints JSON -----------------------------------------

#[test]
fn json_usage_errors_of_the_command_line_and_vectest_print_a_json_object() {
    assert_json_usage_error(&["--json", "no-such-command"]);
    assert_json_usage_error(&["--json", "vectest", "--max-segments", "0"]);
    assert_json_usage_error(&["vectest", "--json", "/proc/self"]);
    // --help is not an error.
    let r = run(&["--json", "--help"]);
    assert_eq!(r.code, Some(0), "{r}");
}
