//! `cargo xtask fs-matrix`: the test binaries of `aio-sys` and `aio`, run once
//! per storage target.
//!
//! The contract with those tests is two environment variables, exactly one of
//! which is set per run: `AIO_TEST_DIR` (a mounted filesystem to create
//! scratch files in) or `AIO_TEST_DEVICE` (a raw block device the tests may
//! overwrite).
//!
//! Everything a row creates is pushed on a [`Cleanup`] stack that runs when
//! the row ends, and from Drop if it ends by a panic; the signal handler in
//! `proc` turns Ctrl-C/SIGTERM into an early return through the same path.
//! Loop devices are set to autoclear, so even SIGKILL leaves at most a mount,
//! which the next run finds (by the dead pid in its path) and removes.

use crate::Outcome;
use crate::proc::{self, Wait};
use crate::sys::{self, LoopDevice};
use serde_json::{Value, json};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The variable naming a mounted scratch directory.
pub const DIR_VAR: &str = "AIO_TEST_DIR";
/// The variable naming a raw scratch block device.
pub const DEVICE_VAR: &str = "AIO_TEST_DEVICE";
/// The packages whose test binaries the matrix runs.
const PACKAGES: &[&str] = &["aio-sys", "aio"];
/// Names of everything the matrix creates start with this, followed by the
/// owning pid, so that a later run can recognise leftovers of a dead one.
const PREFIX: &str = "aio-fsmatrix-";
const MIB: u64 = 1 << 20;

mod nfs;

/// Options of `cargo xtask fs-matrix`.
pub struct Options {
    /// Run only these targets (the default ones when empty).
    pub only: Vec<String>,
    /// Kill a test binary that runs longer than this.
    pub timeout: Duration,
    /// The `vectest` row: only `cargo xtask kernel test` sets it, inside its
    /// VM, where the device is a blank scratch disk.
    pub vectest: Option<Vectest>,
}

/// What the `vectest` row runs: `<tool> vectest <device>`, literally.
#[derive(Clone)]
pub struct Vectest {
    /// The `aio-tools` binary (None: it could not be built).
    pub tool: Option<PathBuf>,
    /// The device, `/dev/sdb` in the VM.
    pub device: PathBuf,
    /// The serial number the device must have (checked before writing).
    pub serial: Option<String>,
}

enum Kind {
    /// mkfs on a loop device backed by a sparse image, then mount.
    LoopFs {
        mkfs: &'static str,
        package: &'static str,
        args: &'static [&'static str],
        fstype: &'static str,
        mib: u64,
    },
    Tmpfs {
        mib: u64,
    },
    /// A loop device over a sparse image, used raw.
    RawLoop {
        mib: u64,
    },
    /// `/dev/zram0`, reset and sized by the run.
    Zram {
        mib: u64,
    },
    /// An NFSv3 mount over 127.0.0.1 of a tmpfs this machine exports with
    /// its own (kernel) NFS server.
    Nfs {
        mib: u64,
    },
    /// No contract variable: the tests use a temp dir, as under `cargo test`.
    Plain,
    /// `aio-tools vectest <device>` (see [`Vectest`]) instead of the test
    /// binaries.
    Vectest,
    // Pipe and socket-pair rows come with `aio-tools vectest` (they run
    // vectest over a pipe / socketpair, not the test binaries); add them
    // here as their own kinds then.
}

struct Target {
    name: &'static str,
    kind: Kind,
    /// Part of a run without `--only`. The others (jfs, reiserfs, nfs,
    /// plain, vectest) are run by `cargo xtask kernel test` in a VM whose
    /// kernel has them, and on the host only when asked for.
    default: bool,
}

impl Target {
    fn class(&self) -> &'static str {
        match self.kind {
            Kind::LoopFs { .. } | Kind::Tmpfs { .. } | Kind::Nfs { .. } => "filesystem",
            Kind::RawLoop { .. } | Kind::Zram { .. } => "block device",
            Kind::Plain => "temp dir",
            Kind::Vectest => "seed command",
        }
    }
}

const fn ext(mkfs: &'static str, fstype: &'static str) -> Kind {
    Kind::LoopFs {
        mkfs,
        package: "e2fsprogs",
        args: &["-F", "-q"],
        fstype,
        mib: 64,
    }
}

// Sizes: mkfs.xfs refuses less than 300 MiB, mkfs.btrfs less than 114 MiB.
// The images are sparse, so only written blocks take disk space.
const TARGETS: &[Target] = &[
    Target {
        name: "ext2",
        kind: ext("mkfs.ext2", "ext2"),
        default: true,
    },
    Target {
        name: "ext3",
        kind: ext("mkfs.ext3", "ext3"),
        default: true,
    },
    Target {
        name: "ext4",
        kind: ext("mkfs.ext4", "ext4"),
        default: true,
    },
    Target {
        name: "xfs",
        kind: Kind::LoopFs {
            mkfs: "mkfs.xfs",
            package: "xfsprogs",
            args: &["-f", "-q"],
            fstype: "xfs",
            mib: 320,
        },
        default: true,
    },
    Target {
        name: "btrfs",
        kind: Kind::LoopFs {
            mkfs: "mkfs.btrfs",
            package: "btrfs-progs",
            args: &["-f", "-q"],
            fstype: "btrfs",
            mib: 256,
        },
        default: true,
    },
    Target {
        name: "tmpfs",
        kind: Kind::Tmpfs { mib: 256 },
        default: true,
    },
    Target {
        name: "loop",
        kind: Kind::RawLoop { mib: 64 },
        default: true,
    },
    Target {
        name: "zram0",
        kind: Kind::Zram { mib: 64 },
        default: true,
    },
    Target {
        name: "jfs",
        kind: Kind::LoopFs {
            mkfs: "mkfs.jfs",
            package: "jfsutils",
            args: &["-q"],
            fstype: "jfs",
            // drop_inflight's four tests write 16 MiB each at once.
            mib: 256,
        },
        default: false,
    },
    // -f twice: no questions.
    Target {
        name: "reiserfs",
        kind: Kind::LoopFs {
            mkfs: "mkfs.reiserfs",
            package: "reiserfsprogs",
            args: &["-f", "-f", "-q"],
            fstype: "reiserfs",
            // The journal alone takes 32 MiB.
            mib: 256,
        },
        default: false,
    },
    Target {
        name: "nfs",
        kind: Kind::Nfs { mib: 1024 },
        default: false,
    },
    Target {
        name: "plain",
        kind: Kind::Plain,
        default: false,
    },
    Target {
        name: "vectest",
        kind: Kind::Vectest,
        default: false,
    },
];

