//! stress, bench and probe (and vectest's reports) tell the truth: which
//! driver served the requests, what could not be tested and why, how a
//! run ended (signals, environment failures, usage errors, also with
//! `--json`), and failures as sentences, capped on screen.

mod common;

use common::*;
use std::io::{self, Read as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aio_sys::seccomp::{Refuse, refuse_aio};
use serde_json::Value;

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

/// A child killed if the test ends before it does.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `args`, sends `signal` once `ready()` (an event the command makes
/// happen once it handles signals), and collects what it printed.
fn interrupted(args: &[&str], signal: i32, ready: impl Fn() -> bool) -> Run {
    let mut cmd = tool();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Reaped(Some(cmd.spawn().expect("spawn aio-tools")));
    // Only a guard against hanging forever, not a timing assertion.
    let give_up = Instant::now() + Duration::from_secs(300);
    let c = child.0.as_mut().unwrap();
    while !ready() {
        assert!(Instant::now() < give_up, "the command never became ready");
        if c.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: a signal to our own child, which has not been waited for.
    unsafe { libc::kill(c.id() as libc::pid_t, signal) };
    let mut c = child.0.take().unwrap();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut err = c.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        err.read_to_string(&mut stderr).unwrap();
        stderr
    });
    c.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = c.wait().unwrap();
    Run {
        code: status.code(),
        stdout,
        stderr: reader.join().unwrap(),
    }
}

/// Entries of `dir` whose name starts with `prefix`.
fn entries(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
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

#[test]
fn bench_under_seccomp_says_the_engine_serves_everything() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let f = dir.path().join("b.dat");
    let f = f.to_str().unwrap();
    let args = ["bench", f, "--size", "4M", "--runtime", "200ms"];
    let r = run_refused(
        Refuse::All,
        aio::Errno::EPERM,
        &[&args[..], &["--json"]].concat(),
    );
    assert_eq!(r.code, Some(0), "{r}");
    let v = r.json();
    assert_engine_json(&v);
    assert_eq!(v["syscalls"]["io_submit"], 0, "{v}");
    assert_eq!(
        v["stats"]["engine_submitted"], v["stats"]["submitted"],
        "{v}"
    );
    let r = run_refused(Refuse::All, aio::Errno::EPERM, &args);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stdout.contains(SECCOMP_ENGINE), "{r}");
    assert!(r.stdout.contains("syscalls: 0 io_submit"), "{r}");
}

#[test]
fn stress_under_seccomp_says_the_engine_serves_everything() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let d = dir.path().to_str().unwrap();
    let args = ["stress", "--duration", "1s", "--dir", d];
    let r = run_refused(
        Refuse::All,
        aio::Errno::EPERM,
        &[&args[..], &["--json"]].concat(),
    );
    assert_eq!(r.code, Some(0), "{r}");
    assert_engine_json(&r.json());
    let r = run_refused(Refuse::All, aio::Errno::EPERM, &args);
    assert_eq!(r.code, Some(0), "{r}");
    assert!(r.stderr.contains(SECCOMP_ENGINE), "{r}");
}

#[test]
fn probe_under_seccomp_says_the_auto_driver_uses_the_engine() {
    let r = run_refused(Refuse::All, aio::Errno::EPERM, &["probe", "--json"]);
    assert_eq!(r.code, Some(1), "AIO does not work here: {r}");
    let v = r.json();
    assert_eq!(v["aio_works"], false);
    assert_engine_json(&v);
    let r = run_refused(Refuse::All, aio::Errno::EPERM, &["probe"]);
    assert!(r.stdout.contains(SECCOMP_ENGINE), "{r}");
}

