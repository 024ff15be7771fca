//! `cargo xtask kernel test`: the host side. Builds what the guest runs,
//! boots the kernel under qemu and prints what the guest found.
//!
//! The VM:
//! - root: the host's `/`, read-only over virtio-9p (tag `/dev/root`); the
//!   guest mounts tmpfs where it writes (see `guest`);
//! - results: a fresh host directory, read-write over 9p (tag
//!   `aioresults`): the plan goes in, logs and the matrix come out;
//! - programs: the test binaries and `aio-tools`, linked (or copied) into
//!   a fresh host directory, read-only over 9p (tag `aioprograms`), and the
//!   workspace's source read-only (tag `aiosource`, the test binaries'
//!   working directories): the guest finds them at its own mount points,
//!   wherever the checkout and the target directory live on the host (the
//!   guest mounts its own /tmp, /run and /var/tmp over the host's);
//! - virtio-scsi with two blank sparse disks: scsi-id 0 (`sda`, serial
//!   `aio-system`, the system disk: the guest makes it its ext4 /tmp) and
//!   scsi-id 1 (`sdb`, serial `aio-scratch`), the scratch disk of the seed's
//!   `aio-tools vectest /dev/sdb`. sd probes run in parallel, so the
//!   names would be a race: the kernel does not scan (`scsi_mod.scan=manual`)
//!   and the guest scans target 0, waits for `sda`, then target 1; it also
//!   checks the serial number before vectest writes;
//! - console on the serial port, streamed here line by line; `-no-reboot`
//!   and `panic=-1` so that any end of the guest ends qemu.

use super::qemu::{self, Qemu};
use super::{Accel, GUEST_ROWS, TEST_PACKAGES, TestArgs, build, cargo_build_bin, ensure_packages};
use crate::fsmatrix;
use crate::proc::{self, Wait, Watched};
use serde_json::{Value, json};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// 9p tag of the results directory.
pub const RESULTS_TAG: &str = "aioresults";
/// 9p tag of the programs directory, and where the guest mounts it.
pub const PROGRAMS_TAG: &str = "aioprograms";
pub const GUEST_PROGRAMS: &str = "/run/aio-programs";
/// 9p tag of the workspace's source, and where the guest mounts it.
pub const SOURCE_TAG: &str = "aiosource";
pub const GUEST_SOURCE: &str = "/run/aio-source";
/// Serial number of the scratch disk (`/dev/sdb` in the guest).
pub const SCRATCH_SERIAL: &str = "aio-scratch";
/// vectest covers the whole device (2 passes): 256 MiB takes about a
/// minute under TCG.
const SCRATCH_MIB: u64 = 256;
/// The guest's /tmp (ext4): the fs matrix's sparse images live there.
const SYSTEM_MIB: u64 = 4096;

/// Removes the VM's work directory (images included) when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            err!("xtask: removing {}: {e}", self.0.display());
        }
    }
}

fn sparse(path: &Path, mib: u64) -> Result<(), String> {
    File::create_new(path)
        .and_then(|f| f.set_len(mib << 20))
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Whether qemu runs with KVM here: a probe VM (firmware only, no disk)
/// must still be running after 3 s. Some hosts have a /dev/kvm that qemu
/// cannot use ("failed to set MSR 0x10a"), so /dev/kvm alone is not enough.
fn kvm_works(qemu: &Qemu, work: &Path) -> Result<(), String> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let log = work.join("kvm-probe.log");
    let f = File::create(&log).map_err(|e| e.to_string())?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = qemu.command();
    cmd.args([
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
    ])
    .stdout(f)
    .stderr(f2);
    match proc::run(&mut cmd, Some(Duration::from_secs(3))) {
        Ok(Wait::TimedOut) => Ok(()),
        Ok(Wait::Exited(s)) => {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            Err(format!(
                "qemu -accel kvm exited at once ({}): {first}",
                proc::describe(&s)
            ))
        }
        Ok(Wait::Interrupted) => Err("interrupted".into()),
        Err(e) => Err(format!("running {}: {e}", qemu.binary.display())),
    }
}

/// Under KVM the guest's first console line (PID 1's greeting) comes
/// within seconds; a host where KVM starts a VM that then never runs the
/// guest stays silent. After this long without a line, KVM is given up.
const KVM_FIRST_LINE: Duration = Duration::from_secs(30);

/// The accelerator to boot with, and why.
struct Choice {
    accel: &'static str,
    why: String,
    /// Whether a silent guest under KVM boots again under TCG (`auto`).
    fallback: bool,
}

