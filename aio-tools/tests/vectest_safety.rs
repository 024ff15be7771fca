//! vectest's care for what it writes on: files it did not make, images
//! behind loop devices, a second run on the same target, writes that fail,
//! requests larger than Linux transfers, and its own scratch files.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn require_program(program: &str, what: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(!in_ci(), "{what} needs {program}, which CI installs");
        eprintln!("skipping {what}: {program} is not installed");
    }
    found
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `aio-tools ARGS`, with the temporary directory `tmpdir` if given.
fn run_in(tmpdir: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = tool();
    cmd.args(args);
    if let Some(dir) = tmpdir {
        cmd.env("TMPDIR", dir);
    }
    let out = cmd.output().expect("run aio-tools");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Run {
    run_in(None, args)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// A sparse file of `mib` MiB.
fn sparse_image(dir: &Path, mib: u64) -> PathBuf {
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    image
}

/// A loop device over `image`, detached on drop (also on panic).
struct Loop(String);

impl Loop {
    fn over(image: &Path) -> Loop {
        Loop(sh("losetup", &["--find", "--show", path_str(image)]))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount on a directory of its own, unmounted on drop (also on panic).
struct Mount {
    at: PathBuf,
    // Removed after the unmount in Drop.
    _dir: tempfile::TempDir,
}

impl Mount {
    /// `mount ARGS... <new directory>`.
    fn new(args: &[&str]) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().to_path_buf();
        let mut all = args.to_vec();
        all.push(path_str(&at));
        sh("mount", &all);
        Mount { at, _dir: dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// A running `aio-tools vectest`, killed on drop (also on panic).
struct Background(Child);

impl Background {
    /// Starts a long vectest with `args` and returns once it has opened its
    /// target (it prints its summary line then).
    fn vectest(tmpdir: Option<&Path>, args: &[&str]) -> Background {
        let mut cmd = tool();
        cmd.arg("vectest")
            .args(args)
            .args(["--passes", "255", "--iodepth", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = tmpdir {
            cmd.env("TMPDIR", dir);
        }
        let mut bg = Background(cmd.spawn().expect("start aio-tools"));
        let mut seen = String::new();
        let mut lines = BufReader::new(bg.0.stderr.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("vectest: ") => break,
                Some(Ok(line)) => seen.push_str(&line),
                _ => panic!("vectest ended before it started testing: {seen}"),
            }
        }
        // Keep draining its stderr, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        bg
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(mut self) {
        self.0.kill().expect("kill vectest");
        self.0.wait().expect("reap vectest");
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("aio-vectest-"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_file_vectest_did_not_write_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    let text = "the only copy of my notes\n".repeat(200);
    std::fs::write(&notes, &text).unwrap();
    let r = run(&["vectest", path_str(&notes), "--size", "1M"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "refusing to write {}: it holds {} bytes that vectest did not write",
            notes.display(),
            text.len()
        )) && r.stderr.contains("--force"),
        "{r}"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), text);

    // Told to, it writes; then the file is vectest's own and is reused.
    let r = run(&[
        "vectest",
        path_str(&notes),
        "--size",
        "1M",
        "--passes",
        "1",
        "--force",
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stderr.contains("--force: overwriting"), "{r}");
    let r = run(&["vectest", path_str(&notes), "--passes", "1", "--seed", "5"]);
    assert_eq!(r.code, 0, "a file vectest wrote is reused: {r}");

    // A new path is created, and kept.
    let new = dir.path().join("new.dat");
    let r = run(&["vectest", path_str(&new), "--size", "1M", "--passes", "1"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(std::fs::metadata(&new).unwrap().len(), 1 << 20);

    // A read-only file, even for root, who may write it.
    let ro = dir.path().join("read-only.txt");
    std::fs::write(&ro, &text).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = run(&["vectest", path_str(&ro), "--size", "1M"]);
    assert_eq!(r.code, 2, "{r}");
    if is_root() {
        assert!(r.stderr.contains("is read-only (mode 0444)"), "{r}");
    }
    assert_eq!(std::fs::read_to_string(&ro).unwrap(), text);
}

#[test]
fn an_image_with_a_filesystem_is_refused_unless_forced() {
    if !require_program("mkfs.ext4", "vectest on a filesystem image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 32);
    sh("mkfs.ext4", &["-q", "-F", path_str(&image)]);
    let r = run(&["vectest", path_str(&image)]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr
            .contains("holds ext4 filesystem (signature at byte 1080)")
            && r.stderr.contains("--force"),
        "{r}"
    );
    let r = run(&["vectest", path_str(&image), "--passes", "1", "--force"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stderr.contains("--force: overwriting") && r.stderr.contains("ext4 filesystem"),
        "{r}"
    );
}

#[test]
fn the_image_behind_a_loop_device_is_refused() {
    if !require_root("vectest on the image of a loop device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 32);
    let lo = Loop::over(&image);
    // Blank and attached: refused, unless forced.
    let r = run(&["vectest", path_str(&image), "--passes", "1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&format!("backs {}", lo.0))
            && r.stderr.contains(&format!("losetup -d {}", lo.0))
            && r.stderr.contains("--force"),
        "{r}"
    );
    let r = run(&["vectest", path_str(&image), "--passes", "1", "--force"]);
    assert_eq!(r.code, 0, "{r}");
}

#[test]
fn an_image_mounted_through_a_loop_device_is_refused_even_with_force() {
    if !require_root("vectest on the image of a mounted loop device") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 32);
    let lo = Loop::over(&image);
    sh("mkfs.ext4", &["-q", "-F", &lo.0]);
    let m = Mount::new(&[&lo.0]);
    let r = run(&["vectest", path_str(&image), "--force"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "it backs {}, which is mounted at {}",
            lo.0,
            m.at.display()
        )),
        "{r}"
    );
    drop(m);
    // The filesystem is whole.
    sh("fsck.ext4", &["-n", "-f", &lo.0]);
}

#[test]
fn a_second_loop_device_over_a_mounted_image_is_refused_even_with_force() {
    if !require_root("vectest on a second loop device over an image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 32);
    sh("mkfs.ext4", &["-q", "-F", path_str(&image)]);
    let first = Loop::over(&image);
    let m = Mount::new(&[&first.0]);
    let second = Loop::over(&image);
    let r = run(&["vectest", &second.0, "--force", "--passes", "1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "its backing file {} is also attached to {}, which is mounted at {}",
            image.display(),
            first.0,
            m.at.display()
        )),
        "{r}"
    );
    // The filesystem is whole.
    drop(m);
    sh("fsck.ext4", &["-n", "-f", &first.0]);
}

#[test]
fn a_second_vectest_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("shared.dat");
    let path = path_str(&f);

    let bg = Background::vectest(None, &[path, "--size", "64M"]);
    let r = run(&["vectest", path, "--size", "1M", "--passes", "1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "another vectest (pid {}) is using {path}",
            bg.pid()
        )),
        "{r}"
    );
    bg.kill();

    // Any program holding the lock, with its pid.
    let held = std::fs::File::open(&f).unwrap();
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let locked = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0);
    let r = run(&["vectest", path, "--size", "1M", "--passes", "1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "another program (pid {}) is using {path}",
            std::process::id()
        )),
        "{r}"
    );
    drop(held);
    let r = run(&["vectest", path, "--size", "1M", "--passes", "1"]);
    assert_eq!(r.code, 0, "{r}");
}

#[test]
fn failed_writes_are_reported_once_and_left_out_of_the_verification() {
    if !require_root("vectest on a full filesystem") {
        return;
    }
    let m = Mount::new(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"]);
    let f = m.at.join("fills.dat");
    for api in ["sync", "tokio"] {
        let r = run(&[
            "vectest",
            path_str(&f),
            "--size",
            "4M",
            "--passes",
            "2",
            "--seed",
            "9",
            "--api",
            api,
            "--json",
        ]);
        assert_eq!(r.code, 1, "{api}: the failed writes fail the check: {r}");
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON summary");
        assert_eq!(v["mismatched_requests"], 0, "{api}: {v}");
        assert_eq!(v["mismatches"].as_array().map(Vec::len), Some(0), "{api}");
        let errors = v["errors"].as_array().unwrap();
        assert!(!errors.is_empty(), "{api}: {v}");
        // Each failed request once, with its errno (a short write has none)
        // and its byte range.
        for e in errors {
            let e = e.as_str().unwrap();
            assert!(
                e.starts_with("PWRITEV")
                    && e.contains(" at bytes ")
                    && (e.contains("failed: ENOSPC") || e.contains("a short write")),
                "{api}: only the writes fail: {e}"
            );
        }
        assert!(
            errors
                .iter()
                .any(|e| e.as_str().unwrap().contains("ENOSPC")),
            "{api}: {v}"
        );
        assert_eq!(v["failed_writes"].as_u64(), Some(errors.len() as u64));
        assert!(v["unverified_bytes"].as_u64().unwrap() > 0, "{api}: {v}");
        std::fs::remove_file(&f).unwrap();
    }
    drop(m);
}

#[test]
fn a_missing_device_under_dev_is_an_error_not_a_new_file() {
    let path = format!("/dev/aio-vectest-no-such-disk-{}", std::process::id());
    struct Remove<'a>(&'a str);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&path);
    let r = run(&["vectest", &path, "--size", "1M", "--passes", "1"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains(&format!("no such device: {path}")), "{r}");
    assert!(!Path::new(&path).exists(), "nothing is created in /dev");
}

#[test]
fn a_max_request_above_what_linux_transfers_is_refused() {
    let r = run(&["vectest", "--size", "1M", "--max-request", "3G"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains("--max-request") && r.stderr.contains("2147479552"),
        "{r}"
    );
    let r = run(&[
        "vectest",
        "--size",
        "1M",
        "--passes",
        "1",
        "--max-request",
        "2147479552",
    ]);
    assert_eq!(r.code, 0, "{r}");
}

#[test]
fn the_scratch_file_is_removed_when_vectest_fails() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["--size", "0"][..],
        &["--size", "100", "--direct"],
        &["--size", "17T"],
    ] {
        let mut all = vec!["vectest"];
        all.extend_from_slice(args);
        let r = run_in(Some(tmp.path()), &all);
        assert_eq!(r.code, 2, "{args:?}: {r}");
        assert_eq!(scratch_files(tmp.path()), Vec::<String>::new(), "{args:?}");
    }
}

#[test]
fn scratch_files_of_a_killed_run_are_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let bg = Background::vectest(Some(tmp.path()), &["--size", "64M"]);
    let killed = bg.pid();
    bg.kill();
    let left = scratch_files(tmp.path());
    assert!(
        left.len() == 1 && left[0].starts_with(&format!("aio-vectest-{killed}-")),
        "{left:?}"
    );
    // A file of a live process stays.
    let live = format!("aio-vectest-{}-0", std::process::id());
    std::fs::write(tmp.path().join(&live), b"").unwrap();

    let r = run_in(
        Some(tmp.path()),
        &["vectest", "--size", "1M", "--passes", "1"],
    );
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(scratch_files(tmp.path()), vec![live], "{r}");
}