/// `AUDIT_ARCH_*` of this architecture.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Makes `openat` with `O_TMPFILE` fail with `EOPNOTSUPP`, as on FUSE:
/// a seccomp filter for this process (installed in a child before exec).
fn refuse_o_tmpfile() -> io::Result<()> {
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let jset = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
    // __O_TMPFILE without O_DIRECTORY: the bit only O_TMPFILE sets.
    let tmpfile_bit = (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;
    let filter = [
        stmt(ld, 4),
        jump(jeq, AUDIT_ARCH, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(ld, 0),
        jump(jeq, libc::SYS_openat as u32, 0, 3),
        // args[2], the flags: low 32 bits (little-endian).
        stmt(ld, 16 + 2 * 8),
        jump(jset, tmpfile_bit, 0, 1),
        stmt(
            ret,
            libc::SECCOMP_RET_ERRNO | (libc::EOPNOTSUPP as u32 & libc::SECCOMP_RET_DATA),
        ),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments, then seccomp reading `prog`,
    // which outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

// --- B: probe answers from the thing it names ----------------------------

#[test]
fn probe_finds_o_direct_where_o_tmpfile_is_refused() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let d = dir.path().to_str().unwrap();
    let direct = run(&["probe", "--json", d]).json()["path"]["o_direct"].clone();
    if direct != true {
        eprintln!("skipping: no O_DIRECT in {d} ({direct})");
        return;
    }
    let mut cmd = tool();
    cmd.args(["probe", "--json", d]);
    // SAFETY: the closure only installs a seccomp filter.
    unsafe { cmd.pre_exec(refuse_o_tmpfile) };
    let r = output(cmd);
    assert_eq!(r.code, Some(0), "{r}");
    let v = r.json();
    assert_eq!(v["path"]["o_direct"], true, "{v}");
    assert_eq!(entries(dir.path(), ""), 0, "the probe removes its files");
}

#[test]
fn probe_of_a_block_device_probes_the_device() {
    if !require_root("probe of a loop device") {
        return;
    }
    let lo = LoopDev::new(8);
    let r = run(&["probe", "--json", &lo.dev]);
    assert_eq!(r.code, Some(0), "{r}");
    let v = r.json();
    let p = &v["path"];
    assert_eq!(p["kind"], "block device", "{v}");
    assert!(
        p["filesystem"].is_null(),
        "not the devtmpfs of its node: {v}"
    );
    assert_eq!(p["o_direct"], true, "{v}");
    assert!(!p["rwf_nowait"].is_null(), "{v}");
    let r = run(&["probe", &lo.dev]);
    assert!(r.stdout.contains("block device"), "{r}");
    assert!(!r.stdout.contains("devtmpfs"), "{r}");
}

#[test]
fn probe_says_what_it_could_not_test_when_io_setup_fails() {
    // aio-max-nr reached, as io_setup reports it (EAGAIN), without
    // touching the machine's limit.
    let r = run_refused(Refuse::Setup, aio::Errno::EAGAIN, &["probe", "--json"]);
    assert_eq!(r.code, Some(1), "{r}");
    let v = r.json();
    let why = v["io_pgetevents"]["untested"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(why.contains("io_setup"), "{v}");
    let r = run_refused(Refuse::Setup, aio::Errno::EAGAIN, &["probe"]);
    assert!(
        r.stdout.contains("io_pgetevents could not be tested"),
        "{r}"
    );
    assert!(!r.stdout.contains("no (EAGAIN)"), "{r}");
}

#[test]
fn probe_on_a_read_only_directory_still_probes_io_pgetevents() {
    if !require_root("a read-only tmpfs") {
        return;
    }
    let ro = Tmpfs::new("ro,size=1M");
    let r = run(&["probe", "--json", ro.path()]);
    assert_eq!(r.code, Some(0), "{r}");
    let v = r.json();
    assert_eq!(v["io_pgetevents"], true, "{v}");
    let why = v["path"]["o_direct"]["untested"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(why.contains("EROFS"), "{v}");
    let r = run(&["probe", ro.path()]);
    assert!(r.stdout.contains("could not be tested"), "{r}");
}

// --- C: stress stops on signals and on environment failures --------------

#[test]
fn stress_stops_on_sigint_reports_in_json_removes_its_files_and_exits_2() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let d = dir.path().to_str().unwrap();
    let r = interrupted(
        &["stress", "--duration", "30s", "--json", "--dir", d],
        libc::SIGINT,
        || entries(dir.path(), "aio-stress-") > 0,
    );
    assert_eq!(r.code, Some(2), "{r}");
    let v = r.json();
    assert_eq!(v["result"], "interrupted", "{v}");
    assert!(v["operations"].is_u64(), "{v}");
    assert_eq!(entries(dir.path(), "aio-stress-"), 0, "files removed: {r}");
}

#[test]
fn stress_stops_on_sigterm_and_says_what_it_did() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let d = dir.path().to_str().unwrap();
    let r = interrupted(
        &["stress", "--duration", "30s", "--dir", d],
        libc::SIGTERM,
        || entries(dir.path(), "aio-stress-") > 0,
    );
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stdout.contains("INTERRUPTED:"), "{r}");
    assert!(r.stdout.contains("operations"), "{r}");
    assert_eq!(entries(dir.path(), "aio-stress-"), 0, "files removed: {r}");
}

#[test]
fn stress_rejects_a_duration_that_overflows() {
    for d in ["307445734561825861m", "18446744073709551615s"] {
        let r = run(&["stress", "--duration", d]);
        assert_eq!(r.code, Some(2), "{d}: {r}");
        assert!(r.stderr.contains("--duration"), "{d}: {r}");
    }
}

#[test]
fn stress_exits_2_with_the_cause_when_aio_is_refused() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let d = dir.path().to_str().unwrap();
    let r = run_refused(
        Refuse::All,
        aio::Errno::EPERM,
        &[
            "stress",
            "--duration",
            "2s",
            "--driver",
            "kernel",
            "--json",
            "--dir",
            d,
        ],
    );
    assert_eq!(r.code, Some(2), "{r}");
    let v = r.json();
    assert_eq!(v["result"], "error", "{v}");
    assert!(v["error"].as_str().unwrap().contains("seccomp"), "{v}");
    assert_eq!(entries(dir.path(), "aio-stress-"), 0, "files removed: {r}");
}

#[test]
fn stress_exits_2_with_the_cause_when_aio_max_nr_is_reached() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let d = dir.path().to_str().unwrap();
    // io_setup answers EAGAIN, as when aio-nr has reached aio-max-nr.
    let r = run_refused(
        Refuse::Setup,
        aio::Errno::EAGAIN,
        &["stress", "--duration", "2s", "--dir", d],
    );
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("aio-max-nr"), "{r}");
    assert!(r.stdout.lines().count() < 50, "no flood of failures: {r}");
}

