//! Shared by the integration tests: builds and stages the library, compiles
//! C programs against it, finds tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Whether this is a CI run (`CI=true`): a missing tool is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Debian package that provides `tool` (or a file).
fn package_of(tool: &str) -> &str {
    match tool {
        "cc" => "gcc",
        "libaio.h" => "libaio-dev",
        other => other,
    }
}

/// As root with apt-get available, installs `package` (once per process,
/// one apt-get at a time). Returns whether apt-get succeeded.
pub fn apt_install(package: &str) -> bool {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // SAFETY: plain query.
    if unsafe { libc::geteuid() } != 0 || !on_path("apt-get") {
        return false;
    }
    let _one_at_a_time = APT.lock().unwrap_or_else(|e| e.into_inner());
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if install() {
        return true;
    }
    let _ = Command::new("apt-get").args(["update", "-qq"]).output();
    install()
}

/// Whether `tool` can be run, installing its package with apt-get if it is
/// missing and that is possible. Outside CI a tool that still cannot be had
/// makes the calling test return early with a message; in CI it is a
/// failure.
pub fn have_tool(tool: &str, why: &str) -> bool {
    let found = on_path(tool) || (apt_install(package_of(tool)) && on_path(tool));
    if !found {
        assert!(
            !in_ci(),
            "{tool} is required in CI ({why}): apt-get install -y {tool}"
        );
        eprintln!("SKIP: {tool} not found ({why}); install it to run this test");
    }
    found
}

/// The target directory this test binary was built in (`.../target`), and
/// the profile directory in it (`debug` or `release`).
fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("current_exe");
    // .../target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).expect("deps/..");
    let profile = profile_dir
        .file_name()
        .expect("profile dir")
        .to_string_lossy()
        .into_owned();
    let target = profile_dir.parent().expect("target dir").to_path_buf();
    (target, profile)
}

/// The built `libaio.so.1`, staged in a directory of its own as
/// `libaio.so.1` (for the dynamic linker) and `libaio.so` (for `-laio`).
///
/// Cargo does not build a cdylib for an integration test, so the first
/// call builds it with the same cargo, target directory and profile.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let (target, profile) = target_and_profile();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "aio-libaio", "--lib"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile == "release" {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build -p aio-libaio failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = target.join(&profile).join("libaio_libaio.so");
        assert!(built.exists(), "{} missing", built.display());
        let dir = target.join(&profile).join("libaio-staged");
        std::fs::create_dir_all(&dir).expect("staging dir");
        // Test processes may stage concurrently (nextest runs one process
        // per test): each makes its links under a private name and renames
        // them into place, which replaces atomically.
        for name in ["libaio.so.1", "libaio.so"] {
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&built, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.join(name)).expect("rename symlink");
        }
        dir
    })
}

/// This crate's `include/` (our `libaio.h`).
pub fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// `tests/c/`.
pub fn c_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c")
}

/// A scratch directory: under `AIO_TEST_DIR` if set, else the system's
/// temporary directory.
pub fn scratch() -> tempfile::TempDir {
    match std::env::var_os("AIO_TEST_DIR") {
        Some(d) => tempfile::Builder::new()
            .prefix("aio-libaio-")
            .tempdir_in(d)
            .expect("tempdir in AIO_TEST_DIR"),
        None => tempfile::Builder::new()
            .prefix("aio-libaio-")
            .tempdir()
            .expect("tempdir"),
    }
}

/// Which header and library a C program is built against.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Against {
    /// Our `include/libaio.h`, linked with our `libaio.so`.
    Ours,
    /// The system's `<libaio.h>` and `-laio` (libaio-dev); the program is
    /// then run with our library through `LD_LIBRARY_PATH`, as fio is.
    System,
}

/// Whether the system's libaio development files are installed (installing
/// libaio-dev if possible).
pub fn have_system_libaio() -> bool {
    let present = || Path::new("/usr/include/libaio.h").exists();
    present() || (apt_install(package_of("libaio.h")) && present())
}

