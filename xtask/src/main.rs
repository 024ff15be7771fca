//! `cargo xtask`: the developer's workbench of the `aio` workspace.
//!
//! `cargo xtask test` is what CI runs: it installs the system tools it needs
//! (as root, with apt-get), then runs fmt, clippy, the workspace tests and
//! the filesystem matrix, stopping at the first failure. xtask never does AIO
//! itself; it only builds, runs and prepares storage for the crates that do.

/// `println!` that ignores a closed stdout (`cargo xtask test | tee log`
/// interrupted by Ctrl-C kills tee too): a panic there must not stop the
/// cleanup.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that ignores a closed stderr, for the same reason.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod apt;
mod bench;
mod fsmatrix;
mod kernel;
mod libaio;
mod load;
mod proc;
mod sys;
mod tools;

use clap::{Args, Parser, Subcommand};
use proc::Wait;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks of the aio workspace")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything CI runs: tools, fmt, clippy, workspace tests, fs matrix.
    Test {
        /// Run the workspace tests with cargo-nextest (plus doctests) when it
        /// is installed.
        #[arg(long)]
        nextest: bool,
        /// Leave out these steps (comma-separated: tools, fmt, clippy, test,
        /// loom, valgrind, vectest, fs-matrix); for local use while a crate is
        /// being written.
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
        /// Run beside as many CPU-bound busy threads (normal priority) as
        /// the machine has CPUs: the suite must pass on a busy machine.
        #[arg(long)]
        under_load: bool,
        /// Run the whole suite this many times in a row, stopping at the
        /// first failing run.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        #[command(flatten)]
        matrix: MatrixArgs,
    },
    /// Run the aio-sys and aio test binaries on ext2/3/4, xfs, btrfs, tmpfs,
    /// a raw loop device and /dev/zram0 (needs root).
    FsMatrix(MatrixArgs),
    /// Build a VM kernel from Debian's linux-source and run the suite in it
    /// under qemu (long: not part of `test`).
    #[command(subcommand)]
    Kernel(kernel::Cmd),
    /// Build the drop-in libaio.so.1 (aio-sys/libaio) and stage it with its
    /// header for LD_LIBRARY_PATH / LD_PRELOAD use.
    Libaio {
        /// Where to put libaio.so.1, libaio.so and libaio.h.
        #[arg(default_value = "target/libaio")]
        dir: std::path::PathBuf,
    },
    /// The long differential run: property-generated batches on the running
    /// kernel and on aio-kernel's engine, compared request by request.
    Conformance {
        /// Batches to generate (CI's test step runs 150).
        #[arg(long, default_value_t = 3000)]
        cases: u32,
    },
    /// This project against fio on zram0, an O_DIRECT file and a page-cached
    /// file, interleaved, medians of repeats (needs root; long).
    Bench {
        /// Seconds per run.
        #[arg(long, default_value_t = 5)]
        runtime: u64,
        /// Runs per cell; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Only these targets (comma-separated): zram0, direct, cached, and
        /// cold (the cold-page-cache submission check).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
}

#[derive(Args)]
struct MatrixArgs {
    /// Only these fs-matrix targets (comma-separated): ext2, ext3, ext4, xfs,
    /// btrfs, tmpfs, loop, zram0 (the default set); also jfs, reiserfs, nfs,
    /// plain (no contract variable), which `kernel test` runs in its VM.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Kill an fs-matrix test binary that runs longer than this.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

impl MatrixArgs {
    fn options(&self) -> fsmatrix::Options {
        fsmatrix::Options {
            only: self.only.clone(),
            timeout: Duration::from_secs(self.timeout_secs),
            vectest: None,
        }
    }
}

/// How a step ended, with a one-line explanation.
pub enum Outcome {
    /// It did its job.
    Passed(String),
    /// It found a problem; later steps do not run.
    Failed(String),
    /// It could not run here (outside CI only: CI turns skips into failures).
    Skipped(String),
}

struct Step {
    name: &'static str,
    what: String,
    run: Box<dyn Fn() -> Outcome>,
}

impl Step {
    fn new(
        name: &'static str,
        what: impl Into<String>,
        run: impl Fn() -> Outcome + 'static,
    ) -> Step {
        Step {
            name,
            what: what.into(),
            run: Box::new(run),
        }
    }

