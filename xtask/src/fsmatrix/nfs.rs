//! The `nfs` row: a tmpfs exported by this machine's own kernel NFS server
//! and mounted over 127.0.0.1 with NFSv3 (no lock manager, so no statd).
//!
//! If no NFS server runs (in the VM of `cargo xtask kernel test` none
//! does), the row starts rpcbind, rpc.mountd and the kernel's nfsd threads
//! and stops them again when it ends; a server that was already running is
//! used and left alone. A kernel without nfsd or without the NFS client
//! makes the row "unsupported" with mount(2)'s ENODEV.

use super::{Cleanup, Problem, kernel_lists_fs, missing_tool, mount, syscall};
use crate::proc::{self, Wait};
use crate::sys;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NFSD_FS: &str = "/proc/fs/nfsd";
const RPCBIND_SOCK: &str = "/run/rpcbind.sock";
const PACKAGE: &str = "nfs-kernel-server";

fn tool(name: &str) -> Result<PathBuf, Problem> {
    proc::which(name).ok_or_else(|| {
        missing_tool(format!(
            "{name} is not installed (apt-get install {PACKAGE})"
        ))
    })
}

/// Runs a server tool to completion; its output goes to `log`.
fn run_tool(argv: &[&str], log: &Path) -> Result<(), Problem> {
    let exe = tool(argv[0])?;
    let out = syscall(
        "creating the nfs log",
        File::options().create(true).append(true).open(log),
        &[],
    )?;
    let err = syscall("creating the nfs log", out.try_clone(), &[])?;
    out!("    $ {}", argv.join(" "));
    let mut cmd = Command::new(exe);
    cmd.args(&argv[1..]).stdout(out).stderr(err);
    match proc::run(&mut cmd, Some(Duration::from_secs(60))) {
        Ok(Wait::Exited(s)) if s.success() => Ok(()),
        Ok(Wait::Exited(s)) => Err(Problem::Failed(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            proc::describe(&s),
            super::tail(log, 3).trim()
        ))),
        Ok(Wait::TimedOut) => Err(Problem::Failed(format!("`{}` hung", argv.join(" ")))),
        Ok(Wait::Interrupted) => Err(Problem::Interrupted),
        Err(e) => Err(Problem::Failed(format!("running {}: {e}", argv[0]))),
    }
}

/// Starts a daemon in the foreground as our child; the cleanup stops it.
fn daemon(argv: &[&str], log: &Path, cleanup: &mut Cleanup) -> Result<(), Problem> {
    let exe = tool(argv[0])?;
    let out = syscall(
        "creating the nfs log",
        File::options().create(true).append(true).open(log),
        &[],
    )?;
    let err = syscall("creating the nfs log", out.try_clone(), &[])?;
    out!("    $ {} &", argv.join(" "));
    let mut cmd = Command::new(exe);
    cmd.args(&argv[1..])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = syscall(&format!("starting {}", argv[0]), cmd.spawn(), &[])?;
    let name = argv[0].to_string();
    cleanup.push(format!("stopping {name}"), move || stop(child));
    Ok(())
}

fn stop(mut child: Child) -> std::io::Result<()> {
    let group = child.id() as i32;
    // SAFETY: kill(2) with plain integers, on the group of our own child.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    child.wait().map(|_| ())
}

