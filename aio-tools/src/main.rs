//! `aio-tools`: vectored AIO test, diagnostics and benchmark programs.
//!
//! Exit codes: 0 the check passed, 1 the check failed, 2 a usage or
//! environment error (the message says what to do).

mod bench;
mod issuer;
mod probe;
mod report;
mod stats;
mod stress;
mod vectest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
pub use issuer::{Api, DriverArg, Issuer};

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything checked out.
    Pass = 0,
    /// The check ran and found a problem.
    CheckFailed = 1,
    /// Bad arguments or an environment that cannot run the check.
    Usage = 2,
}

/// Human-readable text or JSON for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Text for people.
    Human,
    /// One JSON document on stdout.
    Json,
}

#[derive(Parser)]
#[command(
    name = "aio-tools",
    version,
    about = "Vectored Linux AIO: test, probe, stress and benchmark"
)]
struct Cli {
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write, read back and verify a file or block device with vectored AIO.
    Vectest(vectest::VectestArgs),
    /// Report what native AIO can do on this kernel (and at PATH).
    Probe(probe::ProbeArgs),
    /// Measure IOPS, bandwidth, latency and CPU per request (fio-like).
    Bench(bench::BenchArgs),
    /// Long-running verified checks: mixed vectored I/O, O_APPEND writers,
    /// sparse files with concurrent readers, contexts created under load.
    Stress(stress::StressArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            // Help and the version are answers, not errors.
            let answer = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if !answer && std::env::args_os().any(|a| a == "--json") {
                report::print_json(&serde_json::json!({
                    "result": "error",
                    "error": e.render().to_string().trim(),
                    "exit_code": Exit::Usage as u8,
                }));
            }
            e.exit()
        }
    };
    let out = if cli.json {
        Output::Json
    } else {
        Output::Human
    };
    let exit = match &cli.cmd {
        Cmd::Vectest(a) => vectest::run(a, out),
        Cmd::Probe(a) => probe::run(a, out),
        Cmd::Bench(a) => bench::run(a, out),
        Cmd::Stress(a) => stress::run(a, out),
    };
    ExitCode::from(exit as u8)
}
