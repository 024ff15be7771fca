//! vectest's care for what it writes on: files it did not make, images
//! behind loop devices, a second run on the same target, writes that fail,
//! requests larger than Linux transfers, and its own scratch files.

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

fn tool() -> Command {
    Command::cargo_bin("aio-tools").expect("aio-tools binary")
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