// --- D: failures as sentences, capped on screen, all in JSON -------------

#[test]
fn stress_on_a_full_filesystem_reports_failed_writes_once_in_sentences() {
    if !require_root("a small tmpfs") {
        return;
    }
    let fs = Tmpfs::new("size=1M");
    let args = [
        "stress",
        "--dir",
        fs.path(),
        "--file-size",
        "256k",
        "--ops",
        "20000",
        "--duration",
        "5s",
    ];
    let r = run(&[&args[..], &["--json"]].concat());
    assert_eq!(r.code, Some(1), "{r}");
    let v = r.json();
    let failures: Vec<&str> = v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let errors = v["errors"].as_u64().unwrap();
    assert!(errors > 0, "{v}");
    assert_eq!(
        failures.len() as u64,
        errors + v["mismatches"].as_u64().unwrap(),
        "every failure listed: {v}"
    );
    for f in &failures {
        assert!(
            !f.contains("Err(") && !f.contains("Ok(") && !f.contains("Os {"),
            "{f}"
        );
    }
    assert!(
        failures
            .iter()
            .any(|f| f.contains("ENOSPC") && f.contains(fs.path()) && f.contains("bytes ")),
        "{v}"
    );
    // Ranges whose write failed are not verified.
    assert_eq!(v["workloads"]["mixed"]["mismatches"], 0, "{v}");

    let r = run(&args);
    assert_eq!(r.code, Some(1), "{r}");
    let shown = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("failure: "))
        .count();
    assert!(shown <= 20, "{r}");
    assert!(r.stdout.contains("more ("), "{r}");
}

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
    // The partly written file is not one vectest would overwrite again
    // without --force: start from no file, as the first run did.
    std::fs::remove_file(&f).unwrap();
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

#[test]
fn bench_refuses_a_zero_block_size_and_runtime() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let f = dir.path().join("b.dat");
    let f = f.to_str().unwrap();
    for (args, flag) in [
        (&["bench", f, "--size", "1M", "--bs", "0"], "--bs"),
        (&["bench", f, "--size", "1M", "--runtime", "0"], "--runtime"),
    ] {
        let r = run(args);
        assert_eq!(r.code, Some(2), "{args:?}: {r}");
        assert!(r.stderr.contains(flag), "{args:?}: {r}");
    }
}

#[test]
fn bench_refuses_a_size_larger_than_the_device() {
    if !require_root("bench on a loop device") {
        return;
    }
    let lo = LoopDev::new(8);
    let r = run(&["bench", &lo.dev, "--size", "16M", "--runtime", "100ms"]);
    assert_eq!(r.code, Some(2), "{r}");
    assert!(r.stderr.contains("--size"), "{r}");
    assert!(r.stderr.contains(&(8u64 << 20).to_string()), "{r}");
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

#[test]
fn json_usage_errors_of_bench_print_a_json_object() {
    assert_json_usage_error(&["--json", "bench"]);
    assert_json_usage_error(&["bench", "/no/such/dir/f", "--json"]);
}

#[test]
fn json_usage_errors_of_probe_print_a_json_object() {
    assert_json_usage_error(&["probe", "--json", "/no/such/path"]);
}

#[test]
fn json_usage_errors_of_stress_print_a_json_object() {
    assert_json_usage_error(&["stress", "--json", "--dir", "/no/such/dir"]);
}

#[test]
fn bench_stops_on_sigint_and_reports_in_json() {
    let dir = tempfile::tempdir_in(scratch_dir()).unwrap();
    let f = dir.path().join("b.dat");
    let r = interrupted(
        &[
            "bench",
            f.to_str().unwrap(),
            "--size",
            "4M",
            "--runtime",
            "60s",
            "--json",
        ],
        libc::SIGINT,
        // Laid out only after the handler is in place.
        || std::fs::metadata(&f).is_ok_and(|m| m.len() >= 4 << 20),
    );
    assert_eq!(r.code, Some(2), "{r}");
    let v = r.json();
    assert_eq!(v["result"], "interrupted", "{v}");
    assert!(v["requests"].is_u64(), "{v}");
}