    /// A step that is one cargo command.
    fn cargo(name: &'static str, args: &'static [&'static str]) -> Step {
        Step::new(name, format!("cargo {}", args.join(" ")), move || {
            cargo(args)
        })
    }
}

fn cargo(args: &[&str]) -> Outcome {
    cargo_with_env(args, &[], Some(CARGO_STEP_LIMIT))
}

/// How long one cargo step of `cargo xtask test` may run (a fresh build and
/// the whole test suite take about 3 minutes): a hung test fails the step
/// with a message instead of eating CI's 90 minutes.
const CARGO_STEP_LIMIT: Duration = Duration::from_secs(20 * 60);

fn cargo_with_env(args: &[&str], env: &[(&str, &str)], limit: Option<Duration>) -> Outcome {
    let mut cmd = Command::new(proc::cargo());
    cmd.current_dir(proc::workspace_root()).args(args);
    cmd.envs(env.iter().copied());
    let shown = format!("cargo {}", args.join(" "));
    match proc::run(&mut cmd, limit) {
        Ok(Wait::Exited(s)) if s.success() => Outcome::Passed(String::new()),
        Ok(Wait::Exited(s)) => {
            Outcome::Failed(format!("`{shown}` failed ({})", proc::describe(&s)))
        }
        Ok(Wait::TimedOut) => Outcome::Failed(format!(
            "`{shown}` ran for {} minutes and was killed: a test hangs \
             (the one reported \"running for over 60 seconds\" above)",
            limit.unwrap_or_default().as_secs() / 60
        )),
        Ok(Wait::Interrupted) => Outcome::Failed("interrupted".into()),
        Err(e) => Outcome::Failed(format!("cannot run `{shown}`: {e}")),
    }
}

fn nextest_available() -> bool {
    Command::new(proc::cargo())
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn test_step(nextest: bool) -> Step {
    const PLAIN: &[&str] = &["test", "--workspace", "--all-features"];
    if !nextest {
        return Step::cargo("test", PLAIN);
    }
    if !nextest_available() {
        out!("cargo-nextest is not installed; using cargo test");
        return Step::cargo("test", PLAIN);
    }
    Step::new(
        "test",
        "cargo nextest run --workspace --all-features, then doctests",
        || match cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-tests=warn",
        ]) {
            Outcome::Passed(_) => cargo(&["test", "--doc", "--workspace", "--all-features"]),
            other => other,
        },
    )
}

fn tools_step() -> Step {
    Step::new(
        "tools",
        "check (and as root apt-get install) gcc, C headers, valgrind, mkfs.*, losetup, fio",
        tools::ensure,
    )
}

fn matrix_step(args: &MatrixArgs) -> Step {
    let opts = args.options();
    Step::new(
        "fs-matrix",
        format!(
            "aio-sys and aio tests on {}",
            if opts.only.is_empty() {
                fsmatrix::default_target_names().join(", ")
            } else {
                opts.only.join(", ")
            }
        ),
        move || fsmatrix::run(&opts),
    )
}

/// The test binaries that run under valgrind's memcheck, with syscall
/// reaping (valgrind does not see the kernel write the ring): the scope
/// that panics with reads in flight into stack buffers, dropped contexts
/// and tickets, the tokio futures dropped at random points, and the
/// hostile-caller tests (files closed and reopened, futures forgotten,
/// fork, shutdown with stream reads pending).
fn valgrind_step() -> Step {
    Step::new(
        "valgrind",
        "memcheck of aio's scope, drop, tokio-cancel and soundness tests",
        || {
            let runner_var = format!(
                "CARGO_TARGET_{}_UNKNOWN_LINUX_GNU_RUNNER",
                std::env::consts::ARCH.to_uppercase()
            );
            // --fair-sched=yes: valgrind runs one thread at a time, and its
            // default lock let the 10 000-task test starve another test's
            // driver thread for 10 s (a_driver_whose_users_are_gone... timed
            // out once in CI).
            // The suppressions name the engine's deliberate probe of a
            // guard page, which the kernel never touches.
            let supp = proc::workspace_root().join("xtask/valgrind/engine.supp");
            let runner = format!(
                "valgrind --error-exitcode=1 --trace-children=no --quiet --fair-sched=yes \
                 --suppressions={}",
                supp.display()
            );
            let env = [
                (runner_var.as_str(), runner.as_str()),
                ("AIO_TEST_VALGRIND", "1"),
                // 100 random programs per driver.
                ("AIO_HOSTILE_CASES", "100"),
            ];
            let args = [
                "test",
                "-p",
                "aio",
                "--all-features",
                "--test",
                "scope_panic",
                "--test",
                "scope",
                "--test",
                "drop_inflight",
                "--test",
                "pipe_poll",
                "--test",
                "tokio_cancel",
                "--test",
                "soundness",
                "--test",
                "hostile",
            ];
            cargo_with_env(&args, &env, Some(CARGO_STEP_LIMIT))
        },
    )
}

/// The loom model checks of the engine's ring publishing, wake-ups against
/// `io_destroy`, the parking of stream transfers, and the libaio drop-in's
/// reaping rule: the real code, built with `--cfg loom` into a target
/// directory of its own (the flag would otherwise rebuild the workspace's
/// usual build).
fn loom_step() -> Step {
    Step::new(
        "loom",
        "RUSTFLAGS=\"--cfg loom\" cargo test -p aio-kernel -p aio-libaio --release --lib loom",
        || {
            let target = match fsmatrix::target_dir() {
                Ok(dir) => dir.join("loom"),
                Err(e) => return Outcome::Failed(e),
            };
            let target = target.to_string_lossy().into_owned();
            let env = [
                ("RUSTFLAGS", "--cfg loom"),
                ("CARGO_TARGET_DIR", target.as_str()),
                ("LOOM_MAX_PREEMPTIONS", "3"),
            ];
            let args = [
                "test",
                "-p",
                "aio-kernel",
                "-p",
                "aio-libaio",
                "--release",
                "--lib",
                "loom",
            ];
            cargo_with_env(&args, &env, Some(CARGO_STEP_LIMIT))
        },
    )
}

/// The steps of `cargo xtask test`, in order. New steps go in this list.
fn test_steps(nextest: bool, matrix: &MatrixArgs) -> Vec<Step> {
    vec![
        tools_step(),
        Step::cargo("fmt", &["fmt", "--all", "--check"]),
        Step::cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        ),
        test_step(nextest),
        loom_step(),
        valgrind_step(),
        // The README's main command, as a newcomer runs it.
        Step::cargo(
            "vectest",
            &["run", "--release", "-p", "aio-tools", "--", "vectest"],
        ),
        matrix_step(matrix),
    ]
}

