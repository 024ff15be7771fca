//! `cargo xtask kernel build|test`: a small VM kernel built from Debian's
//! `linux-source-<version>` with every filesystem the project is tested on,
//! and the test suite run inside it under qemu.
//!
//! - [`build`]: installs the source and build tools, configures
//!   (`make defconfig kvm_guest.config` plus `xtask/kernel/aio-vm.config`,
//!   every requested option checked afterwards), builds `bzImage` under
//!   `nice`, and caches it by version and configuration.
//! - [`qemu`]: finds the emulator, or installs or fetches it without
//!   removing any package.
//! - [`vm`]: boots it under qemu (KVM if it works, TCG otherwise) with the
//!   host's root filesystem read-only over 9p, a results directory over 9p
//!   and two SCSI disks, the second one (`/dev/sdb`) a blank scratch disk.
//! - [`guest`]: what runs inside as PID 1: mounts, loopback, then
//!   `aio-tools vectest /dev/sdb` and the fs matrix (with jfs, reiserfs,
//!   nfs) through `fsmatrix::run_prebuilt`, then power-off.

mod build;
mod guest;
mod qemu;
mod vm;

use crate::proc::{self, Wait};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// `cargo xtask kernel ...`.
#[derive(Subcommand)]
pub enum Cmd {
    /// Build (or find in the cache) a VM kernel from Debian's linux-source.
    Build(BuildArgs),
    /// Boot that kernel under qemu and run vectest, the fs matrix (plus jfs,
    /// reiserfs, nfs) and the aio-sys/aio tests inside.
    Test(TestArgs),
    /// Inside the VM: PID 1 of the guest (not for people).
    #[command(hide = true)]
    Guest,
}

/// Which kernel.
#[derive(Args, Clone)]
pub struct BuildArgs {
    /// Kernel version: Debian's linux-source-<VERSION> package (6.12, 6.1).
    #[arg(long, default_value = "6.12")]
    pub version: String,
}

/// How to run the VM.
#[derive(Args)]
pub struct TestArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Only these rows (comma-separated), e.g. vectest,jfs,nfs; default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Kill a test binary (or vectest) in the guest that runs longer than
    /// this (under TCG most take seconds; aio's roundtrip on the nfs row
    /// takes 750-900 s, so a full run wants --timeout-secs 900 or more).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Kill the whole VM after this long (a full run under TCG on 2 loaded
    /// cores took 1950 s in the VM on 6.1).
    #[arg(long, default_value_t = 3600)]
    vm_timeout_secs: u64,
    /// qemu acceleration: auto (KVM when it boots the guest to its first
    /// console line within 30 s, TCG otherwise), or force one.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mib: u64,
}

/// qemu's accelerator.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// KVM if a probe VM starts with it and the guest then prints its
    /// first console line in time; TCG otherwise.
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// The rows of the guest run, in TARGETS order (see fsmatrix).
pub const GUEST_ROWS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "loop", "zram0", "jfs", "reiserfs", "nfs",
    "plain", "vectest",
];

/// Debian packages the host needs for `kernel test` beyond `cargo xtask
/// test`'s tools (the guest runs the host's programs over 9p); qemu is
/// [`qemu`]'s concern.
const TEST_PACKAGES: &[&str] = &["jfsutils", "reiserfsprogs", "nfs-kernel-server"];

/// Installs the missing ones of `pkgs` (as root), removing nothing: see
/// [`crate::apt::install`].
pub fn ensure_packages(pkgs: &[&str]) -> Result<(), String> {
    crate::apt::install(pkgs)
}

/// `$XDG_CACHE_HOME/aio-xtask/kernels` (default `~/.cache/...`).
pub fn cache_root() -> PathBuf {
    xtask_cache().join("kernels")
}

/// `$XDG_CACHE_HOME/aio-xtask` (default `~/.cache/aio-xtask`).
pub fn xtask_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("aio-xtask")
}

fn valid_version(v: &str) -> bool {
    let mut parts = v.split('.');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Runs `cargo xtask kernel ...`.
pub fn run(cmd: Cmd) -> ExitCode {
    match cmd {
        Cmd::Guest => guest::main(),
        Cmd::Build(args) => {
            if !valid_version(&args.version) {
                err!("--version wants MAJOR.MINOR, like 6.12 or 6.1");
                return ExitCode::from(2);
            }
            match build::ensure(&args.version) {
                Ok(k) => {
                    out!("kernel {} ready: {}", k.release, k.bzimage.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    err!("xtask kernel build: {e}");
                    if proc::interrupted() {
                        ExitCode::from(130)
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
        Cmd::Test(args) => {
            if !valid_version(&args.build.version) {
                err!("--version wants MAJOR.MINOR, like 6.12 or 6.1");
                return ExitCode::from(2);
            }
            if let Some(bad) = args.only.iter().find(|o| !GUEST_ROWS.contains(&o.as_str())) {
                err!("unknown row {bad:?}; known: {}", GUEST_ROWS.join(", "));
                return ExitCode::from(2);
            }
            vm::test(&args)
        }
    }
}

/// `cargo build --release` of one binary package (release: under TCG a
/// debug build's pattern generation and checking would dominate vectest's
/// time); returns the executable.
pub fn cargo_build_bin(package: &str) -> Result<PathBuf, String> {
    let mut cmd = Command::new(proc::cargo());
    cmd.current_dir(proc::workspace_root()).args([
        "build",
        "--release",
        "-p",
        package,
        "--bins",
        "--message-format=json-render-diagnostics",
    ]);
    let mut stdout = Vec::new();
    out!("    cargo build --release -p {package}");
    let waited = proc::run_streaming(&mut cmd, None, &mut |line| {
        if line.starts_with('{') {
            stdout.push(line.to_string());
        } else {
            err!("{line}");
        }
    });
    match waited {
        Ok(Wait::Exited(s)) if s.success() => {}
        Ok(Wait::Exited(s)) => {
            return Err(format!("cargo build -p {package}: {}", proc::describe(&s)));
        }
        Ok(_) => return Err("interrupted".into()),
        Err(e) => return Err(format!("running cargo: {e}")),
    }
    stdout
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo built no executable for {package}"))
}