fn wait_for(path: &str, secs: u64) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        if Path::new(path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The nfsd control filesystem at /proc/fs/nfsd (mounted by us if needed);
/// ENODEV when the kernel has no NFS server.
fn nfsd_fs(dir: &Path, cleanup: &mut Cleanup) -> Result<(), Problem> {
    let threads = Path::new(NFSD_FS).join("threads");
    if threads.exists() {
        return Ok(());
    }
    // Without nfsd there is no /proc/fs/nfsd to mount on: ask mount(2)
    // on a directory of our own, which also loads a module if there is one.
    if !Path::new(NFSD_FS).is_dir() {
        let probe = dir.join("nfsd-probe");
        syscall(
            "creating the probe mount point",
            fs::create_dir(&probe),
            &[],
        )?;
        let r = sys::mount("nfsd", &probe, "nfsd", None);
        if r.is_ok() {
            let _ = sys::unmount(&probe);
        }
        let _ = fs::remove_dir(&probe);
        if let Err(e) = r {
            return Err(match e.raw_os_error() {
                Some(libc::ENODEV) => Problem::Unsupported {
                    errno: libc::ENODEV,
                    what: format!("mount -t nfsd: {e} (the kernel has no NFS server)"),
                },
                _ => Problem::Failed(format!("mount -t nfsd: {e}")),
            });
        }
    }
    syscall(
        &format!("mount -t nfsd nfsd {NFSD_FS} (the kernel's NFS server)"),
        sys::mount("nfsd", Path::new(NFSD_FS), "nfsd", None),
        &[libc::ENODEV],
    )?;
    cleanup.push(format!("unmounting {NFSD_FS}"), || {
        sys::unmount(Path::new(NFSD_FS))
    });
    Ok(())
}

fn server_running() -> bool {
    fs::read_to_string(Path::new(NFSD_FS).join("threads"))
        .is_ok_and(|t| t.trim().parse::<u32>().is_ok_and(|n| n > 0))
}

/// Exports a fresh tmpfs and mounts it over NFS; returns the NFS mount.
pub(super) fn prepare(dir: &Path, mib: u64, cleanup: &mut Cleanup) -> Result<PathBuf, Problem> {
    if !kernel_lists_fs("nfsd") || !Path::new(NFSD_FS).join("threads").exists() {
        nfsd_fs(dir, cleanup)?;
    }
    let log = dir.join("nfs-server.log");
    // exportfs and mountd want their state files; a fresh /var/lib/nfs (a
    // tmpfs in the VM) has none.
    for state in ["etab", "rmtab"] {
        let path = Path::new("/var/lib/nfs").join(state);
        if !path.exists() {
            syscall(
                &format!("creating {}", path.display()),
                fs::create_dir_all("/var/lib/nfs").and_then(|()| File::create(&path).map(drop)),
                &[],
            )?;
        }
    }
    let export = dir.join("export");
    let size = format!("size={mib}m");
    mount("tmpfs", &export, "tmpfs", Some(&size), cleanup)?;
    out!("    exporting a tmpfs ({size}) at {}", export.display());

    if server_running() {
        out!("    an NFS server is running already: using it");
    } else {
        if !Path::new(RPCBIND_SOCK).exists() {
            daemon(&["rpcbind", "-f"], &log, cleanup)?;
            if !wait_for(RPCBIND_SOCK, 10) {
                return Err(Problem::Failed(format!(
                    "rpcbind did not create {RPCBIND_SOCK}: {}",
                    super::tail(&log, 3).trim()
                )));
            }
        }
        daemon(&["rpc.mountd", "-F"], &log, cleanup)?;
        run_tool(&["rpc.nfsd", "4"], &log)?;
        let log2 = log.clone();
        cleanup.push("stopping the nfsd threads".into(), move || {
            run_tool(&["rpc.nfsd", "0"], &log2).map_err(|_| {
                std::io::Error::other(format!("rpc.nfsd 0 failed: {}", super::tail(&log2, 3)))
            })
        });
    }

    // tmpfs has no UUID: an export needs an fsid. The pid keeps two runs
    // (host and VM, or two hosts' runs) apart.
    let client_spec = format!("127.0.0.1:{}", export.display());
    let options = format!(
        "rw,sync,no_root_squash,insecure,no_subtree_check,fsid={}",
        100_000 + std::process::id()
    );
    run_tool(&["exportfs", "-i", "-o", &options, &client_spec], &log)?;
    let (log2, spec2) = (log.clone(), client_spec.clone());
    cleanup.push(format!("exportfs -u {client_spec}"), move || {
        run_tool(&["exportfs", "-u", &spec2], &log2)
            .map_err(|_| std::io::Error::other(super::tail(&log2, 3)))
    });

    let mnt = dir.join("mnt");
    let data = "vers=3,nolock,proto=tcp,mountproto=tcp,addr=127.0.0.1,mountaddr=127.0.0.1";
    mount(&client_spec, &mnt, "nfs", Some(data), cleanup)?;
    out!(
        "    mounted {client_spec} (nfs, {data}) at {}",
        mnt.display()
    );
    Ok(mnt)
}