/// Names of all targets, for `--only`'s help.
pub fn target_names() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name).collect()
}

/// Names of the targets a run without `--only` has.
pub fn default_target_names() -> Vec<&'static str> {
    TARGETS
        .iter()
        .filter(|t| t.default)
        .map(|t| t.name)
        .collect()
}

type Action = Box<dyn FnOnce() -> io::Result<()>>;

/// Cleanup actions, run last-pushed first by `finish` or, on a panic, by Drop.
struct Cleanup {
    actions: Vec<(String, Action)>,
}

impl Cleanup {
    fn new() -> Cleanup {
        Cleanup {
            actions: Vec::new(),
        }
    }

    fn push(&mut self, what: String, action: impl FnOnce() -> io::Result<()> + 'static) {
        self.actions.push((what, Box::new(action)));
    }

    /// Runs every action; returns the failures.
    fn finish(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Some((what, action)) = self.actions.pop() {
            if let Err(e) = action() {
                errors.push(format!("{what}: {e}"));
            }
        }
        errors
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for e in self.finish() {
            err!("xtask: cleanup failed: {e}");
        }
    }
}

/// Removes `dir` unless something is still mounted under it (then removing
/// would delete files inside that filesystem).
fn remove_dir_safely(dir: &Path) -> io::Result<()> {
    if let Some(m) = sys::mount_points()?
        .into_iter()
        .find(|m| m.starts_with(dir))
    {
        return Err(io::Error::other(format!(
            "not removing {}: {} is still mounted",
            dir.display(),
            m.display()
        )));
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Why a row could not run its tests.
enum Problem {
    /// The kernel refused with this errno: this target does not exist here.
    Unsupported {
        errno: i32,
        what: String,
    },
    /// A tool is missing outside CI.
    Skipped(String),
    Failed(String),
    Interrupted,
}

fn syscall<T>(what: &str, r: io::Result<T>, unsupported: &[i32]) -> Result<T, Problem> {
    r.map_err(|e| match e.raw_os_error() {
        Some(errno) if unsupported.contains(&errno) => Problem::Unsupported {
            errno,
            what: format!("{what}: {e}"),
        },
        _ => Problem::Failed(format!("{what}: {e}")),
    })
}

fn missing_tool(msg: String) -> Problem {
    if proc::is_ci() {
        Problem::Failed(msg)
    } else {
        Problem::Skipped(msg)
    }
}

/// Where a row's tests point.
enum Location {
    Dir(PathBuf),
    Device(PathBuf),
    /// Neither variable.
    Plain,
    /// Not the test binaries: `<tool> vectest <device>`.
    Vectest {
        tool: PathBuf,
        device: PathBuf,
    },
}

impl Location {
    fn var(&self) -> Option<(&'static str, &Path)> {
        match self {
            Location::Dir(p) => Some((DIR_VAR, p)),
            Location::Device(p) => Some((DEVICE_VAR, p)),
            Location::Plain | Location::Vectest { .. } => None,
        }
    }
}

/// Whether /proc/filesystems lists `fstype` (a module not loaded yet is
/// not listed; mount(2) may still load it).
pub fn kernel_lists_fs(fstype: &str) -> bool {
    fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fstype))
}

/// For a filesystem /proc/filesystems does not list: mount(2) of the blank
/// device, which asks the kernel for the type (loading its module if it
/// can) before reading anything. ENODEV there is the real answer "this
/// kernel has no such filesystem", whether or not its mkfs is installed.
fn probe_fs(dev: &Path, dir: &Path, fstype: &str) -> Result<(), Problem> {
    if kernel_lists_fs(fstype) {
        return Ok(());
    }
    let probe = dir.join("probe");
    syscall(
        "creating the probe mount point",
        fs::create_dir(&probe),
        &[],
    )?;
    let r = sys::mount(&dev.to_string_lossy(), &probe, fstype, None);
    if r.is_ok() {
        // A blank device never mounts; be safe anyway.
        let _ = sys::unmount(&probe);
    }
    let _ = fs::remove_dir(&probe);
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Err(Problem::Unsupported {
            errno: libc::ENODEV,
            what: format!("mount -t {fstype}: {e} (the kernel has no {fstype})"),
        }),
        _ => Ok(()),
    }
}

