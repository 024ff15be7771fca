//! C programs compiled with the system C compiler against our `libaio.h`
//! and `libaio.so.1`: the classic suites' bad-input rows, vectored round trips, eventfd
//! notification, poll with `io_pgetevents` and a signal mask, callbacks,
//! several reaping threads, the LIBAIO_0.1 symbols, and ring reaping.
//!
//! Each program runs with `AIO_LIBAIO_LOG` pointing at a file, and the test
//! checks that our library wrote it: a pass on the system's libaio would
//! prove nothing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{Against, assert_success, compile, have_tool, run_with_ours, scratch};

/// The C test program built against our header and library (once per run),
/// in cargo's directory for test files (a temporary directory held by a
/// static would never be removed).
fn c_api(against: Against) -> Option<PathBuf> {
    static OURS: OnceLock<Option<PathBuf>> = OnceLock::new();
    static SYSTEM: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = match against {
        Against::Ours => &OURS,
        Against::System => &SYSTEM,
    };
    cell.get_or_init(|| {
        if !have_tool("cc", "compiles the C test programs") {
            return None;
        }
        if against == Against::System && !common::have_system_libaio() {
            assert!(
                !common::in_ci(),
                "libaio-dev is required in CI: apt-get install -y libaio-dev"
            );
            eprintln!("SKIP: libaio-dev not installed (no /usr/include/libaio.h)");
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("c_api-{against:?}"));
        std::fs::create_dir_all(&dir).expect("a directory for the C test program");
        Some(compile(&["c_api.c"], "c_api", &dir, against))
    })
    .clone()
}

/// Runs one subtest of `c_api.c` (with `env` added) and returns our log.
fn run_subtest(against: Against, name: &str, env: &[(&str, &str)]) -> Option<String> {
    let exe = c_api(against)?;
    let work = scratch();
    let log = work.path().join("aio-libaio.log");
    let log_s = log.to_str().expect("utf-8 path").to_owned();
    let mut all_env = vec![("AIO_LIBAIO_LOG", log_s.as_str())];
    all_env.extend_from_slice(env);
    let dir = work.path().to_str().expect("utf-8 path");
    let out = run_with_ours(&exe, &[name, dir], &all_env);
    assert_success(&format!("c_api {name}"), &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("done {name}")),
        "c_api {name} did not finish"
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("loaded aio-libaio"),
        "our libaio.so.1 was not the one loaded; log:\n{log}"
    );
    Some(log)
}

#[test]
fn spec_section_10_rows_with_the_libaio_convention() {
    let Some(log) = run_subtest(Against::Ours, "errors", &[]) else {
        return;
    };
    assert!(log.contains("served by the kernel"), "{log}");
}

#[test]
fn vectored_round_trips() {
    run_subtest(Against::Ours, "vectored", &[]);
}

#[test]
fn eventfd_notification() {
    run_subtest(Against::Ours, "eventfd", &[]);
}

#[test]
fn poll_with_io_pgetevents_and_a_signal_mask() {
    run_subtest(Against::Ours, "poll", &[]);
}

