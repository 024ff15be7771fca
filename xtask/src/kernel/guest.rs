//! `xtask kernel guest`: PID 1 of the VM of `cargo xtask kernel test`.
//!
//! The root filesystem is the host's, read-only over 9p. This program
//! mounts what a system needs (proc, sysfs, devtmpfs, tmpfs where programs
//! write: /run, /var/tmp, /var/lib/nfs; an ext4 on `sda` for /tmp), the
//! results directory, the programs and the source (the host's paths of
//! those may lie under the guest's own /tmp or /run),
//! brings up the loopback interface (for NFS), reads the plan the host
//! wrote, runs the fs matrix with the extra rows (jfs, reiserfs, nfs, plain,
//! vectest) and powers the VM off. Whatever happens, it ends in a power-off
//! (or a panic, which `panic=-1` and qemu's `-no-reboot` also turn into the
//! end of qemu), so the host never waits for a guest that is stuck here.

use super::vm::{
    GUEST_PROGRAMS, GUEST_SOURCE, PROGRAMS_TAG, RESULTS_TAG, SCRATCH_SERIAL, SOURCE_TAG,
};
use crate::fsmatrix::{self, TestBin, Vectest};
use crate::{Outcome, sys};
use serde_json::{Value, json};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const RESULTS: &str = "/run/aio-results";

fn mount(source: &str, target: &str, fstype: &str, data: Option<&str>) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    match sys::mount(source, Path::new(target), fstype, data) {
        Ok(()) => Ok(()),
        // The kernel mounted devtmpfs on /dev itself (DEVTMPFS_MOUNT).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount -t {fstype} {source} {target}: {e}")),
    }
}

/// `ip link set lo up`, with the two ioctls it makes.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero ifreq is valid (name and union are plain bytes).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a live ifreq the kernel reads and writes; `fd` is ours.
    let mut r = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    if r == 0 {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above.
        r = unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) };
    }
    let e = io::Error::last_os_error();
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    if r == 0 { Ok(()) } else { Err(e) }
}