fn sparse_image(dir: &Path, mib: u64) -> Result<PathBuf, Problem> {
    let image = dir.join("image");
    let file = syscall("creating the image", File::create_new(&image), &[])?;
    syscall("sizing the image", file.set_len(mib * MIB), &[])?;
    Ok(image)
}

fn attach(image: &Path, cleanup: &mut Cleanup) -> Result<PathBuf, Problem> {
    let dev = syscall("attaching a loop device", LoopDevice::attach(image), &[])?;
    let path = dev.path().to_path_buf();
    cleanup.push(format!("detaching {}", path.display()), move || {
        dev.detach()
    });
    Ok(path)
}

fn mount(
    source: &str,
    mnt: &Path,
    fstype: &str,
    data: Option<&str>,
    cleanup: &mut Cleanup,
) -> Result<(), Problem> {
    syscall("creating the mount point", fs::create_dir(mnt), &[])?;
    // ENODEV: this kernel has no such filesystem.
    syscall(
        &format!("mount -t {fstype} {source}"),
        sys::mount(source, mnt, fstype, data),
        &[libc::ENODEV],
    )?;
    let owned = mnt.to_path_buf();
    cleanup.push(format!("unmounting {}", mnt.display()), move || {
        sys::unmount(&owned)
    });
    Ok(())
}

/// Writes a sysfs attribute; the error keeps its errno.
fn write_sysfs(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

/// Creates, formats and mounts what `target` needs; everything it makes is
/// on `cleanup`.
fn prepare(
    target: &Target,
    dir: &Path,
    logs: &Path,
    vectest: Option<&Vectest>,
    cleanup: &mut Cleanup,
) -> Result<Location, Problem> {
    match target.kind {
        Kind::LoopFs {
            mkfs,
            package,
            args,
            fstype,
            mib,
        } => {
            let image = sparse_image(dir, mib)?;
            let dev = attach(&image, cleanup)?;
            probe_fs(&dev, dir, fstype)?;
            let Some(mkfs_path) = proc::which(mkfs) else {
                return Err(missing_tool(format!(
                    "{mkfs} is not installed (apt-get install {package})"
                )));
            };
            let log = logs.join(format!("{}-mkfs.log", target.name));
            let out = syscall("creating the mkfs log", File::create(&log), &[])?;
            let err = syscall("creating the mkfs log", out.try_clone(), &[])?;
            let mut cmd = Command::new(&mkfs_path);
            cmd.args(args).arg(&dev).stdout(out).stderr(err);
            out!("    {mkfs} {} {}", args.join(" "), dev.display());
            match proc::run(&mut cmd, Some(Duration::from_secs(300))) {
                Ok(Wait::Exited(s)) if s.success() => {}
                Ok(Wait::Exited(s)) => {
                    return Err(Problem::Failed(format!(
                        "{mkfs} failed ({}): {}",
                        proc::describe(&s),
                        tail(&log, 5).trim()
                    )));
                }
                Ok(Wait::TimedOut) => return Err(Problem::Failed(format!("{mkfs} hung"))),
                Ok(Wait::Interrupted) => return Err(Problem::Interrupted),
                Err(e) => return Err(Problem::Failed(format!("running {mkfs}: {e}"))),
            }
            let mnt = dir.join("mnt");
            mount(&dev.to_string_lossy(), &mnt, fstype, None, cleanup)?;
            out!(
                "    mounted {} ({fstype}) at {}",
                dev.display(),
                mnt.display()
            );
            Ok(Location::Dir(mnt))
        }
        Kind::Tmpfs { mib } => {
            let mnt = dir.join("mnt");
            let size = format!("size={mib}m");
            mount("tmpfs", &mnt, "tmpfs", Some(&size), cleanup)?;
            out!("    mounted tmpfs ({size}) at {}", mnt.display());
            Ok(Location::Dir(mnt))
        }
        Kind::RawLoop { mib } => {
            let image = sparse_image(dir, mib)?;
            let dev = attach(&image, cleanup)?;
            out!("    {} over a {mib} MiB sparse image", dev.display());
            Ok(Location::Device(dev))
        }
        Kind::Zram { mib } => {
            let sysfs = Path::new("/sys/block/zram0");
            // ENOENT: no zram module; EBUSY: someone else has zram0 open
            // (swap, a mount): not ours to take.
            syscall(
                "echo 1 > /sys/block/zram0/reset",
                write_sysfs(&sysfs.join("reset"), "1"),
                &[libc::ENOENT, libc::EBUSY],
            )?;
            let reset = sysfs.join("reset");
            cleanup.push("resetting zram0".into(), move || write_sysfs(&reset, "1"));
            syscall(
                "writing /sys/block/zram0/disksize",
                write_sysfs(&sysfs.join("disksize"), &(mib * MIB).to_string()),
                &[],
            )?;
            out!("    /dev/zram0 reset and sized to {mib} MiB");
            Ok(Location::Device(PathBuf::from("/dev/zram0")))
        }
        Kind::Nfs { mib } => nfs::prepare(dir, mib, cleanup).map(Location::Dir),
        Kind::Plain => Ok(Location::Plain),
        Kind::Vectest => prepare_vectest(vectest),
    }
}

/// Checks what the `vectest` row needs: the tool with a `vectest`
/// subcommand, and the scratch device with the expected serial number.
fn prepare_vectest(vectest: Option<&Vectest>) -> Result<Location, Problem> {
    let Some(v) = vectest else {
        return Err(Problem::Skipped(
            "only in `cargo xtask kernel test`, whose VM has a blank scratch disk \
             (it overwrites the device)"
                .into(),
        ));
    };
    let Some(tool) = &v.tool else {
        return Err(Problem::Skipped("aio-tools is not built yet".into()));
    };
    let help = Command::new(tool)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Problem::Failed(format!("running {} --help: {e}", tool.display())))?;
    let text = String::from_utf8_lossy(&help.stdout);
    if !text.lines().any(|l| l.trim_start().starts_with("vectest")) {
        return Err(Problem::Skipped(
            "aio-tools has no vectest subcommand yet (not built yet)".into(),
        ));
    }
    if let Some(serial) = &v.serial {
        // Through the node's device number, not its name: the check is
        // about what writing to this path would overwrite.
        use std::os::unix::fs::FileTypeExt as _;
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(&v.device)
            .map_err(|e| Problem::Failed(format!("{}: {e}", v.device.display())))?;
        if !meta.file_type().is_block_device() {
            return Err(Problem::Failed(format!(
                "{} is not a block device",
                v.device.display()
            )));
        }
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        let sysdev = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/device"));
        // VPD page 0x80 is 4 header bytes then the serial number.
        let vpd = fs::read(sysdev.join("vpd_pg80")).unwrap_or_default();
        let found = String::from_utf8_lossy(vpd.get(4..).unwrap_or_default())
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string();
        if found != *serial {
            return Err(Problem::Failed(format!(
                "{} has serial {found:?}, not the scratch disk's {serial:?}; \
                 refusing to write to it",
                v.device.display()
            )));
        }
    }
    Ok(Location::Vectest {
        tool: tool.clone(),
        device: v.device.clone(),
    })
}

