//! Child processes that an interrupt or a timeout can stop, and facts about
//! the environment (root, CI).

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Process group of the child being waited for, 0 when none.
static CHILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// Installs the SIGINT/SIGTERM/SIGHUP handler: it records the interrupt and
/// kills the running child's process group, so the waiting code returns and
/// the Drop guards up the stack unmount and detach what they own.
pub fn install_signal_handler() {
    let result = ctrlc::set_handler(|| {
        if !INTERRUPTED.swap(true, Ordering::SeqCst) {
            err!("\nxtask: interrupted, stopping the running command and cleaning up");
        }
        kill_group(CHILD_GROUP.load(Ordering::SeqCst));
    });
    if let Err(e) = result {
        err!("xtask: could not install the signal handler ({e}); Ctrl-C will not clean up");
    }
}

/// Whether SIGINT, SIGTERM or SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn kill_group(group: i32) {
    if group > 0 {
        // SAFETY: kill(2) takes plain integers; a negative pid addresses the
        // process group, which is a child's own group (see `run`).
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// How a child ended.
pub enum Wait {
    /// It exited (or was killed by someone else) with this status.
    Exited(ExitStatus),
    /// It ran longer than the timeout and was killed.
    TimedOut,
    /// The user interrupted xtask; the child was killed.
    Interrupted,
}

/// Runs `cmd` in its own process group (so an interrupt or a timeout can kill
/// it together with whatever it started) with stdin closed, and waits.
pub fn run(cmd: &mut Command, timeout: Option<Duration>) -> io::Result<Wait> {
    if interrupted() {
        return Ok(Wait::Interrupted);
    }
    cmd.process_group(0).stdin(Stdio::null());
    let mut child = cmd.spawn()?;
    let group = child.id() as i32;
    CHILD_GROUP.store(group, Ordering::SeqCst);
    // The signal may have come between spawn and store.
    if interrupted() {
        kill_group(group);
    }
    let waited = wait_for(&mut child, group, timeout);
    CHILD_GROUP.store(0, Ordering::SeqCst);
    // Leftover grandchildren could keep a mount busy.
    kill_group(group);
    match waited {
        Err(e) => Err(e),
        Ok(_) if interrupted() => Ok(Wait::Interrupted),
        Ok(None) => Ok(Wait::TimedOut),
        Ok(Some(status)) => Ok(Wait::Exited(status)),
    }
}

/// Waits for `child`; `None` when it had to be killed for running too long.
fn wait_for(
    child: &mut std::process::Child,
    group: i32,
    timeout: Option<Duration>,
) -> io::Result<Option<ExitStatus>> {
    let Some(limit) = timeout else {
        return child.wait().map(Some);
    };
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if started.elapsed() > limit {
            kill_group(group);
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether we run as root (needed for apt-get, loop devices, mount).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether CI=true (or any value other than empty, 0 or false): then a
/// missing tool or privilege is a failure rather than a skip.
pub fn is_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"),
        Err(_) => false,
    }
}

/// The cargo that runs us (`$CARGO`), or `cargo` from PATH.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Finds an executable in PATH, and in the sbin directories that a non-root
/// PATH often lacks (mkfs.* live there).
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A short text for a status: "exit status 1", "killed by signal 9".
pub fn describe(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Like [`run`], but with the child's stdout and stderr piped: every line is
/// handed to `on_line` as it arrives (stdout and stderr interleaved by
/// arrival), so long commands (a kernel build, a VM's console) show progress.
pub fn run_streaming(
    cmd: &mut Command,
    timeout: Option<Duration>,
    on_line: &mut dyn FnMut(&str),
) -> io::Result<Wait> {
    match run_watched(cmd, timeout, None, on_line)? {
        Watched::Ended(w) => Ok(w),
        // Without a first-line limit nothing is killed for silence.
        Watched::Silent => Ok(Wait::TimedOut),
    }
}

/// How a child run by [`run_watched`] ended.
pub enum Watched {
    /// As [`run_streaming`] says.
    Ended(Wait),
    /// It wrote no line to stdout within the first-line limit and was killed.
    Silent,
}

/// [`run_streaming`] that also kills the child when its stdout stays
/// silent for `first_line` from the start (stderr lines do not count: a
/// VM's console is its stdout, the emulator's warnings its stderr).
pub fn run_watched(
    cmd: &mut Command,
    timeout: Option<Duration>,
    first_line: Option<Duration>,
    on_line: &mut dyn FnMut(&str),
) -> io::Result<Watched> {
    use std::io::{BufRead, BufReader, Read};
    use std::sync::mpsc;

    fn pump(from: impl Read + Send + 'static, to: mpsc::Sender<(bool, String)>, stdout: bool) {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']);
                        if to.send((stdout, line.to_string())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }

    if interrupted() {
        return Ok(Watched::Ended(Wait::Interrupted));
    }
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let group = child.id() as i32;
    CHILD_GROUP.store(group, Ordering::SeqCst);
    if interrupted() {
        kill_group(group);
    }
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone(), true);
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx, false);
    } else {
        drop(tx);
    }
    let started = Instant::now();
    let mut status = None;
    let mut timed_out = false;
    let mut silent = false;
    let mut spoke = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((stdout, line)) => {
                spoke |= stdout;
                on_line(&line);
            }
            // Both pipes closed: only the exit status is left.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if status.is_none() {
                    status = Some(child.wait());
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if status.is_none() {
            match child.try_wait() {
                Ok(Some(s)) => status = Some(Ok(s)),
                Ok(None) => {}
                Err(e) => status = Some(Err(e)),
            }
        }
        if status.is_none() && timeout.is_some_and(|t| started.elapsed() > t) {
            timed_out = true;
            kill_group(group);
            status = Some(child.wait());
        }
        if status.is_none() && !spoke && first_line.is_some_and(|t| started.elapsed() > t) {
            silent = true;
            kill_group(group);
            status = Some(child.wait());
        }
        // A grandchild holding the pipes must not keep us here once the
        // child is gone: drain what is buffered, then stop.
        if status.is_some() {
            kill_group(group);
            while let Ok((_, line)) = rx.recv_timeout(Duration::from_millis(200)) {
                on_line(&line);
            }
            break;
        }
    }
    CHILD_GROUP.store(0, Ordering::SeqCst);
    kill_group(group);
    let status = status.unwrap_or_else(|| child.wait())?;
    Ok(if interrupted() {
        Watched::Ended(Wait::Interrupted)
    } else if silent {
        Watched::Silent
    } else if timed_out {
        Watched::Ended(Wait::TimedOut)
    } else {
        Watched::Ended(Wait::Exited(status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn a_silent_child_is_killed_at_the_first_line_limit() {
        let mut lines = Vec::new();
        let started = Instant::now();
        let w = run_watched(
            &mut sh("echo warning >&2; sleep 30"),
            Some(Duration::from_secs(60)),
            Some(Duration::from_millis(500)),
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap();
        assert!(matches!(w, Watched::Silent));
        assert!(started.elapsed() < Duration::from_secs(20));
        // stderr is passed on but does not count as the first line.
        assert_eq!(lines, ["warning"]);
    }

    #[test]
    fn a_child_that_speaks_runs_on() {
        let w = run_watched(
            &mut sh("echo up; sleep 1; echo done"),
            Some(Duration::from_secs(60)),
            Some(Duration::from_millis(500)),
            &mut |_| {},
        )
        .unwrap();
        assert!(matches!(w, Watched::Ended(Wait::Exited(s)) if s.success()));
    }
}