/// `(events from the ring, calls answered from the ring, calls that
/// waited)` from the `io_destroy` line of a log.
fn destroy_stats(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("io_destroy(") && l.contains("events reaped from the ring"))
        .unwrap_or_else(|| panic!("no io_destroy report in:\n{log}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().expect("number"))
        .collect();
    // ... = 0: E events reaped from the ring in C calls, W calls waited ...
    let n = nums.len();
    (nums[n - 3], nums[n - 2], nums[n - 1])
}

/// Four threads reap one context, all in user space (min_nr 0) for the
/// first half of the events, two of them waiting in the kernel for the
/// second: every event exactly once (checked by the C side), and both paths
/// were taken.
#[test]
fn several_threads_reap_one_context() {
    let Some(log) = run_subtest(Against::Ours, "threads", &[]) else {
        return;
    };
    let (ring_events, _, waits) = destroy_stats(&log);
    println!("{ring_events} events from the ring, {waits} calls waited in the kernel");
    assert!(ring_events > 0 && waits > 0, "{log}");
}

/// io_destroy while another thread waits in io_getevents on the same
/// context: the destroy returns 0, the waiter returns, nobody hangs.
#[test]
fn io_destroy_while_another_thread_waits() {
    run_subtest(Against::Ours, "destroy", &[]);
}

#[test]
fn libaio_0_1_symbols() {
    run_subtest(Against::Ours, "compat", &[]);
}

/// Buffered writes are posted before `io_submit` returns, so every one of
/// the 3200 completions must come out of the ring, none from a system call.
#[test]
fn completions_are_reaped_from_the_ring_without_a_syscall() {
    let Some(log) = run_subtest(Against::Ours, "ring", &[]) else {
        return;
    };
    assert!(
        log.contains("3200 events reaped from the ring in 200 calls, 0 calls waited in the kernel"),
        "{log}"
    );
}

/// A program built against the system's libaio.h and libaio.so (as fio is)
/// runs on ours through LD_LIBRARY_PATH: the symbol versions match.
#[test]
fn programs_built_against_the_system_libaio_run_on_ours() {
    for t in ["vectored", "poll", "compat", "ring"] {
        let Some(log) = run_subtest(Against::System, t, &[]) else {
            return;
        };
        assert!(log.contains("served by the kernel"), "{log}");
    }
}

/// The same programs with every context served by the aio-kernel engine
/// (`AIO_LIBAIO_DRIVER=engine`). The engine's waits are not interrupted by
/// signals, so the poll test skips its signal rows (C_API_NO_SIGNALS).
#[test]
fn engine_driver_serves_the_same_programs() {
    for t in [
        "errors", "vectored", "eventfd", "poll", "threads", "compat", "ring",
    ] {
        let Some(log) = run_subtest(
            Against::Ours,
            t,
            &[("AIO_LIBAIO_DRIVER", "engine"), ("C_API_NO_SIGNALS", "1")],
        ) else {
            return;
        };
        assert!(log.contains("served by the engine"), "{t}: {log}");
        assert!(!log.contains("served by the kernel"), "{t}: {log}");
    }
}

/// With the engine, `io_cancel` cancels a read of an empty pipe and
/// `io_destroy` ends one (the kernel would block in `io_submit` on it).
#[test]
fn engine_cancels_pipe_reads() {
    let Some(log) = run_subtest(
        Against::Ours,
        "stream_cancel",
        &[("AIO_LIBAIO_DRIVER", "engine")],
    ) else {
        return;
    };
    assert!(log.contains("served by the engine"), "{log}");
}

/// Runs a c_api subtest under aio-seccomp-exec with `filter_args`, in the
/// default (auto) driver mode, and returns our log.
fn run_under_seccomp(t: &str, filter_args: &[&str]) -> Option<String> {
    let exe = c_api(Against::Ours)?;
    let work = scratch();
    let log = work.path().join("aio-libaio.log");
    let dir = work.path().to_str().expect("utf-8 path");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aio-seccomp-exec"))
        .args(filter_args)
        .arg(&exe)
        .args([t, dir])
        .env("LD_LIBRARY_PATH", common::lib_dir())
        .env("AIO_LIBAIO_LOG", &log)
        .env("C_API_NO_SIGNALS", "1")
        .env_remove("AIO_LIBAIO_DRIVER")
        .output()
        .expect("run aio-seccomp-exec");
    assert_success(&format!("c_api {t} under seccomp {filter_args:?}"), &out);
    Some(std::fs::read_to_string(&log).unwrap_or_default())
}

/// A seccomp filter makes the AIO system calls fail with EPERM (or ENOSYS,
/// as without CONFIG_AIO): in auto mode the library notices at io_setup and
/// serves every context from the engine; the programs pass unchanged.
#[test]
fn auto_driver_falls_back_to_the_engine_when_the_kernel_refuses() {
    let filters: [(&[&str], &str); 3] = [
        (&["--errno", "EPERM"], "EPERM"),
        (&["--errno", "ENOSYS"], "ENOSYS"),
        (&["--only-setup"], "EPERM"),
    ];
    for (filter, errno) in filters {
        for t in ["vectored", "eventfd", "poll", "threads", "errors"] {
            let Some(log) = run_under_seccomp(t, filter) else {
                return;
            };
            assert!(
                log.contains(&format!("the kernel refused io_setup ({errno})")),
                "{t}: {log}"
            );
            assert!(log.contains("served by the engine"), "{t}: {log}");
            assert!(!log.contains("served by the kernel"), "{t}: {log}");
        }
    }
}

/// `LD_PRELOAD` works as well as `LD_LIBRARY_PATH`: a program built
/// against the system's libaio gets our functions.
#[test]
fn ld_preload_interposes_our_library() {
    let Some(exe) = c_api(Against::System) else {
        return;
    };
    let work = scratch();
    let log = work.path().join("aio-libaio.log");
    let dir = work.path().to_str().expect("utf-8 path");
    let out = std::process::Command::new(&exe)
        .args(["ring", dir])
        .env_remove("LD_LIBRARY_PATH")
        .env("LD_PRELOAD", common::lib_dir().join("libaio.so.1"))
        .env("AIO_LIBAIO_LOG", &log)
        .output()
        .expect("run c_api");
    assert_success("c_api ring with LD_PRELOAD", &out);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log.contains("3200 events reaped from the ring in 200 calls, 0 calls waited in the kernel"),
        "{log}"
    );
}

/// With `AIO_LIBAIO_RING_REAP=0` every completion comes through the
/// system call, as with the original libaio.
#[test]
fn ring_reaping_can_be_turned_off() {
    let Some(log) = run_subtest(Against::Ours, "ring", &[("AIO_LIBAIO_RING_REAP", "0")]) else {
        return;
    };
    assert!(
        log.contains("0 events reaped from the ring in 0 calls, 200 calls waited in the kernel"),
        "{log}"
    );
}

/// `AIO_LIBAIO_DRIVER=kernel` under a filter that refuses io_setup: the
/// refusal reaches the program as libaio returns it.
#[test]
fn kernel_driver_returns_the_refusal() {
    let Some(exe) = c_api(Against::Ours) else {
        return;
    };
    let work = scratch();
    let dir = work.path().to_str().expect("utf-8 path");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aio-seccomp-exec"))
        .arg(&exe)
        .args(["vectored", dir])
        .env("LD_LIBRARY_PATH", common::lib_dir())
        .env("AIO_LIBAIO_DRIVER", "kernel")
        .output()
        .expect("run aio-seccomp-exec");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("io_setup(nr, &ctx) = -1 (want 0)"),
        "expected io_setup to return -EPERM:\n{stderr}"
    );
}
