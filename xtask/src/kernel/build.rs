//! `cargo xtask kernel build`: Debian's kernel source, our configuration,
//! `make bzImage`, a cache keyed by both.
//!
//! Layout under [`cache_root`](super::cache_root):
//! - `src/linux-source-<version>/`: the unpacked source (re-unpacked when
//!   the Debian package's version changes);
//! - `build/<version>/`: the out-of-tree build (`make O=`), kept so that a
//!   changed configuration rebuilds only what changed;
//! - `<version>-<key>/`: the result (`bzImage`, `config`, `info.json`);
//!   `<key>` hashes the configuration fragment, the base configuration and
//!   the source package's version. When it exists the build is skipped.

use super::{cache_root, ensure_packages};
use crate::proc::{self, Wait};
use serde_json::{Value, json};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Our options, merged over the base configuration.
const FRAGMENT: &str = include_str!("../../kernel/aio-vm.config");
/// Its path in the repository, for messages.
const FRAGMENT_PATH: &str = "xtask/kernel/aio-vm.config";
/// The base configuration: make targets run before the fragment is merged.
const BASE: &[&str] = &["defconfig", "kvm_guest.config"];
/// Bumped when the way the kernel is built changes (not the options).
const RECIPE: &str = "1";
/// What `make bzImage` needs besides the source (Debian 12 packages).
const BUILD_PACKAGES: &[&str] = &[
    "gcc",
    "make",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "libc6-dev",
    "cpio",
    "xz-utils",
    "perl",
];

/// A built kernel.
pub struct Kernel {
    /// `make kernelrelease`, e.g. 6.12.57.
    pub release: String,
    /// The image qemu boots.
    pub bzimage: PathBuf,
}

/// FNV-1a, 64 bits: a stable hash for the cache key (std's hasher may
/// change between Rust releases).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn package_version(pkg: &str) -> Result<String, String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .map_err(|e| format!("running dpkg-query: {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !v.is_empty() {
        Ok(v)
    } else {
        Err(format!("{pkg} is not installed"))
    }
}

/// Lines of the fragment that set something: (symbol, wanted value), where
/// the value is "y" or "n" (`# CONFIG_X is not set`).
fn wanted(fragment: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(sym) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.push((sym.to_string(), "n"));
        } else if let Some(sym) = line.strip_suffix("=y") {
            if sym.starts_with("CONFIG_") {
                out.push((sym.to_string(), "y"));
            }
        }
    }
    out
}

/// The options of `fragment` that `config` (a final .config) does not have
/// as asked.
fn dropped(fragment: &str, config: &str) -> Vec<String> {
    let mut set = std::collections::HashMap::new();
    for line in config.lines() {
        if let Some((k, v)) = line.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        }
    }
    wanted(fragment)
        .into_iter()
        .filter_map(|(sym, want)| {
            let have = set.get(&sym).map(String::as_str);
            let ok = match want {
                "y" => have == Some("y"),
                _ => !matches!(have, Some("y" | "m")),
            };
            (!ok).then(|| {
                let have = have.map_or("not set".to_string(), |v| format!("={v}"));
                format!("{sym} (asked {want}, got {have})")
            })
        })
        .collect()
}

