//! Helpers shared by the `aio-tools` command-line tests: the binary, root
//! and CI checks, shell commands, and loop devices that are detached even
//! when a test panics.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

/// The `aio-tools` binary of this build.
pub fn tool() -> Command {
    Command::cargo_bin("aio-tools").expect("aio-tools binary")
}

/// Where scratch files go: `$AIO_TEST_DIR` under the fs matrix, else the
/// temporary directory.
pub fn scratch_dir() -> PathBuf {
    std::env::var_os("AIO_TEST_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the test can go on as root; skips it with a message otherwise,
/// and fails it under CI (which runs as root).
pub fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(!in_ci(), "{what} needs root, and CI runs as root");
    eprintln!("skipping {what}: needs root");
    false
}

/// Runs `cmd args` and returns its trimmed stdout; fails the test if it
/// fails.
pub fn sh(cmd: &str, args: &[&str]) -> String {
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

/// A loop device over a sparse image, detached on drop (also on panic).
pub struct LoopDev {
    pub dev: String,
    _dir: tempfile::TempDir,
}

impl LoopDev {
    pub fn new(size_mib: u64) -> LoopDev {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let dev = sh("losetup", &["--find", "--show", image.to_str().unwrap()]);
        LoopDev { dev, _dir: dir }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
