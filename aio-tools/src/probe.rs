//! `aio-tools probe [PATH]`: what AIO can do here, and why not if it can't.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aio::probe::{Capabilities, Support};
use aio::{Errno, RwFlags};
use serde_json::{Value, json};

use crate::{Exit, Output};

/// The command's arguments.
#[derive(clap::Args)]
pub struct ProbeArgs {
    /// A file, directory or block device to check O_DIRECT and RWF_NOWAIT on
    /// (scratch files go to the directory; devices are only read).
    pub path: Option<PathBuf>,
}

fn support_json(s: Support) -> Value {
    match s {
        Support::Yes => json!(true),
        Support::No(e) => json!(format!("{e:?}")),
    }
}

fn support_text(s: Support) -> String {
    match s {
        Support::Yes => "yes".into(),
        Support::No(e) => format!("no ({e:?})"),
    }
}

/// The mount that holds `path`: (filesystem type, mount point).
pub fn filesystem_of(path: &Path) -> Option<(String, String)> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let canon = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let fstype = post.split(' ').next()?;
            (f.get(2) == Some(&want.as_str()) && canon.starts_with(f.get(4)?))
                .then(|| (fstype.to_owned(), f[4].to_owned()))
        })
        .max_by_key(|(_, mnt)| mnt.len())
}

/// What the probe found out about PATH.
struct PathInfo<'a> {
    path: &'a Path,
    /// (filesystem type, mount point)
    fs: Option<(String, String)>,
    direct: Support,
    /// Direct-I/O alignment as `aio::dio_alignment` reports it.
    alignment: Option<aio::DioAlignment>,
}

/// Whether `O_DIRECT` opens work at `path`: a scratch file in a directory,
/// the file or device itself (read-only) otherwise.
fn direct_open(path: &Path) -> (Support, Option<aio::DioAlignment>) {
    let errno = |e: std::io::Error| Support::No(Errno(e.raw_os_error().unwrap_or(0)));
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return (errno(e), None),
    };
    let mut opts = OpenOptions::new();
    if meta.is_dir() {
        opts.read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_TMPFILE);
    } else {
        opts.read(true).custom_flags(libc::O_DIRECT);
    }
    match opts.open(path) {
        Ok(f) => (Support::Yes, aio::dio_alignment(&f).ok()),
        Err(e) => (errno(e), None),
    }
}

/// Runs the probe and prints it.
pub fn run(args: &ProbeArgs, out: Output) -> Exit {
    let dir = args.path.as_deref().and_then(|p| {
        let meta = std::fs::metadata(p).ok()?;
        if meta.is_dir() {
            Some(p.to_path_buf())
        } else if meta.file_type().is_block_device() {
            None
        } else {
            p.parent().map(Path::to_path_buf)
        }
    });
    if let Some(p) = &args.path {
        if let Err(e) = std::fs::metadata(p) {
            eprintln!("aio-tools probe: cannot use {}: {e}", p.display());
            return Exit::Usage;
        }
    }
    let caps = aio::probe::probe(dir.as_deref());
    let path_info = args.path.as_deref().map(|path| {
        let (direct, alignment) = direct_open(path);
        PathInfo {
            path,
            fs: filesystem_of(path),
            direct,
            alignment,
        }
    });
    match out {
        Output::Json => {
            let mut v = caps_json(&caps);
            if let Some(p) = &path_info {
                v["path"] = json!({
                    "path": p.path.display().to_string(),
                    "filesystem": p.fs.as_ref().map(|f| &f.0),
                    "mount_point": p.fs.as_ref().map(|f| &f.1),
                    "o_direct": support_json(p.direct),
                    "dio_alignment": p.alignment.map(|a| json!({
                        "memory": a.memory,
                        "offset": a.offset,
                        "source": format!("{:?}", a.source),
                    })),
                    "rwf_nowait": caps.rw_flag(RwFlags::NOWAIT).map(support_json),
                });
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&v).expect("JSON of plain values")
            );
        }
        Output::Human => print_human(&caps, path_info.as_ref()),
    }
    if caps.setup.is_ok() {
        Exit::Pass
    } else {
        Exit::CheckFailed
    }
}

fn caps_json(caps: &Capabilities) -> Value {
    json!({
        "kernel": caps.kernel_release,
        "aio_works": caps.setup.is_ok(),
        "setup_error": caps.setup.err().map(|f| json!({
            "errno": format!("{:?}", f.errno()),
            "advice": f.advice(),
        })),
        "aio_nr": caps.aio_nr,
        "aio_max_nr": caps.aio_max_nr,
        "seccomp_mode": caps.seccomp_mode,
        "opcodes": caps.opcodes.iter().map(|(op, s)| (format!("{op:?}"), support_json(*s)))
            .collect::<serde_json::Map<_, _>>(),
        "rw_flags": caps.rw_flags.iter().map(|(f, s)| (format!("RWF_{f:?}"), support_json(*s)))
            .collect::<serde_json::Map<_, _>>(),
        "io_pgetevents": support_json(caps.pgetevents),
        "incomplete": caps.incomplete,
    })
}

fn print_human(caps: &Capabilities, path: Option<&PathInfo<'_>>) {
    println!("kernel        {}", caps.kernel_release);
    match caps.setup {
        Ok(()) => println!("native AIO    works"),
        Err(f) => {
            println!(
                "native AIO    does not work: io_setup fails with {:?}",
                f.errno()
            );
            println!("              {}", f.advice());
        }
    }
    let num = |v: Option<u64>| v.map_or("unreadable".to_owned(), |v| v.to_string());
    println!(
        "aio-nr        {} of aio-max-nr {}",
        num(caps.aio_nr),
        num(caps.aio_max_nr)
    );
    if let Some(mode) = caps.seccomp_mode {
        let what = match mode {
            0 => "none",
            1 => "strict",
            _ => "filter (some system calls may be refused)",
        };
        println!("seccomp       {what}");
    }
    if !caps.opcodes.is_empty() {
        println!("opcodes");
        for (op, s) in &caps.opcodes {
            println!("  {:<10}  {}", format!("{op:?}"), support_text(*s));
        }
        println!("RWF_* flags (on a file in the scratch directory)");
        for (f, s) in &caps.rw_flags {
            println!("  {:<14}  {}", format!("RWF_{f:?}"), support_text(*s));
        }
    }
    println!("io_pgetevents {}", support_text(caps.pgetevents));
    if let Some(why) = &caps.incomplete {
        println!("incomplete    {why}");
    }
    if let Some(p) = path {
        println!("{}", p.path.display());
        match &p.fs {
            Some((t, m)) => println!("  filesystem  {t} (mounted at {m})"),
            None => println!("  filesystem  unknown"),
        }
        println!("  O_DIRECT    {}", support_text(p.direct));
        if let Some(a) = p.alignment {
            println!(
                "  alignment   memory {} bytes, offset and length {} bytes ({:?})",
                a.memory, a.offset, a.source
            );
        }
        println!(
            "  RWF_NOWAIT  {}",
            caps.rw_flag(RwFlags::NOWAIT)
                .map_or("not probed".into(), support_text)
        );
    }
}