/// Runs `<tool> vectest <device>`; its exit status is the verdict.
fn run_vectest(
    tool: &Path,
    device: &Path,
    logs: &Path,
    timeout: Duration,
) -> Result<String, Problem> {
    run_tool(
        tool,
        &[OsStr::new("vectest"), device.as_os_str()],
        &logs.join("vectest.log"),
        timeout,
    )
}

/// Runs `aio-tools` with `args`, its output in `log`; the verdict line
/// ("PASS: ..." / "FAIL: ...", else the last line) and the exit status.
fn run_tool(
    tool: &Path,
    args: &[&OsStr],
    log: &Path,
    timeout: Duration,
) -> Result<String, Problem> {
    let out = syscall("creating a log", File::create(log), &[])?;
    let err = syscall("creating a log", out.try_clone(), &[])?;
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    out!("    $ aio-tools {}", shown.join(" "));
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env_remove(DIR_VAR)
        .env_remove(DEVICE_VAR)
        .stdout(out)
        .stderr(err);
    let waited = proc::run(&mut cmd, Some(timeout));
    let text = fs::read_to_string(log).unwrap_or_default();
    for line in text.lines().take(60) {
        out!("      {line}");
    }
    let last = text
        .lines()
        .find(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
        .to_string();
    match waited {
        Ok(Wait::Exited(s)) if s.success() => Ok(last),
        Ok(Wait::Exited(s)) => Err(Problem::Failed(format!(
            "aio-tools {} failed ({}): {last}",
            shown.join(" "),
            proc::describe(&s)
        ))),
        Ok(Wait::TimedOut) => Err(Problem::Failed(format!(
            "aio-tools {} killed after {} s",
            shown.join(" "),
            timeout.as_secs()
        ))),
        Ok(Wait::Interrupted) => Err(Problem::Interrupted),
        Err(e) => Err(Problem::Failed(format!("cannot run aio-tools: {e}"))),
    }
}

/// `aio-tools vectest` where a row's tests ran: in a directory a file,
/// buffered and with `O_DIRECT` (a filesystem that refuses `O_DIRECT` is
/// reported with the errno `open(2)` gave); on a raw device the device.
fn vectest_rows(
    tool: &Path,
    loc: &Location,
    logs: &Path,
    name: &str,
    timeout: Duration,
) -> Result<String, Problem> {
    let small = ["--size", "16M", "--passes", "1", "--max-segments", "256"].map(OsStr::new);
    match loc {
        Location::Dir(dir) => {
            let file = dir.join("vectest.dat");
            let mut verdicts = Vec::new();
            for mode in ["--buffered", "--direct"] {
                let mut args = vec![OsStr::new("vectest"), file.as_os_str(), OsStr::new(mode)];
                args.extend(small);
                let log = logs.join(format!("{name}-vectest{mode}.log"));
                let what = &mode[2..];
                match run_tool(tool, &args, &log, timeout) {
                    Ok(_) => verdicts.push(format!("{what} pass")),
                    Err(Problem::Failed(msg))
                        if msg.contains("does not support O_DIRECT (EINVAL)") =>
                    {
                        verdicts.push(format!("{what} unsupported [EINVAL]"))
                    }
                    Err(e) => return Err(e),
                }
            }
            let _ = fs::remove_file(&file);
            Ok(format!("vectest {}", verdicts.join(", ")))
        }
        Location::Device(dev) => {
            // --force: the tests before it leave data that may look like a signature.
            let mut args = vec![
                OsStr::new("vectest"),
                dev.as_os_str(),
                OsStr::new("--force"),
            ];
            args.extend(small);
            run_tool(
                tool,
                &args,
                &logs.join(format!("{name}-vectest.log")),
                timeout,
            )?;
            Ok("vectest direct pass".into())
        }
        Location::Plain | Location::Vectest { .. } => Ok("no vectest row".into()),
    }
}

/// `cargo build -p aio-tools`: the binary the vectest rows run.
fn build_tool(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let status = Command::new(proc::cargo())
        .current_dir(root)
        .args(["build", "--quiet", "-p", "aio-tools"])
        .status()
        .map_err(|e| format!("cannot run cargo build -p aio-tools: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build -p aio-tools failed ({})",
            proc::describe(&status)
        ));
    }
    Ok(target_dir.join("debug/aio-tools"))
}

