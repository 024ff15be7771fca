//! The system tools the test suite needs, and installing them with apt-get
//! (through [`crate::apt`], which never removes a package).

use crate::Outcome;
use crate::proc;
use std::path::Path;

/// How to tell that a tool is there.
#[derive(Clone, Copy)]
pub enum Probe {
    /// An executable in PATH (or an sbin directory).
    Bin(&'static str),
    /// A file, for headers.
    File(&'static str),
}

/// One thing the suite needs and the Debian package that brings it.
pub struct Tool {
    /// How to find it.
    pub probe: Probe,
    /// The Debian 12 package that provides it.
    pub package: &'static str,
    /// Who needs it.
    pub why: &'static str,
}

/// Everything `cargo xtask test` needs on a Debian 12 machine.
pub const TOOLS: &[Tool] = &[
    Tool {
        probe: Probe::Bin("cc"),
        package: "gcc",
        why: "aio-abi's C ABI test",
    },
    // gcc with --no-install-recommends does not pull in the C headers.
    Tool {
        probe: Probe::File("/usr/include/stdio.h"),
        package: "libc6-dev",
        why: "aio-abi's C ABI test",
    },
    Tool {
        probe: Probe::File("/usr/include/linux/aio_abi.h"),
        package: "linux-libc-dev",
        why: "aio-abi's C ABI test",
    },
    Tool {
        probe: Probe::Bin("valgrind"),
        package: "valgrind",
        why: "memcheck runs of test binaries",
    },
    Tool {
        probe: Probe::Bin("mkfs.ext2"),
        package: "e2fsprogs",
        why: "fs matrix (ext2/ext3/ext4)",
    },
    Tool {
        probe: Probe::Bin("mkfs.xfs"),
        package: "xfsprogs",
        why: "fs matrix (xfs)",
    },
    Tool {
        probe: Probe::Bin("mkfs.btrfs"),
        package: "btrfs-progs",
        why: "fs matrix (btrfs)",
    },
    // util-linux's losetup and mount are packaged as "mount" on Debian 12.
    Tool {
        probe: Probe::Bin("losetup"),
        package: "mount",
        why: "inspecting the fs matrix's loop devices",
    },
    Tool {
        probe: Probe::Bin("mount"),
        package: "mount",
        why: "inspecting the fs matrix's mounts",
    },
    Tool {
        probe: Probe::Bin("fio"),
        package: "fio",
        why: "benchmarks against fio",
    },
];

impl Tool {
    /// Whether it is installed.
    pub fn present(&self) -> bool {
        match self.probe {
            Probe::Bin(name) => proc::which(name).is_some(),
            Probe::File(path) => Path::new(path).exists(),
        }
    }

    /// What to call it in messages.
    pub fn name(&self) -> &'static str {
        match self.probe {
            Probe::Bin(name) | Probe::File(name) => name,
        }
    }
}

fn missing() -> Vec<&'static Tool> {
    TOOLS.iter().filter(|t| !t.present()).collect()
}

fn packages(tools: &[&Tool]) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = tools.iter().map(|t| t.package).collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    pkgs
}

fn list(tools: &[&Tool]) -> String {
    tools
        .iter()
        .map(|t| format!("{} ({}, for {})", t.name(), t.package, t.why))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks every tool; as root installs the missing ones. Without root a
/// missing tool fails in CI and is skipped (with what to install) elsewhere.
pub fn ensure() -> Outcome {
    let missing_now = missing();
    if missing_now.is_empty() {
        return Outcome::Passed(format!("all {} tools present", TOOLS.len()));
    }
    let pkgs = packages(&missing_now);
    out!("    missing: {}", list(&missing_now));
    if !proc::is_root() {
        let msg = format!(
            "missing {}; install with: sudo apt-get install --no-install-recommends {}",
            list(&missing_now),
            pkgs.join(" ")
        );
        return if proc::is_ci() {
            Outcome::Failed(msg)
        } else {
            Outcome::Skipped(msg)
        };
    }
    if let Err(e) = crate::apt::install(&pkgs) {
        return Outcome::Failed(e);
    }
    let still = missing();
    if still.is_empty() {
        Outcome::Passed(format!("installed {}", pkgs.join(" ")))
    } else {
        Outcome::Failed(format!("still missing after apt-get: {}", list(&still)))
    }
}