enum Result_ {
    Ran(Outcome, Duration),
    NotRun,
}

fn run_steps(title: &str, steps: Vec<Step>, skip: &[String]) -> ExitCode {
    let total = steps.len();
    let mut results: Vec<(&'static str, Result_)> = Vec::new();
    let mut stop = false;
    for (i, step) in steps.iter().enumerate() {
        if stop {
            results.push((step.name, Result_::NotRun));
            continue;
        }
        out!("\n==> [{}/{total}] {}: {}", i + 1, step.name, step.what);
        let started = Instant::now();
        let outcome = if skip.iter().any(|s| s == step.name) {
            Outcome::Skipped("left out with --skip".into())
        } else {
            (step.run)()
        };
        let took = started.elapsed();
        let (word, msg) = match &outcome {
            Outcome::Passed(m) => ("passed", m),
            Outcome::Failed(m) => ("FAILED", m),
            Outcome::Skipped(m) => ("skipped", m),
        };
        let sep = if msg.is_empty() { "" } else { ": " };
        out!(
            "<== {}: {word} in {:.1}s{sep}{msg}",
            step.name,
            took.as_secs_f64()
        );
        stop = matches!(outcome, Outcome::Failed(_)) || proc::interrupted();
        results.push((step.name, Result_::Ran(outcome, took)));
    }

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    out!("\n{title}:");
    for (name, r) in &results {
        let (word, time, msg) = match r {
            Result_::Ran(Outcome::Passed(m), t) => {
                passed += 1;
                ("passed", *t, m.as_str())
            }
            Result_::Ran(Outcome::Failed(m), t) => {
                failed += 1;
                ("FAILED", *t, m.as_str())
            }
            Result_::Ran(Outcome::Skipped(m), t) => {
                skipped += 1;
                ("skipped", *t, m.as_str())
            }
            Result_::NotRun => {
                skipped += 1;
                ("not run", Duration::ZERO, "an earlier step failed")
            }
        };
        let line = format!("  {name:<10} {word:<8} {:>7.1}s  {msg}", time.as_secs_f64());
        out!("{}", line.trim_end());
    }
    if skipped > 0 {
        out!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        out!("{passed} passed, {failed} failed");
    }
    if proc::interrupted() {
        ExitCode::from(130)
    } else if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Kernel(kernel::Cmd::Guest) = cli.cmd {
        // PID 1 of the VM: no signal handler, no sysctl to restore.
        return kernel::run(kernel::Cmd::Guest);
    }
    proc::install_signal_handler();
    if proc::is_ci() {
        out!("CI is set: a missing tool or privilege fails instead of skipping");
    }
    // Tests that lower fs.aio-max-nr restore it themselves, but not when a
    // timeout kills them: put it back whatever happened.
    let _aio_max_nr = sys::SysctlGuard::save("/proc/sys/fs/aio-max-nr");
    match cli.cmd {
        Cmd::Test {
            nextest,
            skip,
            under_load,
            repeat,
            matrix,
        } => {
            let steps = test_steps(nextest, &matrix);
            if let Some(bad) = skip
                .iter()
                .find(|s| !steps.iter().any(|st| st.name == s.as_str()))
            {
                err!("unknown step {bad:?} in --skip");
                return ExitCode::from(2);
            }
            let _load = under_load.then(load::Load::start);
            for run in 1..=repeat.max(1) {
                let title = if repeat > 1 {
                    format!("cargo xtask test (run {run} of {repeat})")
                } else {
                    "cargo xtask test".to_owned()
                };
                let code = run_steps(&title, test_steps(nextest, &matrix), &skip);
                if code != ExitCode::SUCCESS {
                    return code;
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Kernel(cmd) => kernel::run(cmd),
        Cmd::Conformance { cases } => {
            let cases = cases.to_string();
            run_steps(
                "cargo xtask conformance",
                vec![Step::new(
                    "conformance",
                    format!("{cases} differential batches"),
                    move || {
                        cargo_with_env(
                            &[
                                "test",
                                "--release",
                                "-p",
                                "aio-kernel",
                                "--test",
                                "differential",
                                "--",
                                "--exact",
                                "property_batches_agree",
                            ],
                            &[("AIO_DIFF_CASES", cases.as_str())],
                            // Long runs are what this command is for.
                            None,
                        )
                    },
                )],
                &[],
            )
        }
        Cmd::Libaio { dir } => run_steps(
            "cargo xtask libaio",
            vec![Step::new(
                "libaio",
                "build and stage libaio.so.1",
                move || libaio::stage(&dir),
            )],
            &[],
        ),
        Cmd::Bench {
            runtime,
            repeats,
            only,
        } => {
            let opts = bench::Options {
                runtime,
                repeats,
                only,
            };
            run_steps(
                "cargo xtask bench",
                vec![Step::new("bench", "aio against fio", move || {
                    bench::run(&opts)
                })],
                &[],
            )
        }
        Cmd::FsMatrix(matrix) => run_steps(
            "cargo xtask fs-matrix",
            vec![tools_step(), matrix_step(&matrix)],
            &[],
        ),
    }
}
