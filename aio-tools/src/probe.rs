//! `aio-tools probe [PATH]`: what AIO can do here, and why not if it can't.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aio::probe::{Capabilities, Support};
use aio::{Errno, RwFlags};
use serde_json::{Value, json};

use crate::report::{engine_json, engine_line, errno_name, print_json, usage_error};
use crate::{Exit, Output};

/// The command's arguments.
#[derive(clap::Args)]
pub struct ProbeArgs {
    /// A file, directory or block device to check O_DIRECT and RWF_NOWAIT on
    /// (scratch files go to the directory, or the file's; a device is
    /// itself read, and the opcodes and flags are probed in the temporary
    /// directory).
    pub path: Option<PathBuf>,
}

/// An answer of the probe: from the thing it names, or why there is none.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    Yes,
    /// Refused with this errno.
    No(Errno),
    /// Not tested, and why.
    Untested(String),
}

impl From<Support> for Answer {
    fn from(s: Support) -> Answer {
        match s {
            Support::Yes => Answer::Yes,
            Support::No(e) => Answer::No(e),
        }
    }
}

impl Answer {
    /// `true`, the errno's name, or `{"untested": why}`.
    fn json(&self) -> Value {
        match self {
            Answer::Yes => json!(true),
            Answer::No(e) => json!(errno_name(e.0)),
            Answer::Untested(why) => json!({ "untested": why }),
        }
    }

    fn text(&self) -> String {
        match self {
            Answer::Yes => "yes".into(),
            Answer::No(e) => format!("no ({})", errno_name(e.0)),
            Answer::Untested(why) => format!("could not be tested: {why}"),
        }
    }
}

fn support_json(s: Support) -> Value {
    Answer::from(s).json()
}

fn support_text(s: Support) -> String {
    Answer::from(s).text()
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
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

/// What PATH is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    File,
    Device,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::File => "file",
            Kind::Device => "block device",
        }
    }
}

/// What the probe found out about PATH.
struct PathInfo<'a> {
    path: &'a Path,
    kind: Kind,
    /// (filesystem type, mount point); none for a device (its node's
    /// devtmpfs says nothing about it).
    fs: Option<(String, String)>,
    direct: Answer,
    /// Direct-I/O alignment as `aio::dio_alignment` reports it.
    alignment: Option<aio::DioAlignment>,
    nowait: Answer,
}

/// Whether `O_DIRECT` opens work at `path`: a scratch file in a directory
/// (`O_TMPFILE`, or where the filesystem has none, as FUSE, a named file
/// removed at once), the file or device itself (read-only) otherwise.
fn direct_open(path: &Path, kind: Kind) -> (Answer, Option<aio::DioAlignment>) {
    let opened = |f: std::fs::File| (Answer::Yes, aio::dio_alignment(&f).ok());
    if kind != Kind::Directory {
        return match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => opened(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (Answer::No(Errno::EINVAL), None),
            Err(e) => (
                Answer::Untested(format!(
                    "cannot open {}: {}",
                    path.display(),
                    crate::report::io_error_text(&e)
                )),
                None,
            ),
        };
    }
    if let Ok(f) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_TMPFILE)
        .open(path)
    {
        return opened(f);
    }
    // No O_TMPFILE here, or no O_DIRECT: a named file tells which.
    let name = path.join(format!(".aio-probe-direct-{}", std::process::id()));
    if let Err(e) = OpenOptions::new().write(true).create_new(true).open(&name) {
        return (
            Answer::Untested(format!(
                "cannot create a scratch file in {}: {}",
                path.display(),
                crate::report::io_error_text(&e)
            )),
            None,
        );
    }
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&name);
    let _ = std::fs::remove_file(&name);
    match direct {
        Ok(f) => opened(f),
        Err(e) => (Answer::No(errno_of(&e)), None),
    }
}

/// Whether a buffered `RWF_NOWAIT` read of the device at `path` is taken,
/// asked of the device itself through the kernel's AIO.
fn device_nowait(path: &Path) -> Answer {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return Answer::Untested(format!(
                "cannot open {}: {}",
                path.display(),
                crate::report::io_error_text(&e)
            ));
        }
    };
    let ctx = match aio::Context::builder()
        .queue_depth(1)
        .driver(aio::Driver::Kernel)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Answer::Untested(format!("no AIO context: {e}")),
    };
    let read = aio::Read::new(&file, vec![0u8; 512], 0).rw_flags(RwFlags::NOWAIT);
    match ctx.run(read).0 {
        // EAGAIN: the flag was taken, the data was not cached.
        Ok(_) => Answer::Yes,
        Err(e) => match aio::errno(&e) {
            Some(libc::EAGAIN) => Answer::Yes,
            Some(n) => Answer::No(Errno(n)),
            None => Answer::Untested(e.to_string()),
        },
    }
}