/// Compiles `sources` (in `tests/c/`) into `out_dir/name`.
pub fn compile(sources: &[&str], name: &str, out_dir: &Path, against: Against) -> PathBuf {
    let exe = out_dir.join(name);
    let mut cmd = Command::new("cc");
    cmd.args([
        "-std=gnu11",
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pthread",
    ]);
    cmd.arg("-I").arg(c_dir());
    if against == Against::Ours {
        cmd.arg("-I").arg(include_dir());
    }
    for s in sources {
        cmd.arg(c_dir().join(s));
    }
    cmd.arg("-o").arg(&exe);
    if against == Against::Ours {
        cmd.arg("-L").arg(lib_dir());
    }
    cmd.arg("-laio");
    let out = cmd.output().expect("run cc");
    assert!(
        out.status.success(),
        "cc failed for {sources:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs `exe args` with our library first on the search path.
pub fn run_with_ours(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.args(args).env("LD_LIBRARY_PATH", lib_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run test program")
}

/// Asserts that a run succeeded, showing its output otherwise.
pub fn assert_success(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    print!("{stdout}");
}

/// What one fio run gave.
pub struct FioRun {
    /// fio's JSON report.
    pub json: serde_json::Value,
    /// fio's standard error.
    pub stderr: String,
    /// Our library's log (`AIO_LIBAIO_LOG`); empty when the system's
    /// libaio was used.
    pub log: String,
}

/// Which libaio a fio run loads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lib {
    /// Ours, through `LD_LIBRARY_PATH`.
    Ours,
    /// Ours, under `aio-seccomp-exec` (the AIO system calls fail with EPERM).
    OursSeccomp,
    /// The system's `libaio.so.1`.
    System,
}

/// Whether this fio knows `--libaio_vectored` (added after fio 3.33).
pub fn fio_has_libaio_vectored() -> bool {
    Command::new("fio")
        .arg("--enghelp=libaio")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libaio_vectored"))
}

/// Runs fio with `args` (after `--output-format=json`) in `work`, loading
/// `lib`. Panics, with fio's messages, if fio fails.
pub fn fio(work: &Path, lib: Lib, args: &[String], seccomp_exec: &Path) -> FioRun {
    let json_path = work.join("fio.json");
    let log_path = work.join("aio-libaio.log");
    let _ = std::fs::remove_file(&log_path);
    let mut cmd = match lib {
        Lib::OursSeccomp => {
            let mut c = Command::new(seccomp_exec);
            c.arg("fio");
            c
        }
        _ => Command::new("fio"),
    };
    cmd.arg("--output-format=json")
        .arg(format!("--output={}", json_path.display()))
        .args(args)
        .current_dir(work)
        .env_remove("AIO_LIBAIO_DRIVER");
    if lib == Lib::System {
        cmd.env_remove("LD_LIBRARY_PATH").env_remove("LD_PRELOAD");
    } else {
        cmd.env("LD_LIBRARY_PATH", lib_dir())
            .env("AIO_LIBAIO_LOG", &log_path);
    }
    let out = cmd.output().expect("run fio");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = std::fs::read_to_string(&json_path).unwrap_or_default();
    assert!(
        out.status.success(),
        "fio {args:?} ({lib:?}) failed ({}):\n{stderr}\n{report}",
        out.status
    );
    // fio may print notes before the JSON document.
    let start = report.find('{').unwrap_or(0);
    let json: serde_json::Value = serde_json::from_str(&report[start..])
        .unwrap_or_else(|e| panic!("fio JSON: {e}\n{report}"));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    FioRun { json, stderr, log }
}

/// Sum of one direction's IOPS over the jobs of a run.
pub fn fio_iops(run: &FioRun, dir: &str) -> f64 {
    run.json["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j[dir]["iops"].as_f64().unwrap_or(0.0))
        .sum()
}