fn choose_accel(qemu: &Qemu, want: Accel, work: &Path) -> Result<Choice, String> {
    let first = KVM_FIRST_LINE.as_secs();
    match want {
        Accel::Tcg => Ok(Choice {
            accel: "tcg",
            why: "--accel tcg".into(),
            fallback: false,
        }),
        Accel::Kvm => kvm_works(qemu, work).map(|()| Choice {
            accel: "kvm",
            why: format!("--accel kvm; the guest must print a line within {first} s"),
            fallback: false,
        }),
        Accel::Auto => Ok(match kvm_works(qemu, work) {
            Ok(()) => Choice {
                accel: "kvm",
                why: format!(
                    "a probe VM ran under KVM; TCG takes over if the guest prints nothing within {first} s"
                ),
                fallback: true,
            },
            Err(why) => Choice {
                accel: "tcg",
                why: format!("KVM unusable ({why}); software emulation, slower"),
                fallback: false,
            },
        }),
    }
}

/// Blank disk images and a results directory with only the plan: before
/// each boot.
fn fresh_disks(work: &Path, results: &Path) -> Result<(), String> {
    for (file, mib) in [("system.img", SYSTEM_MIB), ("scratch.img", SCRATCH_MIB)] {
        let path = work.join(file);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing {}: {e}", path.display()));
            }
            _ => {}
        }
        sparse(&path, mib)?;
    }
    let entries = fs::read_dir(results).map_err(|e| format!("{}: {e}", results.display()))?;
    for e in entries.flatten() {
        if e.file_name() == "plan.json" {
            continue;
        }
        let path = e.path();
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The host-built pieces the guest runs.
fn build_guest_programs(
    logs: &Path,
) -> Result<(PathBuf, Vec<fsmatrix::TestBin>, Option<PathBuf>), String> {
    let xtask = std::env::current_exe().map_err(|e| format!("finding the xtask binary: {e}"))?;
    let bins = fsmatrix::build_binaries(logs)?;
    let tool = match cargo_build_bin("aio-tools") {
        Ok(p) => Some(p),
        Err(e) if proc::interrupted() => return Err(e),
        Err(e) => {
            out!("    aio-tools does not build ({e}): the vectest row will say so");
            None
        }
    };
    Ok((xtask, bins, tool))
}

/// Links (or copies) `from` into `dir`; returns the copy's path on the
/// host and as the guest sees it, under [`GUEST_PROGRAMS`].
fn stage(from: &Path, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let name = from
        .file_name()
        .ok_or_else(|| format!("{} has no file name", from.display()))?;
    let to = dir.join(name);
    if fs::hard_link(from, &to).is_err() {
        fs::copy(from, &to)
            .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
    }
    Ok((to, Path::new(GUEST_PROGRAMS).join(name)))
}

/// The guest's view of the test binaries and aio-tools: staged into
/// `programs`, run in the workspace's source under [`GUEST_SOURCE`].
fn stage_programs(
    bins: &[fsmatrix::TestBin],
    tool: Option<&Path>,
    programs: &Path,
) -> Result<(Vec<fsmatrix::TestBin>, Option<PathBuf>), String> {
    fs::create_dir_all(programs).map_err(|e| format!("creating {}: {e}", programs.display()))?;
    let root = proc::workspace_root();
    let mut staged = Vec::new();
    for bin in bins {
        let (_, path) = stage(bin.path(), programs)?;
        let manifest_dir = bin.manifest_dir().strip_prefix(&root).map_or_else(
            |_| PathBuf::from(GUEST_SOURCE),
            |rel| Path::new(GUEST_SOURCE).join(rel),
        );
        staged.push(bin.at(path, manifest_dir));
    }
    let tool = tool
        .map(|t| stage(t, programs).map(|(_, guest)| guest))
        .transpose()?;
    Ok((staged, tool))
}

fn qemu_command(
    qemu: &Qemu,
    accel: &str,
    kernel: &Path,
    xtask: &Path,
    work: &Path,
    results: &Path,
    memory_mib: u64,
) -> Command {
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let append = format!(
        "console=ttyS0 root=/dev/root rootfstype=9p \
         rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose,access=any ro \
         panic=-1 oops=panic loglevel=4 scsi_mod.scan=manual init={} -- kernel guest",
        xtask.display()
    );
    let mut cmd = qemu.command();
    cmd.args(["-machine", "q35", "-accel"]);
    if accel == "kvm" {
        cmd.args(["kvm", "-cpu", "host"]);
    } else {
        cmd.args(["tcg,thread=multi", "-cpu", "max"]);
    }
    cmd.args(["-smp", &cpus.to_string(), "-m", &format!("{memory_mib}M")])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", &append])
        .args([
            "-fsdev",
            "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root"])
        .arg("-fsdev")
        .arg(format!(
            "local,id=results,path={},security_model=none",
            results.display()
        ))
        .args([
            "-device",
            &format!("virtio-9p-pci,fsdev=results,mount_tag={RESULTS_TAG}"),
        ]);
    for (id, dir, tag) in [
        ("programs", work.join("programs"), PROGRAMS_TAG),
        ("source", proc::workspace_root(), SOURCE_TAG),
    ] {
        cmd.arg("-fsdev")
            .arg(format!(
                "local,id={id},path={},security_model=none,readonly=on,multidevs=remap",
                dir.display()
            ))
            .args([
                "-device",
                &format!("virtio-9p-pci,fsdev={id},mount_tag={tag}"),
            ]);
    }
    cmd.args(["-device", "virtio-scsi-pci,id=scsi0"]);
    for (id, file, serial, scsi_id) in [
        ("system", "system.img", "aio-system", 0),
        ("scratch", "scratch.img", SCRATCH_SERIAL, 1),
    ] {
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,id={id},format=raw,cache=unsafe",
                work.join(file).display()
            ))
            .arg("-device")
            .arg(format!(
                "scsi-hd,drive={id},bus=scsi0.0,channel=0,scsi-id={scsi_id},lun=0,serial={serial}"
            ));
    }
    cmd
}