/// Runs a command, its output to `log`; the error has the log's last lines.
fn step(what: &str, cmd: &mut Command, log: &Path) -> Result<(), String> {
    let f = fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(f).stderr(f2);
    match proc::run(cmd, None) {
        Ok(Wait::Exited(s)) if s.success() => Ok(()),
        Ok(Wait::Exited(s)) => Err(format!(
            "{what} failed ({}); last lines of {}:\n{}",
            proc::describe(&s),
            log.display(),
            tail(log, 25)
        )),
        Ok(_) => Err("interrupted".into()),
        Err(e) => Err(format!("cannot run {what}: {e}")),
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn mins(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m{:02}s", s / 60, s % 60)
}

/// Bytes a directory tree takes on disk.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    total
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Unpacks /usr/src/linux-source-<v>.tar.xz unless the tree there is of
/// this package version already.
fn unpack(version: &str, pkg_version: &str, cache: &Path) -> Result<PathBuf, String> {
    let src_parent = cache.join("src");
    let tree = src_parent.join(format!("linux-source-{version}"));
    let marker = tree.join(".aio-xtask-package-version");
    if fs::read_to_string(&marker).is_ok_and(|v| v.trim() == pkg_version) {
        out!("    source: {} ({pkg_version})", tree.display());
        return Ok(tree);
    }
    let tarball = PathBuf::from(format!("/usr/src/linux-source-{version}.tar.xz"));
    if !tarball.exists() {
        return Err(format!(
            "{} is missing (linux-source-{version} is installed?)",
            tarball.display()
        ));
    }
    if tree.exists() {
        out!(
            "    removing the source of another package version: {}",
            tree.display()
        );
        fs::remove_dir_all(&tree).map_err(|e| format!("removing {}: {e}", tree.display()))?;
    }
    fs::create_dir_all(&src_parent)
        .map_err(|e| format!("creating {}: {e}", src_parent.display()))?;
    out!(
        "    unpacking {} into {}",
        tarball.display(),
        src_parent.display()
    );
    let started = Instant::now();
    let log = cache.join(format!("unpack-{version}.log"));
    let _ = fs::remove_file(&log);
    step(
        "tar",
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src_parent),
        &log,
    )?;
    if !tree.join("Makefile").exists() {
        return Err(format!("{} has no {}", tarball.display(), tree.display()));
    }
    fs::write(&marker, pkg_version).map_err(|e| format!("writing {}: {e}", marker.display()))?;
    out!("    unpacked in {}", mins(started.elapsed()));
    Ok(tree)
}

/// Builds the kernel of `version` unless the cache has it.
pub fn ensure(version: &str) -> Result<Kernel, String> {
    let source_pkg = format!("linux-source-{version}");
    let mut pkgs = vec![source_pkg.as_str()];
    pkgs.extend(BUILD_PACKAGES);
    ensure_packages(&pkgs)?;
    let pkg_version = package_version(&source_pkg)?;

    let key_input = format!(
        "recipe {RECIPE}\nbase {}\nsource {source_pkg} {pkg_version}\n{FRAGMENT}",
        BASE.join(" ")
    );
    let key = format!("{:016x}", fnv1a(key_input.as_bytes()));
    let cache = cache_root();
    let dest = cache.join(format!("{version}-{key}"));
    let info_path = dest.join("info.json");
    if let Ok(info) = fs::read_to_string(&info_path)
        .map_err(|_| ())
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|_| ()))
    {
        let bzimage = dest.join("bzImage");
        if bzimage.exists() {
            let release = info["release"].as_str().unwrap_or("?").to_string();
            out!(
                "    cache hit: Linux {release} ({source_pkg} {pkg_version}, {FRAGMENT_PATH} {key}) \
                 in {}, built in {}",
                dest.display(),
                info["build_seconds"]
                    .as_u64()
                    .map_or("?".into(), |s| mins(Duration::from_secs(s)))
            );
            return Ok(Kernel { release, bzimage });
        }
    }
    out!("    no cached kernel for {source_pkg} {pkg_version} + {FRAGMENT_PATH} ({key}): building");
    let started = Instant::now();
    let tree = unpack(version, &pkg_version, &cache)?;
    let build = cache.join("build").join(version);
    let stamp = build.join(".aio-xtask-package-version");
    if build.exists() && !fs::read_to_string(&stamp).is_ok_and(|v| v.trim() == pkg_version) {
        out!(
            "    removing a build tree of another source version: {}",
            build.display()
        );
        fs::remove_dir_all(&build).map_err(|e| format!("removing {}: {e}", build.display()))?;
    }
    fs::create_dir_all(&build).map_err(|e| format!("creating {}: {e}", build.display()))?;
    fs::write(&stamp, &pkg_version).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    let log = cache.join(format!("build-{version}.log"));
    let _ = fs::remove_file(&log);
    let o = format!("O={}", build.display());

    // Configure.
    out!("    make {} (in {})", BASE.join(" "), build.display());
    step(
        "make defconfig",
        Command::new("make").current_dir(&tree).arg(&o).args(BASE),
        &log,
    )?;
    let fragment_file = build.join("aio-vm.config");
    fs::write(&fragment_file, FRAGMENT)
        .map_err(|e| format!("writing {}: {e}", fragment_file.display()))?;
    out!("    merging {FRAGMENT_PATH}, make olddefconfig");
    step(
        "merge_config.sh",
        Command::new("sh")
            .current_dir(&tree)
            .arg("scripts/kconfig/merge_config.sh")
            .args(["-m", "-O"])
            .arg(&build)
            .arg(build.join(".config"))
            .arg(&fragment_file),
        &log,
    )?;
    step(
        "make olddefconfig",
        Command::new("make")
            .current_dir(&tree)
            .arg(&o)
            .arg("olddefconfig"),
        &log,
    )?;
    let config =
        fs::read_to_string(build.join(".config")).map_err(|e| format!("reading .config: {e}"))?;
    let lost = dropped(FRAGMENT, &config);
    if !lost.is_empty() {
        return Err(format!(
            "Kconfig did not keep these options of {FRAGMENT_PATH} (a dependency is missing, or \
             linux-source-{version} has no such option):\n  {}",
            lost.join("\n  ")
        ));
    }
    out!(
        "    all {} options of {FRAGMENT_PATH} are set",
        wanted(FRAGMENT).len()
    );

    // Build.
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    out!(
        "    nice make -j{jobs} bzImage (a progress line every 30 s; full log: {})",
        log.display()
    );
    let build_started = Instant::now();
    let mut compiled = 0u64;
    let mut last = String::new();
    let mut said = Instant::now();
    let mut log_file = fs::File::options()
        .append(true)
        .open(&log)
        .map_err(|e| format!("opening {}: {e}", log.display()))?;
    let mut cmd = Command::new("nice");
    cmd.current_dir(&tree)
        .args(["-n", "10", "make"])
        .arg(&o)
        .arg(format!("-j{jobs}"))
        .arg("bzImage");
    let waited = proc::run_streaming(&mut cmd, None, &mut |line| {
        use std::io::Write as _;
        let _ = writeln!(log_file, "{line}");
        let t = line.trim_start();
        if t.starts_with("CC ")
            || t.starts_with("AS ")
            || t.starts_with("LD ")
            || t.starts_with("AR ")
        {
            compiled += 1;
            last = t.split_whitespace().collect::<Vec<_>>().join(" ");
        }
        if t.contains("error:") || t.starts_with("make") && t.contains("Error") {
            out!("      {line}");
        }
        if said.elapsed() >= Duration::from_secs(30) {
            said = Instant::now();
            out!(
                "      [{}] {compiled} files built; now: {last}",
                mins(build_started.elapsed())
            );
        }
    });
    match waited {
        Ok(Wait::Exited(s)) if s.success() => {}
        Ok(Wait::Exited(s)) => {
            return Err(format!(
                "make bzImage failed ({}); last lines of {}:\n{}",
                proc::describe(&s),
                log.display(),
                tail(&log, 30)
            ));
        }
        Ok(_) => return Err("interrupted".into()),
        Err(e) => return Err(format!("cannot run make: {e}")),
    }
    let release = Command::new("make")
        .current_dir(&tree)
        .args(["-s", &o, "kernelrelease"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let built = build.join("arch/x86/boot/bzImage");

    // Into the cache: a temp dir renamed into place, so a killed run never
    // leaves a half-filled entry that looks complete.
    let tmp = cache.join(format!(".{version}-{key}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    fs::copy(&built, tmp.join("bzImage"))
        .map_err(|e| format!("copying {}: {e}", built.display()))?;
    fs::write(tmp.join("config"), &config).map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let info = json!({
        "version": version,
        "release": release,
        "source_package": source_pkg,
        "source_package_version": pkg_version,
        "key": key,
        "base": BASE,
        "fragment": FRAGMENT_PATH,
        "build_seconds": took.as_secs(),
        "jobs": jobs,
    });
    fs::write(
        tmp.join("info.json"),
        serde_json::to_string_pretty(&info).unwrap_or_default() + "\n",
    )
    .map_err(|e| e.to_string())?;
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest).map_err(|e| format!("renaming into {}: {e}", dest.display()))?;
    // Entries of this version under other keys are outdated configurations.
    let dest_name = dest.file_name().unwrap_or_default().to_os_string();
    for e in fs::read_dir(&cache).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name != dest_name && name.to_string_lossy().starts_with(&format!("{version}-")) {
            out!("    removing the outdated {}", e.path().display());
            if let Err(err) = fs::remove_dir_all(e.path()) {
                err!("xtask: removing {}: {err}", e.path().display());
            }
        }
    }
    let bzimage = dest.join("bzImage");
    let size = fs::metadata(&bzimage).map_or(0, |m| m.len());
    out!(
        "    built Linux {release} in {} (bzImage {:.1} MiB); disk: source {}, build tree {}",
        mins(took),
        size as f64 / (1u64 << 20) as f64,
        gib(disk_usage(&tree)),
        gib(disk_usage(&build))
    );
    out!("    cached in {}", dest.display());
    Ok(Kernel { release, bzimage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_options_are_parsed() {
        let w = wanted("# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n");
        assert_eq!(w, vec![("CONFIG_A".into(), "y"), ("CONFIG_B".into(), "n")]);
    }

    #[test]
    fn dropped_options_are_found() {
        let frag = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n# CONFIG_D is not set\n";
        let config = "CONFIG_A=y\nCONFIG_B=m\nCONFIG_C=y\n# CONFIG_D is not set\n";
        assert_eq!(
            dropped(frag, config),
            vec![
                "CONFIG_B (asked y, got =m)".to_string(),
                "CONFIG_C (asked n, got =y)".to_string()
            ]
        );
    }

    #[test]
    fn the_fragment_asks_for_every_filesystem() {
        let w = wanted(FRAGMENT);
        for sym in [
            "CONFIG_AIO",
            "CONFIG_EXT2_FS",
            "CONFIG_EXT3_FS",
            "CONFIG_EXT4_FS",
            "CONFIG_XFS_FS",
            "CONFIG_BTRFS_FS",
            "CONFIG_JFS_FS",
            "CONFIG_REISERFS_FS",
            "CONFIG_NFS_FS",
            "CONFIG_NFSD",
            "CONFIG_TMPFS",
            "CONFIG_FUSE_FS",
            "CONFIG_SCSI_VIRTIO",
            "CONFIG_BLK_DEV_SD",
            "CONFIG_9P_FS",
            "CONFIG_ZRAM",
            "CONFIG_BLK_DEV_LOOP",
        ] {
            assert!(w.iter().any(|(s, v)| s == sym && *v == "y"), "{sym}");
        }
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