/// One test executable cargo built.
pub struct TestBin {
    label: String,
    path: PathBuf,
    manifest_dir: PathBuf,
}

impl TestBin {
    /// For the VM's plan file.
    pub fn to_json(&self) -> Value {
        json!({
            "label": self.label,
            "path": self.path.display().to_string(),
            "manifest_dir": self.manifest_dir.display().to_string(),
        })
    }

    /// The executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The package's directory, where it runs (as under `cargo test`).
    pub fn manifest_dir(&self) -> &Path {
        &self.manifest_dir
    }

    /// The same test binary, found at other paths (inside the VM).
    pub fn at(&self, path: PathBuf, manifest_dir: PathBuf) -> TestBin {
        TestBin {
            label: self.label.clone(),
            path,
            manifest_dir,
        }
    }

    /// Back from the plan file.
    pub fn from_json(v: &Value) -> Option<TestBin> {
        Some(TestBin {
            label: v["label"].as_str()?.to_string(),
            path: PathBuf::from(v["path"].as_str()?),
            manifest_dir: PathBuf::from(v["manifest_dir"].as_str()?),
        })
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }
}

/// Adds up libtest's "test result: ok. 3 passed; 0 failed; 1 ignored; ..." lines.
fn parse_counts(output: &str) -> Counts {
    let mut total = Counts::default();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => total.passed += n,
                    "failed" => total.failed += n,
                    "ignored" => total.ignored += n,
                    _ => {}
                }
            }
        }
    }
    total
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Package name from a cargo package id ("path+file:///w/aio-sys#0.1.0" or
/// "...#name@0.1.0").
fn package_name(id: &str) -> String {
    let (url, frag) = id.rsplit_once('#').unwrap_or((id, ""));
    match frag.split_once('@') {
        Some((name, _)) => name.to_string(),
        None => url.rsplit('/').next().unwrap_or(url).to_string(),
    }
}

/// Test binaries that change machine-wide state (a sysctl every AIO user
/// of the machine depends on) and test nothing of the filesystem: the
/// `test` step runs them once; the matrix leaves them out of its rows.
const MACHINE_WIDE: &[&str] = &["aio_max_nr"];

/// `cargo test --no-run` once; returns the test executables.
fn build_test_binaries(root: &Path, logs: &Path) -> Result<Vec<TestBin>, Problem> {
    let json_path = logs.join("build-messages.json");
    let out = syscall("creating the build log", File::create(&json_path), &[])?;
    let mut cmd = Command::new(proc::cargo());
    cmd.current_dir(root)
        .args(["test", "--no-run", "--all-features"]);
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    cmd.arg("--message-format=json-render-diagnostics")
        .stdout(out)
        .stderr(Stdio::inherit());
    out!(
        "    cargo test --no-run --all-features -p {}",
        PACKAGES.join(" -p ")
    );
    match proc::run(&mut cmd, None) {
        Ok(Wait::Exited(s)) if s.success() => {}
        Ok(Wait::Exited(s)) => {
            return Err(Problem::Failed(format!(
                "building the test binaries failed ({})",
                proc::describe(&s)
            )));
        }
        Ok(_) => return Err(Problem::Interrupted),
        Err(e) => return Err(Problem::Failed(format!("running cargo: {e}"))),
    }
    let text = syscall("reading the build log", fs::read_to_string(&json_path), &[])?;
    let mut bins = Vec::new();
    for line in text.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let is_test = msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true;
        let (Some(exe), true) = (msg["executable"].as_str(), is_test) else {
            continue;
        };
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("?");
        let name = msg["target"]["name"].as_str().unwrap_or("?");
        if kind == "test" && MACHINE_WIDE.contains(&name) {
            continue;
        }
        let package = package_name(msg["package_id"].as_str().unwrap_or("?"));
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or("."));
        bins.push(TestBin {
            label: if kind == "lib" {
                format!("{package} (lib)")
            } else {
                format!("{package} {kind}/{name}")
            },
            path: PathBuf::from(exe),
            manifest_dir: manifest.parent().unwrap_or(root).to_path_buf(),
        });
    }
    // Cargo reports them in completion order; keep the output stable.
    bins.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(bins)
}