/// Runs the probe and prints it.
pub fn run(args: &ProbeArgs, out: Output) -> Exit {
    let kind = match &args.path {
        None => None,
        Some(p) => match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Some(Kind::Directory),
            Ok(m) if m.file_type().is_block_device() => Some(Kind::Device),
            Ok(_) => Some(Kind::File),
            Err(e) => {
                return usage_error("probe", out, &format!("cannot use {}: {e}", p.display()));
            }
        },
    };
    // Where the scratch file of the opcode and flag probes goes.
    let dir = match (args.path.as_deref(), kind) {
        (Some(p), Some(Kind::Directory)) => Some(p.to_path_buf()),
        (Some(p), Some(Kind::File)) => p.parent().map(Path::to_path_buf),
        _ => None,
    };
    let caps = aio::probe::probe(dir.as_deref());
    // What the auto driver does here.
    let auto = aio::Context::builder()
        .queue_depth(1)
        .build()
        .map(|ctx| ctx.kernel_unavailable());
    let path_info = args.path.as_deref().zip(kind).map(|(path, kind)| {
        let (direct, alignment) = direct_open(path, kind);
        let nowait = if kind == Kind::Device {
            device_nowait(path)
        } else if let Err(f) = caps.setup {
            Answer::Untested(format!("io_setup failed with {:?}", f.errno()))
        } else {
            match (caps.rw_flag(RwFlags::NOWAIT), &caps.incomplete) {
                (Some(s), _) => s.into(),
                (None, Some(why)) => Answer::Untested(why.clone()),
                (None, None) => Answer::Untested("not probed".into()),
            }
        };
        PathInfo {
            path,
            kind,
            fs: (kind != Kind::Device)
                .then(|| filesystem_of(path))
                .flatten(),
            direct,
            alignment,
            nowait,
        }
    });
    let pgetevents = match caps.setup {
        Ok(()) => Answer::from(caps.pgetevents),
        Err(f) => Answer::Untested(format!("io_setup failed with {:?}", f.errno())),
    };
    match out {
        Output::Json => {
            let mut v = caps_json(&caps);
            v["io_pgetevents"] = pgetevents.json();
            v["scratch_dir"] = json!(
                dir.clone()
                    .unwrap_or_else(std::env::temp_dir)
                    .display()
                    .to_string()
            );
            match &auto {
                Ok(why) => v["kernel_unavailable"] = engine_json(why.as_ref()),
                Err(e) => {
                    v["kernel_unavailable"] = Value::Null;
                    v["auto_driver_error"] = json!(e.to_string());
                }
            }
            if let Some(p) = &path_info {
                v["path"] = json!({
                    "path": p.path.display().to_string(),
                    "kind": p.kind.name(),
                    "filesystem": p.fs.as_ref().map(|f| &f.0),
                    "mount_point": p.fs.as_ref().map(|f| &f.1),
                    "o_direct": p.direct.json(),
                    "dio_alignment": p.alignment.map(|a| json!({
                        "memory": a.memory,
                        "offset": a.offset,
                        "source": format!("{:?}", a.source),
                    })),
                    "rwf_nowait": p.nowait.json(),
                });
            }
            print_json(&v);
        }
        Output::Human => print_human(
            &caps,
            &pgetevents,
            &auto,
            dir.as_deref(),
            path_info.as_ref(),
        ),
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

fn print_human(
    caps: &Capabilities,
    pgetevents: &Answer,
    auto: &std::io::Result<Option<aio::Error>>,
    dir: Option<&Path>,
    path: Option<&PathInfo<'_>>,
) {
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
    match auto {
        Ok(Some(why)) => println!("{}", engine_line(Some(why)).unwrap_or_default()),
        Ok(None) => {}
        Err(e) => println!("auto driver   cannot create a context: {e}"),
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
        let scratch = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        println!("RWF_* flags (on a scratch file in {})", scratch.display());
        for (f, s) in &caps.rw_flags {
            println!("  {:<14}  {}", format!("RWF_{f:?}"), support_text(*s));
        }
    }
    println!("io_pgetevents {}", pgetevents.text());
    if let Some(why) = &caps.incomplete {
        println!("incomplete    {why}");
    }
    if let Some(p) = path {
        println!("{} ({})", p.path.display(), p.kind.name());
        match (&p.fs, p.kind) {
            (_, Kind::Device) => {}
            (Some((t, m)), _) => println!("  filesystem  {t} (mounted at {m})"),
            (None, _) => println!("  filesystem  unknown"),
        }
        println!("  O_DIRECT    {}", p.direct.text());
        if let Some(a) = p.alignment {
            println!(
                "  alignment   memory {} bytes, offset and length {} bytes ({:?})",
                a.memory, a.offset, a.source
            );
        }
        println!("  RWF_NOWAIT  {}", p.nowait.text());
    }
}
