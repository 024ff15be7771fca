//! Which `qemu-system-x86_64` `kernel test` runs, found or fetched without
//! removing or replacing any installed package.
//!
//! In this order:
//! 1. the machine's `qemu-system-x86_64`, when it is at least [`MIN`];
//! 2. Debian's `qemu-system-x86` installed with apt, when apt can add it
//!    without removing anything (see [`crate::apt`]);
//! 3. otherwise a private copy in `<cache>/qemu/<version>/root`: the
//!    packages of [`PRIVATE`], fetched with `apt-get download` and unpacked
//!    with `dpkg-deb -x` (dpkg's database does not change), plus the shared
//!    libraries the emulator needs, which apt adds when that removes
//!    nothing. It runs with `-L` at its own data and firmware directories
//!    and `QEMU_MODULE_DIR` at its own modules (TCG is one of them).

use crate::apt;
use crate::proc::{self, Wait};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The emulator's name.
pub const BINARY: &str = "qemu-system-x86_64";
/// The oldest qemu the VM's options are known to work with (Debian 12's).
pub const MIN: (u32, u32) = (7, 2);
/// Debian's package of [`BINARY`].
const PACKAGE: &str = "qemu-system-x86";
/// What a private copy unpacks: the emulator, its companions (modules,
/// data) and its firmware. Everything else it depends on is a shared
/// library, which apt installs.
const PRIVATE: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
];
/// Inside an unpacked root: where qemu finds its data and firmware (`-L`).
const DATA_DIRS: &[&str] = &["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"];

/// The qemu to run, and why this one.
pub struct Qemu {
    pub binary: PathBuf,
    /// `-L` directories (a private copy's own).
    pub data_dirs: Vec<PathBuf>,
    /// `QEMU_MODULE_DIR` (a private copy's own).
    pub module_dir: Option<PathBuf>,
    /// "7.2.19"
    pub version: String,
    /// (7, 2)
    number: (u32, u32),
    /// One line for the output: which qemu and why.
    pub why: String,
}

impl Qemu {
    fn new(binary: PathBuf) -> Qemu {
        Qemu {
            binary,
            data_dirs: Vec::new(),
            module_dir: None,
            version: String::new(),
            number: (0, 0),
            why: String::new(),
        }
    }

    /// `qemu-system-x86_64` with this copy's data and module directories.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        for dir in &self.data_dirs {
            cmd.arg("-L").arg(dir);
        }
        if let Some(dir) = &self.module_dir {
            cmd.env("QEMU_MODULE_DIR", dir);
        }
        cmd
    }

    /// Runs `--version`: the version, or why it does not run (a missing
    /// shared library shows here).
    fn probe(&mut self) -> Result<(), String> {
        let out = self
            .command()
            .arg("--version")
            .output()
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match parse_version(&text) {
            Some((v, number)) if out.status.success() => {
                self.version = v;
                self.number = number;
                Ok(())
            }
            _ => Err(format!(
                "{} --version: {} {}",
                self.binary.display(),
                proc::describe(&out.status),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)" →
/// ("7.2.19", (7, 2)).
pub fn parse_version(text: &str) -> Option<(String, (u32, u32))> {
    let v = text
        .lines()
        .next()?
        .split_once("version ")?
        .1
        .split_whitespace()
        .next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    Some((v.to_string(), (major, minor)))
}

/// The candidate version apt would install of `pkg` (`apt-cache policy`).
fn candidate(pkg: &str) -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["policy", pkg])
        .output()
        .map_err(|e| format!("running apt-cache: {e}"))?;
    parse_candidate(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("apt knows no version of {pkg} (apt-cache policy {pkg})"))
}

/// The `Candidate:` of `apt-cache policy` output, if there is one.
pub fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(String::from)
}