/// Runs every test binary against `loc`; fails if any fails.
fn run_binaries(
    bins: &[TestBin],
    loc: &Location,
    logs: &Path,
    row: &str,
    timeout: Duration,
    counts: &mut Counts,
) -> Result<(), Problem> {
    let var = loc.var();
    let mut failures = Vec::new();
    for (i, bin) in bins.iter().enumerate() {
        let log = logs.join(format!("{row}-{i}.log"));
        let out = syscall("creating a test log", File::create(&log), &[])?;
        let err = syscall("creating a test log", out.try_clone(), &[])?;
        let mut cmd = Command::new(&bin.path);
        cmd.current_dir(&bin.manifest_dir)
            .env("CARGO_MANIFEST_DIR", &bin.manifest_dir)
            .env_remove(DIR_VAR)
            .env_remove(DEVICE_VAR)
            .stdout(out)
            .stderr(err);
        if let Some((var, value)) = var {
            cmd.env(var, value);
        }
        let started = Instant::now();
        let waited = proc::run(&mut cmd, Some(timeout));
        let secs = started.elapsed().as_secs_f64();
        let got = parse_counts(&fs::read_to_string(&log).unwrap_or_default());
        counts.add(got);
        let verdict = match waited {
            Ok(Wait::Exited(s)) if s.success() => None,
            Ok(Wait::Exited(s)) => Some(proc::describe(&s)),
            Ok(Wait::TimedOut) => Some(format!("killed after {} s", timeout.as_secs())),
            Ok(Wait::Interrupted) => return Err(Problem::Interrupted),
            Err(e) => Some(format!("cannot run: {e}")),
        };
        out!(
            "    {:<32} {} ({} passed, {} failed, {} ignored) {secs:.1}s",
            bin.label,
            if verdict.is_none() { "ok  " } else { "FAIL" },
            got.passed,
            got.failed,
            got.ignored
        );
        if let Some(why) = verdict {
            out!("      --- last lines of {} ---", log.display());
            for line in tail(&log, 40).lines() {
                out!("      {line}");
            }
            failures.push(format!("{}: {why}", bin.label));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Problem::Failed(failures.join("; ")))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Pass,
    Fail,
    Unsupported,
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Unsupported => "unsupported",
            Status::Skipped => "skipped",
        }
    }
}

struct Row {
    name: &'static str,
    class: &'static str,
    status: Status,
    errno: Option<String>,
    detail: String,
    location: Option<(&'static str, PathBuf)>,
    counts: Counts,
    binaries: usize,
    secs: f64,
}

fn run_target(
    target: &Target,
    work: &Path,
    logs: &Path,
    bins: &[TestBin],
    opts: &Options,
    tool: Option<&Path>,
) -> (Row, bool) {
    out!("--- {} ({})", target.name, target.class());
    let started = Instant::now();
    let mut row = Row {
        name: target.name,
        class: target.class(),
        status: Status::Pass,
        errno: None,
        detail: String::new(),
        location: None,
        counts: Counts::default(),
        binaries: bins.len(),
        secs: 0.0,
    };
    let mut cleanup = Cleanup::new();
    let dir = work.join(target.name);
    let result = fs::create_dir(&dir)
        .map_err(|e| Problem::Failed(format!("creating {}: {e}", dir.display())))
        .and_then(|()| {
            let owned = dir.clone();
            cleanup.push(format!("removing {}", dir.display()), move || {
                remove_dir_safely(&owned)
            });
            prepare(target, &dir, logs, opts.vectest.as_ref(), &mut cleanup)
        })
        .and_then(|loc| {
            if let Location::Vectest { tool, device } = &loc {
                row.binaries = 0;
                return run_vectest(tool, device, logs, opts.timeout);
            }
            match loc.var() {
                Some((var, value)) => {
                    row.location = Some((var, value.to_path_buf()));
                    out!("    {var}={}", value.display());
                }
                None => out!("    neither {DIR_VAR} nor {DEVICE_VAR}: the tests use a temp dir"),
            }
            run_binaries(bins, &loc, logs, target.name, opts.timeout, &mut row.counts)?;
            let ran = format!("{} tests ran", row.counts.passed + row.counts.failed);
            match tool {
                Some(tool) => vectest_rows(tool, &loc, logs, target.name, opts.timeout)
                    .map(|v| format!("{ran}; {v}")),
                None => Ok(ran),
            }
        });
    let cleanup_errors = cleanup.finish();
    let mut interrupted = false;
    match result {
        Ok(detail) => row.detail = detail,
        Err(Problem::Unsupported { errno, what }) => {
            row.status = Status::Unsupported;
            row.errno = Some(sys::errno_name(errno));
            row.detail = what;
        }
        Err(Problem::Skipped(why)) => {
            row.status = Status::Skipped;
            row.detail = why;
        }
        Err(Problem::Failed(why)) => {
            row.status = Status::Fail;
            row.detail = why;
        }
        Err(Problem::Interrupted) => {
            row.status = Status::Fail;
            row.detail = "interrupted".into();
            interrupted = true;
        }
    }
    if !cleanup_errors.is_empty() {
        row.status = Status::Fail;
        let _ = write!(
            row.detail,
            "; cleanup failed: {}",
            cleanup_errors.join("; ")
        );
    }
    row.secs = started.elapsed().as_secs_f64();
    out!("    => {} {}", row.status.as_str(), row.detail);
    (row, interrupted)
}

/// The pid in a path component "aio-fsmatrix-<pid>-...", if that process is
/// gone.
fn dead_owner(path: &Path) -> Option<u32> {
    path.components().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        let pid: u32 = s.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()?;
        (!sys::pid_alive(pid)).then_some(pid)
    })
}