fn fail(msg: String) -> ExitCode {
    err!("xtask kernel test: {msg}");
    if proc::interrupted() {
        ExitCode::from(130)
    } else {
        ExitCode::FAILURE
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

fn nofile_limit() -> [u64; 2] {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return [1024, 4096];
    }
    [r.rlim_cur, r.rlim_max]
}

/// `cargo xtask kernel test`.
pub fn test(args: &TestArgs) -> ExitCode {
    let started = Instant::now();
    if !proc::is_root() {
        return fail(
            "needs root (apt-get, and the guest's mounts run as the host's root over 9p)".into(),
        );
    }
    out!("==> tools");
    if let crate::Outcome::Failed(e) = crate::tools::ensure() {
        return fail(e);
    }
    if let Err(e) = ensure_packages(TEST_PACKAGES) {
        return fail(e);
    }
    out!("==> qemu");
    let qemu = match qemu::find(&super::xtask_cache().join("qemu")) {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    out!("    using {}: {}", qemu.binary.display(), qemu.why);
    out!("==> kernel {}", args.build.version);
    let kernel = match build::ensure(&args.build.version) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    out!("==> programs the guest runs");
    let target_dir = match crate::fsmatrix::target_dir() {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let out_dir = target_dir.join(format!("kernel-test-{}", args.build.version));
    // Two runs of one version would share out_dir: the second waits.
    let lock_path = target_dir.join(format!("kernel-test-{}.lock", args.build.version));
    let _lock = loop {
        match crate::sys::Lock::try_take(&lock_path) {
            Ok(Some(l)) => break l,
            Ok(None) => {
                out!(
                    "    waiting for another kernel test run ({})",
                    lock_path.display()
                );
                std::thread::sleep(Duration::from_secs(5));
                if proc::interrupted() {
                    return fail("interrupted".into());
                }
            }
            Err(e) => return fail(format!("locking {}: {e}", lock_path.display())),
        }
    };
    let _ = fs::remove_dir_all(&out_dir);
    if let Err(e) = fs::create_dir_all(&out_dir) {
        return fail(format!("creating {}: {e}", out_dir.display()));
    }
    let (xtask, bins, tool) = match build_guest_programs(&out_dir) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let work =
        WorkDir(std::env::temp_dir().join(format!("aio-kernelvm-{}-{stamp}", std::process::id())));
    let results = work.0.join("results");
    if let Err(e) = fs::create_dir_all(&results) {
        return fail(format!("creating {}: {e}", results.display()));
    }
    let (bins, tool) = match stage_programs(&bins, tool.as_deref(), &work.0.join("programs")) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    // The guest's init: the kernel starts it from the host's root, before
    // the guest mounts anything; a linked copy, so that a cargo build
    // during the run cannot replace it.
    let xtask = match stage(&xtask, &work.0.join("programs")) {
        Ok((host, _)) => host,
        Err(e) => return fail(e),
    };
    let only: Vec<&str> = if args.only.is_empty() {
        GUEST_ROWS.to_vec()
    } else {
        args.only.iter().map(String::as_str).collect()
    };
    let plan = json!({
        "only": only,
        "timeout_secs": args.timeout_secs,
        "test_binaries": bins.iter().map(fsmatrix::TestBin::to_json).collect::<Vec<_>>(),
        "aio_tools": tool.as_ref().map(|p| p.display().to_string()),
        "vectest_device": "/dev/sdb",
        "vectest_serial": SCRATCH_SERIAL,
        "ci": proc::is_ci(),
        // The guest's PID 1 starts with the kernel's default (1024); the
        // tests get the host's limits, as under `cargo xtask test`.
        "nofile": nofile_limit(),
    });
    if let Err(e) = fs::write(
        results.join("plan.json"),
        serde_json::to_string_pretty(&plan).unwrap_or_default(),
    ) {
        return fail(format!("writing the plan: {e}"));
    }

    let mut choice = match choose_accel(&qemu, args.accel, &work.0) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let console_path = out_dir.join("console.log");
    let mut console = File::create(&console_path).ok();
    let vm_started = Instant::now();
    let waited = loop {
        if let Err(e) = fresh_disks(&work.0, &results) {
            return fail(e);
        }
        out!(
            "==> booting Linux {} under qemu {} with {} ({}), {} MiB; VM timeout {} s",
            kernel.release,
            qemu.version,
            choice.accel,
            choice.why,
            args.memory_mib,
            args.vm_timeout_secs
        );
        let mut cmd = qemu_command(
            &qemu,
            choice.accel,
            &kernel.bzimage,
            &xtask,
            &work.0,
            &results,
            args.memory_mib,
        );
        let waited = proc::run_watched(
            cmd.stdin(Stdio::null()),
            Some(Duration::from_secs(args.vm_timeout_secs)),
            (choice.accel == "kvm").then_some(KVM_FIRST_LINE),
            &mut |line| {
                use std::io::Write as _;
                if let Some(c) = console.as_mut() {
                    let _ = writeln!(c, "{line}");
                }
                out!("  | {line}");
            },
        );
        match waited {
            Ok(Watched::Silent) if choice.fallback => {
                let why = format!(
                    "under KVM the guest printed no console line in {} s",
                    KVM_FIRST_LINE.as_secs()
                );
                out!("    {why}: booting again under TCG");
                if let Some(c) = console.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(c, "xtask: {why}; booting again under TCG");
                }
                choice = Choice {
                    accel: "tcg",
                    why: format!("{why}; software emulation, slower"),
                    fallback: false,
                };
            }
            other => break other,
        }
    };
    let vm_secs = vm_started.elapsed().as_secs_f64();
    let vm_problem = match waited {
        Ok(Watched::Ended(Wait::Exited(s))) if s.success() => None,
        Ok(Watched::Ended(Wait::Exited(s))) => {
            Some(format!("qemu ended with {}", proc::describe(&s)))
        }
        Ok(Watched::Ended(Wait::TimedOut)) => Some(format!(
            "the VM was killed after {} s",
            args.vm_timeout_secs
        )),
        Ok(Watched::Ended(Wait::Interrupted)) => Some("interrupted".into()),
        Ok(Watched::Silent) => Some(format!(
            "under KVM the guest printed no console line in {} s (--accel tcg or auto run without KVM)",
            KVM_FIRST_LINE.as_secs()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", qemu.binary.display())),
    };
    let accel = choice.accel;

    // Keep what the guest wrote (not the images) next to the build output.
    if let Err(e) = copy_dir(&results, &out_dir) {
        err!(
            "xtask: copying {} to {}: {e}",
            results.display(),
            out_dir.display()
        );
    }
    drop(work);

    let status: Option<Value> = fs::read_to_string(out_dir.join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let table = fs::read_to_string(out_dir.join("fs-matrix.txt")).unwrap_or_default();
    out!();
    out!(
        "==> guest kernel {} (qemu {}, {accel}: {}; VM {:.0} s, total {:.0} s)",
        kernel.release,
        qemu.version,
        choice.why,
        vm_secs,
        started.elapsed().as_secs_f64()
    );
    if table.is_empty() {
        out!("(the guest wrote no matrix)");
    } else {
        out!("{}", table.trim_end());
    }
    out!(
        "logs: {} (console.log, fs-matrix/, fs-matrix.json)",
        out_dir.display()
    );
    let failed_rows: Vec<String> = fs::read_to_string(out_dir.join("fs-matrix.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| {
            v["targets"].as_array().map(|rows| {
                rows.iter()
                    .filter(|r| r["status"] == "fail")
                    .filter_map(|r| r["target"].as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default();
    let guest_ok = status.as_ref().is_some_and(|s| s["ok"] == true);
    let summary = status
        .as_ref()
        .and_then(|s| s["summary"].as_str().map(String::from))
        .unwrap_or_else(|| "the guest reported no result".into());
    match (vm_problem, guest_ok && failed_rows.is_empty()) {
        (None, true) => {
            out!("kernel test on {}: passed: {summary}", kernel.release);
            ExitCode::SUCCESS
        }
        (problem, _) => {
            let mut why = Vec::new();
            if let Some(p) = problem {
                why.push(p);
            }
            // The guest's summary names the failed rows; without it (a
            // guest killed mid-run), the partial JSON does.
            if status.is_none() && !failed_rows.is_empty() {
                why.push(format!("failed rows so far: {}", failed_rows.join(", ")));
            }
            why.push(summary);
            fail(format!("on {}: {}", kernel.release, why.join("; ")))
        }
    }
}