/// The shared-library packages a `Depends` field asks for, leaving out
/// [`PRIVATE`] and groups that an installed package satisfies; of a group
/// of alternatives, the first.
pub fn library_depends(depends: &str, installed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for group in depends.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let names: Vec<&str> = group
            .split('|')
            .filter_map(|alt| alt.split([' ', '(', ':']).find(|w| !w.is_empty()))
            .collect();
        if names.iter().any(|n| PRIVATE.contains(n) || installed(n)) {
            continue;
        }
        if let Some(first) = names.first() {
            out.push((*first).to_string());
        }
    }
    out
}

/// Finds the qemu to use (see the module's doc), installing or fetching it
/// as root.
pub fn find(cache: &Path) -> Result<Qemu, String> {
    let machine = proc::which(BINARY);
    let problem = match &machine {
        None => format!("no {BINARY} on this machine"),
        Some(path) => {
            let mut q = Qemu::new(path.clone());
            match q.probe() {
                Ok(()) if q.number >= MIN => {
                    q.why = format!(
                        "the machine's {} {} (at least {}.{})",
                        path.display(),
                        q.version,
                        MIN.0,
                        MIN.1
                    );
                    return Ok(q);
                }
                Ok(()) => format!(
                    "the machine's {} is {}, older than {}.{}",
                    path.display(),
                    q.version,
                    MIN.0,
                    MIN.1
                ),
                Err(e) => format!("the machine's {BINARY} does not run ({e})"),
            }
        }
    };
    if !proc::is_root() {
        return Err(format!(
            "{problem}; install Debian's {PACKAGE} (sudo apt-get install --no-install-recommends {PACKAGE}) or run as root"
        ));
    }
    if machine.is_none() {
        let plan = apt::simulate(&[PACKAGE])?;
        if plan.removals.is_empty() {
            apt::install(&[PACKAGE])?;
            let mut q =
                Qemu::new(proc::which(BINARY).ok_or_else(|| {
                    format!("{PACKAGE} is installed but {BINARY} is not in PATH")
                })?);
            q.probe()?;
            q.why = format!(
                "Debian's {PACKAGE} {}, installed now ({problem})",
                q.version
            );
            return Ok(q);
        }
        for line in apt::explain_removals(&[PACKAGE], &plan).lines() {
            out!("    {line}");
        }
    }
    private(cache, &problem)
}

/// Removes a half-made private copy unless it was finished.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                err!("xtask: removing {}: {e}", dir.display());
            }
        }
    }
}