/// Removes what a killed earlier run left behind: its mounts, its loop
/// devices, its directories.
fn sweep_stale(tmp: &Path) {
    let mut mounts: Vec<PathBuf> = sys::mount_points()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| dead_owner(m).is_some())
        .collect();
    // Deepest first.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        out!(
            "    stale mount from a dead run: unmounting {}",
            m.display()
        );
        if let Err(e) = sys::unmount(&m) {
            err!("xtask: unmounting {}: {e}", m.display());
        }
    }
    for entry in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if dead_owner(Path::new(backing.trim())).is_some() {
            let dev = Path::new("/dev").join(&name);
            out!(
                "    stale loop device from a dead run: detaching {}",
                dev.display()
            );
            if let Err(e) = sys::detach_path(&dev) {
                err!("xtask: detaching {}: {e}", dev.display());
            }
        }
    }
    for entry in fs::read_dir(tmp).into_iter().flatten().flatten() {
        let path = entry.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX))
            && dead_owner(&path).is_some()
        {
            out!(
                "    stale directory from a dead run: removing {}",
                path.display()
            );
            if let Err(e) = remove_dir_safely(&path) {
                err!("xtask: {e}");
            }
        }
    }
}

fn lock() -> Result<sys::Lock, Problem> {
    let dir = if Path::new("/run/lock").is_dir() {
        PathBuf::from("/run/lock")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join("aio-xtask-fs-matrix.lock");
    let mut said = false;
    loop {
        match sys::Lock::try_take(&path) {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) if !said => {
                out!("    waiting for another fs-matrix run ({})", path.display());
                said = true;
            }
            Ok(None) => {}
            Err(e) => return Err(Problem::Failed(format!("locking {}: {e}", path.display()))),
        }
        if proc::interrupted() {
            return Err(Problem::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Cargo's target directory of the workspace (`CARGO_TARGET_DIR` if set).
pub fn target_dir() -> Result<PathBuf, String> {
    cargo_target_dir(&proc::workspace_root())
}

pub fn cargo_target_dir(root: &Path) -> Result<PathBuf, String> {
    let out = Command::new(proc::cargo())
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed ({})",
            proc::describe(&out.status)
        ));
    }
    let meta: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("parsing cargo metadata: {e}"))?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata has no target_directory".into())
}

/// The guest's (or host's) kernel release.
fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn format_table(rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "fs matrix on Linux {}", kernel_release());
    let _ = writeln!(
        t,
        "{:<8} {:<12} {:<11} {:>4} {:>6} {:>6} {:>7} {:>7}  detail",
        "target", "kind", "status", "ran", "passed", "failed", "ignored", "time"
    );
    for r in rows {
        let line = format!(
            "{:<8} {:<12} {:<11} {:>4} {:>6} {:>6} {:>7} {:>6.1}s  {}{}",
            r.name,
            r.class,
            r.status.as_str(),
            r.counts.passed + r.counts.failed,
            r.counts.passed,
            r.counts.failed,
            r.counts.ignored,
            r.secs,
            r.errno
                .as_deref()
                .map(|e| format!("[{e}] "))
                .unwrap_or_default(),
            r.detail
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" / ")
        );
        let _ = writeln!(t, "{}", line.trim_end());
    }
    t
}

fn to_json(rows: &[Row], bins: &[TestBin]) -> Value {
    json!({
        "kernel": kernel_release(),
        "contract": { "filesystem": DIR_VAR, "block device": DEVICE_VAR },
        "test_binaries": bins.iter().map(|b| b.label.clone()).collect::<Vec<_>>(),
        "targets": rows.iter().map(|r| json!({
            "target": r.name,
            "kind": r.class,
            "status": r.status.as_str(),
            "errno": r.errno,
            "detail": r.detail,
            "env": r.location.as_ref().map(|(k, v)| json!({ *k: v.display().to_string() })),
            "tests": {
                "ran": r.counts.passed + r.counts.failed,
                "passed": r.counts.passed,
                "failed": r.counts.failed,
                "ignored": r.counts.ignored,
            },
            "binaries": r.binaries,
            "seconds": (r.secs * 10.0).round() / 10.0,
        })).collect::<Vec<_>>(),
    })
}

/// The targets `opts` asks for, or why not.
fn select(opts: &Options) -> Result<Vec<&'static Target>, Outcome> {
    let unknown: Vec<&String> = opts
        .only
        .iter()
        .filter(|n| !TARGETS.iter().any(|t| t.name == n.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(Outcome::Failed(format!(
            "unknown target(s) {unknown:?}; known: {}",
            target_names().join(", ")
        )));
    }
    Ok(TARGETS
        .iter()
        .filter(|t| {
            if opts.only.is_empty() {
                t.default
            } else {
                opts.only.iter().any(|n| n == t.name)
            }
        })
        .collect())
}

/// Root and loop devices, or why the matrix cannot run here.
fn check_privileges() -> Result<(), Outcome> {
    let skip = |msg: String| {
        if proc::is_ci() {
            Outcome::Failed(format!("{msg} (required in CI)"))
        } else {
            Outcome::Skipped(msg)
        }
    };
    if !proc::is_root() {
        return Err(skip(
            "needs root for loop devices, mkfs and mount; run as root".into(),
        ));
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err(skip(
            "no /dev/loop-control: this kernel or container has no loop devices".into(),
        ));
    }
    Ok(())
}

/// `cargo test --no-run` of the matrix's packages, for a run elsewhere (the
/// VM of `cargo xtask kernel test`); `logs` gets cargo's messages.
pub fn build_binaries(logs: &Path) -> Result<Vec<TestBin>, String> {
    match build_test_binaries(&proc::workspace_root(), logs) {
        Ok(b) => Ok(b),
        Err(Problem::Interrupted) => Err("interrupted".into()),
        Err(Problem::Failed(e) | Problem::Skipped(e) | Problem::Unsupported { what: e, .. }) => {
            Err(e)
        }
    }
}

