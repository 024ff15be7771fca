//! What every subcommand reports the same way: usage and environment
//! errors (on stderr, and as a JSON object with `--json`), the engine
//! fallback of the auto driver, the system-call summary, errors as
//! people read them, and failure lists capped on screen.

use std::io;

use serde_json::{Value, json};

use crate::{Exit, Output};

/// Failures printed on screen; the rest are counted (and listed in
/// `--json`).
pub const SHOWN_FAILURES: usize = 20;

/// Prints one JSON document on stdout.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON of plain values")
    );
}

/// A usage or environment error of `cmd`: the message on stderr, and with
/// `--json` a JSON object on stdout too; exit code 2.
pub fn usage_error(cmd: &str, out: Output, msg: &str) -> Exit {
    eprintln!("aio-tools {cmd}: {msg}");
    if out == Output::Json {
        print_json(&json!({
            "result": "error",
            "command": cmd,
            "error": msg,
            "exit_code": Exit::Usage as u8,
        }));
    }
    Exit::Usage
}

/// The name of errno `n` (`EROFS`), or `errno N` if it has none.
pub fn errno_name(n: i32) -> String {
    match nix::errno::Errno::from_raw(n) {
        nix::errno::Errno::UnknownErrno => format!("errno {n}"),
        e => format!("{e:?}"),
    }
}

/// An I/O error as people read it: the errno's name and meaning
/// (`ENOSPC: No space left on device`), or the explanation `aio` gave.
pub fn io_error_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!(
            "{}: {}",
            errno_name(n),
            nix::errno::Errno::from_raw(n).desc()
        ),
        None => e.to_string(),
    }
}

/// The header line of a run whose auto driver sends everything to the
/// engine, if it does.
pub fn engine_line(why: Option<&aio::Error>) -> Option<String> {
    why.map(|w| format!("engine: {}", w.message()))
}

/// `kernel_unavailable` in `--json`: the errno and the explanation, or null.
pub fn engine_json(why: Option<&aio::Error>) -> Value {
    why.map_or(
        Value::Null,
        |w| json!({"errno": format!("{:?}", w.errno()), "message": w.message()}),
    )
}

/// The counters of a run split by what served them: system calls to the
/// kernel, function calls to the engine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calls {
    /// `io_submit` system calls.
    pub io_submit: u64,
    /// Requests those calls handed to the kernel.
    pub kernel_requests: u64,
    /// `io_getevents` system calls.
    pub io_getevents: u64,
    /// Requests run by the userspace engine.
    pub engine_requests: u64,
    /// Submissions to the engine (function calls, not system calls).
    pub engine_submits: u64,
}

impl Calls {
    /// The split of `s`.
    pub fn of(s: &aio::Stats) -> Calls {
        Calls {
            io_submit: s.submit_calls - s.engine_submit_calls,
            kernel_requests: s.submitted - s.engine_submitted,
            io_getevents: s.getevents_calls - s.engine_getevents_calls,
            engine_requests: s.engine_submitted,
            engine_submits: s.engine_submit_calls,
        }
    }

    /// Kernel requests per `io_submit` call (0 without calls).
    pub fn per_io_submit(&self) -> f64 {
        if self.io_submit == 0 {
            0.0
        } else {
            self.kernel_requests as f64 / self.io_submit as f64
        }
    }

    /// The summary line: `syscalls: ...; engine: ...`.
    pub fn text(&self, s: &aio::Stats) -> String {
        format!(
            "syscalls: {} io_submit ({:.1} requests each), {} io_getevents, {} ring reaps; \
             engine: {} requests in {} submissions (no system calls), {} page-cache misses retried there",
            self.io_submit,
            self.per_io_submit(),
            self.io_getevents,
            s.ring_reaps,
            self.engine_requests,
            self.engine_submits,
            s.nowait_retries
        )
    }
}

/// Prints up to [`SHOWN_FAILURES`] of `items` as `label: item`, then how
/// many of `total` were not shown.
pub fn print_capped(label: &str, items: &[String], total: u64) {
    for item in items.iter().take(SHOWN_FAILURES) {
        println!("{label}: {item}");
    }
    let shown = items.len().min(SHOWN_FAILURES) as u64;
    if total > shown {
        println!(
            "... and {} more ({} in all; --json lists them)",
            total - shown,
            total
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_reads_as_its_errno_name() {
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(io_error_text(&e), "ENOSPC: No space left on device");
        let e = io::Error::from_raw_os_error(libc::EROFS);
        assert_eq!(io_error_text(&e), "EROFS: Read-only file system");
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
    }

    #[test]
    fn engine_calls_are_not_io_submit_calls() {
        let s = aio::Stats {
            submitted: 10,
            submit_calls: 4,
            engine_submitted: 6,
            engine_submit_calls: 3,
            getevents_calls: 5,
            engine_getevents_calls: 5,
            ..Default::default()
        };
        let c = Calls::of(&s);
        assert_eq!((c.io_submit, c.kernel_requests, c.io_getevents), (1, 4, 0));
        assert!(
            c.text(&s)
                .starts_with("syscalls: 1 io_submit (4.0 requests each), 0 io_getevents")
        );
    }
}