fn run_quiet(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}: {}",
            proc::describe(&out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The private copy of Debian's candidate qemu-system-x86: found in the
/// cache or fetched and unpacked there; its libraries installed with apt.
fn private(cache: &Path, problem: &str) -> Result<Qemu, String> {
    let version = candidate(PACKAGE)?;
    let dir = cache.join(&version);
    let root = dir.join("root");
    let fetched = if root.join("usr/bin").join(BINARY).exists() {
        false
    } else {
        fetch(cache, &dir)?;
        true
    };
    let deb_depends = fs::read_to_string(dir.join("depends")).unwrap_or_default();
    let libs = library_depends(&deb_depends, apt::installed);
    if !libs.is_empty() {
        let names: Vec<&str> = libs.iter().map(String::as_str).collect();
        out!(
            "    the private qemu needs shared libraries: {}",
            names.join(" ")
        );
        apt::install(&names).map_err(|e| format!("installing qemu's libraries: {e}"))?;
    }
    // usr/lib/<multiarch triplet>/qemu: the directory of the `.so` modules.
    let module_dir = fs::read_dir(root.join("usr/lib")).ok().and_then(|d| {
        d.flatten().map(|e| e.path().join("qemu")).find(|p| {
            fs::read_dir(p).is_ok_and(|mut files| {
                files.any(|f| f.is_ok_and(|f| f.path().extension().is_some_and(|x| x == "so")))
            })
        })
    });
    let mut q = Qemu::new(root.join("usr/bin").join(BINARY));
    q.data_dirs = DATA_DIRS
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect();
    q.module_dir = module_dir;
    q.probe()?;
    if q.number < MIN {
        return Err(format!(
            "Debian's {PACKAGE} is {}, older than {}.{}",
            q.version, MIN.0, MIN.1
        ));
    }
    q.why = format!(
        "a private copy of Debian's {PACKAGE} {version} ({}, {}; installed packages stay as they are), because {problem} and apt cannot install it without removing packages",
        if fetched {
            "fetched now"
        } else {
            "from the cache"
        },
        root.display()
    );
    Ok(q)
}

/// `apt-get download` of [`PRIVATE`] into a fresh directory beside `dir`,
/// `dpkg-deb -x` of each into `root/`, the emulator's `Depends` kept in
/// `depends`; renamed to `dir` when complete, removed otherwise.
fn fetch(cache: &Path, dir: &Path) -> Result<(), String> {
    out!(
        "    fetching {} into {} (apt-get download, dpkg-deb -x)",
        PRIVATE.join(" "),
        dir.display()
    );
    fs::create_dir_all(cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let tmp = cache.join(format!(".partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let mut partial = Partial(Some(tmp.clone()));
    let debs = tmp.join("debs");
    fs::create_dir_all(&debs).map_err(|e| format!("creating {}: {e}", debs.display()))?;
    let mut download = Command::new("apt-get");
    download
        .arg("download")
        .args(PRIVATE)
        .current_dir(&debs)
        .env("DEBIAN_FRONTEND", "noninteractive");
    match proc::run(&mut download, None) {
        Ok(Wait::Exited(s)) if s.success() => {}
        Ok(Wait::Exited(s)) => {
            return Err(format!(
                "apt-get download {}: {}",
                PRIVATE.join(" "),
                proc::describe(&s)
            ));
        }
        Ok(_) => return Err("interrupted".into()),
        Err(e) => return Err(format!("cannot run apt-get: {e}")),
    }
    let files: Vec<PathBuf> = fs::read_dir(&debs)
        .map_err(|e| format!("reading {}: {e}", debs.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    let root = tmp.join("root");
    let mut depends = String::new();
    for deb in &files {
        run_quiet(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root),
            &format!("dpkg-deb -x {}", deb.display()),
        )?;
        let name = deb.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(&format!("{PACKAGE}_"))) {
            let out = Command::new("dpkg-deb")
                .args(["-f"])
                .arg(deb)
                .arg("Depends")
                .output()
                .map_err(|e| format!("running dpkg-deb: {e}"))?;
            depends = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
    }
    if depends.is_empty() {
        return Err(format!("apt-get download fetched no {PACKAGE}"));
    }
    fs::write(tmp.join("depends"), depends + "\n").map_err(|e| format!("writing: {e}"))?;
    fs::remove_dir_all(&debs).map_err(|e| format!("removing {}: {e}", debs.display()))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir).map_err(|e| format!("renaming to {}: {e}", dir.display()))?;
    partial.0 = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line() {
        let (v, mm) =
            parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n")
                .unwrap();
        assert_eq!(v, "7.2.19");
        assert_eq!(mm, (7, 2));
        assert!(mm >= MIN);
        let (_, mm) = parse_version("QEMU emulator version 10.0.2 (Debian)\n").unwrap();
        assert!(mm >= MIN);
        let (_, mm) = parse_version("QEMU emulator version 5.2.0\n").unwrap();
        assert!(mm < MIN);
        assert!(parse_version("something else").is_none());
    }

    #[test]
    fn candidate_of_policy() {
        let policy =
            "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n";
        assert_eq!(
            parse_candidate(policy).as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        assert_eq!(parse_candidate("x:\n  Candidate: (none)\n"), None);
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn only_missing_libraries() {
        let depends = "libaio1 (>= 0.3.93), libcapstone4 (>= 4), libfdt1 (>= 1.6.1), \
                       qemu-system-common (= 1:7.2+dfsg-7+deb12u18+b3), seabios, ipxe-qemu, \
                       libfoo1 | libbar1, libgcc-s1:amd64 (>= 3.4)";
        let installed = |p: &str| ["libaio1", "libgcc-s1", "libbar1"].contains(&p);
        assert_eq!(
            library_depends(depends, installed),
            ["libcapstone4", "libfdt1"]
        );
    }
}