/// Scans the virtio-scsi targets one by one (the kernel was told not to,
/// `scsi_mod.scan=manual`), waiting for each disk's name: target 0 becomes
/// `sda`, target 1 `sdb`, whatever order parallel sd probes would finish in.
fn scan_disks() -> Result<(), String> {
    let hosts =
        fs::read_dir("/sys/class/scsi_host").map_err(|e| format!("/sys/class/scsi_host: {e}"))?;
    let host = hosts
        .flatten()
        .map(|e| e.path())
        .find(|h| fs::read_to_string(h.join("proc_name")).is_ok_and(|n| n.trim() == "virtio_scsi"))
        .ok_or("no virtio_scsi host")?;
    for (target, name) in [(0, "sda"), (1, "sdb")] {
        fs::write(host.join("scan"), format!("0 {target} 0"))
            .map_err(|e| format!("scanning SCSI target {target}: {e}"))?;
        let block = Path::new("/sys/block").join(name);
        let started = std::time::Instant::now();
        while !block.exists() {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("SCSI target {target} did not become {name}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// /tmp on an ext4 on `sda`, like the disk-backed /tmp of a Debian 12 host
/// (the temp dir is where `plain` runs and what some probes look at; a
/// tmpfs there would test tmpfs twice and differ from the host). The fs
/// matrix's images live there too.
fn system_disk() -> Result<(), String> {
    let out = std::process::Command::new("/sbin/mkfs.ext4")
        .args(["-q", "-F", "-L", "aio-tmp", "/dev/sda"])
        .output()
        .map_err(|e| format!("running mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 /dev/sda failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    mount("/dev/sda", "/tmp", "ext4", None)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions("/tmp", fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod 1777 /tmp: {e}"))
}

fn setup() -> Result<(), String> {
    mount("proc", "/proc", "proc", None)?;
    mount("sysfs", "/sys", "sysfs", None)?;
    mount("devtmpfs", "/dev", "devtmpfs", None)?;
    for dir in ["/run", "/var/tmp", "/var/lib/nfs", "/dev/shm"] {
        mount("tmpfs", dir, "tmpfs", Some("mode=1777"))?;
    }
    for dir in [
        "/run/lock",
        "/var/lib/nfs/rpc_pipefs",
        "/var/lib/nfs/v4recovery",
    ] {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
    }
    for (tag, dir) in [
        (RESULTS_TAG, RESULTS),
        (PROGRAMS_TAG, GUEST_PROGRAMS),
        (SOURCE_TAG, GUEST_SOURCE),
    ] {
        mount(
            tag,
            dir,
            "9p",
            Some("trans=virtio,version=9p2000.L,msize=262144,access=any"),
        )?;
    }
    loopback_up().map_err(|e| format!("bringing up lo: {e}"))?;
    scan_disks()?;
    system_disk()?;
    // SAFETY: single-threaded at this point; nothing reads the environment
    // concurrently.
    unsafe {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        std::env::set_var("HOME", "/tmp");
        std::env::set_var("TMPDIR", "/tmp");
        std::env::remove_var("CI");
        // Software emulation runs the hostile-caller programs tens of
        // times slower: fewer of them, and a hang bound to match.
        std::env::set_var("AIO_HOSTILE_CASES", "8");
        std::env::set_var("AIO_HOSTILE_HANG_SECS", "900");
    }
    Ok(())
}

fn run() -> Result<Outcome, String> {
    setup()?;
    let plan_path = Path::new(RESULTS).join("plan.json");
    let plan: Value = fs::read_to_string(&plan_path)
        .map_err(|e| format!("reading {}: {e}", plan_path.display()))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("parsing the plan: {e}")))?;
    if let Some([cur, max]) = plan["nofile"].as_array().map(|a| {
        [
            a.first().and_then(Value::as_u64),
            a.get(1).and_then(Value::as_u64),
        ]
    }) {
        let r = libc::rlimit {
            rlim_cur: cur.unwrap_or(1024),
            rlim_max: max.unwrap_or(4096),
        };
        // SAFETY: setrlimit(2) reads the struct we own; PID 1 is root.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            err!("guest: setrlimit(NOFILE): {}", io::Error::last_os_error());
        }
    }
    if plan["ci"] == true {
        // SAFETY: as in setup.
        unsafe { std::env::set_var("CI", "true") };
    }
    let bins: Vec<TestBin> = plan["test_binaries"]
        .as_array()
        .map(|a| a.iter().filter_map(TestBin::from_json).collect())
        .unwrap_or_default();
    let only: Vec<String> = plan["only"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let opts = fsmatrix::Options {
        only,
        timeout: Duration::from_secs(plan["timeout_secs"].as_u64().unwrap_or(600)),
        vectest: Some(Vectest {
            tool: plan["aio_tools"].as_str().map(PathBuf::from),
            device: PathBuf::from(plan["vectest_device"].as_str().unwrap_or("/dev/sdb")),
            serial: Some(
                plan["vectest_serial"]
                    .as_str()
                    .unwrap_or(SCRATCH_SERIAL)
                    .to_string(),
            ),
        }),
    };
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    out!(
        "guest: Linux {} up; {} test binaries",
        release.trim(),
        bins.len()
    );
    let disks: Vec<String> = fs::read_dir("/sys/block")
        .map(|d| {
            let mut v: Vec<String> = d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("sd"))
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default();
    out!("guest: SCSI disks: {}", disks.join(" "));
    Ok(fsmatrix::run_prebuilt(&opts, &bins, Path::new(RESULTS)))
}

fn power_off() -> ! {
    // SAFETY: sync(2) and reboot(2) with a constant command; we are PID 1
    // and everything that matters has been written and unmounted.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot(2) returned: exiting PID 1 panics the kernel, which ends qemu.
    std::process::exit(1)
}

/// PID 1's main.
pub fn main() -> ExitCode {
    if std::process::id() != 1 {
        err!("`xtask kernel guest` is the init of the VM of `cargo xtask kernel test`");
        return ExitCode::from(2);
    }
    // The host takes the first console line as the sign that the guest
    // runs (the kernel prints only warnings, loglevel=4).
    out!("guest: xtask kernel guest is PID 1");
    let (ok, summary) = match run() {
        Ok(Outcome::Passed(m)) => (true, m),
        Ok(Outcome::Skipped(m)) => (true, format!("skipped: {m}")),
        Ok(Outcome::Failed(m)) => (false, m),
        Err(e) => (false, format!("guest setup failed: {e}")),
    };
    out!("guest: {} {summary}", if ok { "PASS" } else { "FAIL" });
    let status = json!({ "ok": ok, "summary": summary });
    let path = Path::new(RESULTS).join("status.json");
    if let Err(e) = fs::write(&path, status.to_string() + "\n") {
        err!("guest: writing {}: {e}", path.display());
    }
    let _ = sys::unmount(Path::new(RESULTS));
    power_off()
}