/// Runs the matrix.
pub fn run(opts: &Options) -> Outcome {
    if let Err(o) = check_privileges() {
        return o;
    }
    let targets = match select(opts) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let root = proc::workspace_root();
    let target_dir = match cargo_target_dir(&root) {
        Ok(d) => d,
        Err(e) => return Outcome::Failed(e),
    };
    let logs = target_dir.join("fs-matrix");
    if let Err(e) = fs::create_dir_all(&logs) {
        return Outcome::Failed(format!("creating {}: {e}", logs.display()));
    }
    let bins = match build_binaries(&logs) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(e),
    };
    let tool = match build_tool(&root, &target_dir) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e),
    };
    run_rows(
        opts,
        &targets,
        &bins,
        Some(&tool),
        &logs,
        &target_dir.join("fs-matrix.json"),
        None,
    )
}

/// Runs the matrix with test binaries built elsewhere (inside the VM of
/// `cargo xtask kernel test`): logs go to `out/fs-matrix/`, the JSON to
/// `out/fs-matrix.json`, the table to `out/fs-matrix.txt`.
pub fn run_prebuilt(opts: &Options, bins: &[TestBin], out: &Path) -> Outcome {
    if let Err(o) = check_privileges() {
        return o;
    }
    let targets = match select(opts) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let logs = out.join("fs-matrix");
    if let Err(e) = fs::create_dir_all(&logs) {
        return Outcome::Failed(format!("creating {}: {e}", logs.display()));
    }
    run_rows(
        opts,
        &targets,
        bins,
        opts.vectest.as_ref().and_then(|v| v.tool.as_deref()),
        &logs,
        &out.join("fs-matrix.json"),
        Some(&out.join("fs-matrix.txt")),
    )
}

fn run_rows(
    opts: &Options,
    targets: &[&Target],
    bins: &[TestBin],
    tool: Option<&Path>,
    logs: &Path,
    json_path: &Path,
    table_path: Option<&Path>,
) -> Outcome {
    out!("    {} test binaries:", bins.len());
    for b in bins {
        out!("      {}", b.label);
    }

    let _lock = match lock() {
        Ok(l) => l,
        Err(_) => return Outcome::Failed("interrupted while waiting for the lock".into()),
    };
    let tmp = std::env::temp_dir();
    sweep_stale(&tmp);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let work = tmp.join(format!("{PREFIX}{}-{stamp}", std::process::id()));
    if let Err(e) = fs::create_dir(&work) {
        return Outcome::Failed(format!("creating {}: {e}", work.display()));
    }
    let mut top = Cleanup::new();
    let owned = work.clone();
    top.push(format!("removing {}", work.display()), move || {
        remove_dir_safely(&owned)
    });

    let mut rows = Vec::new();
    let mut interrupted = false;
    for target in targets {
        let (row, stop) = run_target(target, &work, logs, bins, opts, tool);
        rows.push(row);
        if stop || proc::interrupted() {
            interrupted = true;
            break;
        }
    }
    let top_errors = top.finish();

    let table = format_table(&rows);
    out!();
    out!("{}", table.trim_end());
    if let Some(path) = table_path {
        if let Err(e) = fs::write(path, &table) {
            err!("xtask: writing {}: {e}", path.display());
        }
    }
    let json = serde_json::to_string_pretty(&to_json(&rows, bins)).unwrap_or_default();
    match fs::write(json_path, json + "\n") {
        Ok(()) => out!("wrote {}", json_path.display()),
        Err(e) => err!("xtask: writing {}: {e}", json_path.display()),
    }

    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| r.name)
        .collect();
    let ran: u64 = rows.iter().map(|r| r.counts.passed + r.counts.failed).sum();
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    let summary = format!(
        "{} targets: {} pass, {} fail, {} unsupported, {} skipped; {ran} tests ran",
        rows.len(),
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Unsupported),
        count(Status::Skipped)
    );
    if interrupted {
        Outcome::Failed(format!("interrupted; {summary}"))
    } else if !top_errors.is_empty() {
        Outcome::Failed(format!("cleanup failed: {}", top_errors.join("; ")))
    } else if !failed.is_empty() {
        Outcome::Failed(format!("failed on {}; {summary}", failed.join(", ")))
    } else if count(Status::Skipped) > 0 {
        Outcome::Passed(format!("{summary} (skipped rows lack a tool)"))
    } else {
        Outcome::Passed(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_libtest_summaries() {
        let out = "running 2 tests\ntest a ... ok\n\
                   test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                   test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n";
        let c = parse_counts(out);
        assert_eq!((c.passed, c.failed, c.ignored), (5, 1, 1));
        assert_eq!(parse_counts("no summary").passed, 0);
    }

    #[test]
    fn package_names_from_ids() {
        assert_eq!(package_name("path+file:///w/main/aio-sys#0.1.0"), "aio-sys");
        assert_eq!(
            package_name("path+file:///w/main/tools#aio-tools@0.1.0"),
            "aio-tools"
        );
    }

    #[test]
    fn leftovers_of_live_processes_are_not_stale() {
        let mine = format!("/tmp/{PREFIX}{}-1/ext4/mnt", std::process::id());
        assert_eq!(dead_owner(Path::new(&mine)), None);
        // pid_max is at most 2^22, so this pid cannot exist.
        let dead = format!("/tmp/{PREFIX}99999999-1/ext4/mnt");
        assert_eq!(dead_owner(Path::new(&dead)), Some(99_999_999));
        assert_eq!(dead_owner(Path::new("/tmp/other-1/mnt")), None);
    }
}
