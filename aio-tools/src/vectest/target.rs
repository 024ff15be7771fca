//! What vectest is about to write on, and whether it may.
//!
//! A block device is refused when it is mounted (or a partition of it is),
//! held by another device (device-mapper, md, bcache: `/sys/block/*/holders`),
//! opened exclusively elsewhere, or carries a filesystem or partition-table
//! signature — unless the user says `--force`. A loop device is also
//! refused when its backing file is mounted through another loop device.
//!
//! An existing regular file is refused, unless the user says `--force`, when
//! it backs a loop device, is read-only, carries a signature, or holds data
//! that vectest did not write (see [`written_by_vectest`]); and refused
//! even then when it backs a loop device that is mounted.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::pattern::written_by_vectest;

/// A signature found on a device, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// What it is: "ext4 filesystem", "GPT partition table", ...
    pub kind: &'static str,
    /// Byte offset of the magic.
    pub offset: u64,
}

/// How far into a device signatures are looked for (btrfs's superblock
/// sits at 64 KiB).
pub const PROBE_LEN: usize = 68 * 1024;

/// Recognises the signatures at the start of a device (`head` holds its
/// first bytes, at least [`PROBE_LEN`] when the device is that large), with
/// `sector` the logical block size (where GPT's header sits).
pub fn signatures(head: &[u8], sector: u64) -> Vec<Signature> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let le32 = |off: usize| {
        head.get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let mut found: Vec<Signature> = Vec::new();
    let push = |found: &mut Vec<Signature>, kind, offset: usize| {
        found.push(Signature {
            kind,
            offset: offset as u64,
        })
    };

    // ext2/3/4: superblock at 1024, s_magic 0xEF53 at +56; the journal and
    // the ext4-only incompatible features tell the generations apart.
    if at(1024 + 56, &[0x53, 0xef]) {
        let compat = le32(1024 + 92).unwrap_or(0);
        let incompat = le32(1024 + 96).unwrap_or(0);
        const HAS_JOURNAL: u32 = 0x4;
        const EXT4_INCOMPAT: u32 = 0x40 | 0x80 | 0x200 | 0x8000 | 0x10000; // extents, 64bit, flex_bg, inline data, encrypt
        let kind = if incompat & EXT4_INCOMPAT != 0 {
            "ext4 filesystem"
        } else if compat & HAS_JOURNAL != 0 {
            "ext3 filesystem"
        } else {
            "ext2 filesystem"
        };
        push(&mut found, kind, 1024 + 56);
    }
    if at(0, b"XFSB") {
        push(&mut found, "xfs filesystem", 0);
    }
    if at(65536 + 64, b"_BHRfS_M") {
        push(&mut found, "btrfs filesystem", 65536 + 64);
    }
    for page in [4096usize, 8192, 16384, 65536] {
        if at(page - 10, b"SWAPSPACE2") || at(page - 10, b"SWAP-SPACE") {
            push(&mut found, "swap area", page - 10);
        }
    }
    if at(0, b"LUKS\xba\xbe") {
        push(&mut found, "LUKS encrypted volume", 0);
    }
    if at(0, b"SKUL\xba\xbe") {
        push(&mut found, "LUKS2 secondary header", 0);
    }
    for off in [0usize, 512, 1024, 1536] {
        if at(off + 24, b"LVM2 001") && at(off, b"LABELONE") {
            push(&mut found, "LVM2 physical volume", off);
        }
    }
    if le32(4096) == Some(0xa92b_4efc) {
        push(&mut found, "Linux software RAID (md) member", 4096);
    }
    if at(3, b"NTFS    ") {
        push(&mut found, "NTFS filesystem", 3);
    }
    if at(0x52, b"FAT32   ") || at(0x36, b"FAT16   ") || at(0x36, b"FAT12   ") {
        push(&mut found, "FAT filesystem", 0x36);
    }
    if at(0x8001, b"CD001") {
        push(&mut found, "ISO 9660 filesystem", 0x8001);
    }
    let gpt = [sector as usize, 512, 4096]
        .into_iter()
        .find(|&off| at(off, b"EFI PART"));
    if let Some(off) = gpt {
        push(&mut found, "GPT partition table", off);
    } else if at(510, &[0x55, 0xaa]) && !at(0, b"XFSB") {
        // FAT and NTFS boot sectors end in 55 AA too; report the table only
        // when no filesystem explains it.
        if !found
            .iter()
            .any(|s| s.kind.contains("NTFS") || s.kind.contains("FAT"))
        {
            push(&mut found, "MBR partition table", 510);
        }
    }
    found
}

/// The kernel's name of a block device node ("sdb", "loop3").
fn sysfs_dir(rdev: u64) -> PathBuf {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    PathBuf::from(format!("/sys/dev/block/{major}:{minor}"))
}

/// `major:minor` of a device and of each of its partitions.
fn device_numbers(sys: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dev) = std::fs::read_to_string(sys.join("dev")) {
        out.push(dev.trim().to_owned());
    }
    for part in partitions(sys) {
        if let Ok(dev) = std::fs::read_to_string(part.join("dev")) {
            out.push(dev.trim().to_owned());
        }
    }
    out
}

fn partitions(sys: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("partition").exists())
        .collect()
}

/// What an existing regular file is or holds, that vectest overwrites only
/// with `--force`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// It is the backing file of these loop devices (`/dev/loop3`).
    BacksLoop(Vec<String>),
    /// It is read-only (these permission bits).
    ReadOnly(u32),
    /// It carries these signatures.
    Signatures(Vec<Signature>),
    /// It holds this many bytes, not written by vectest.
    ForeignData(u64),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::BacksLoop(loops) => write!(
                f,
                "backs {} (detach with `losetup -d {}`)",
                loops.join(", "),
                loops.join(" ")
            ),
            Finding::ReadOnly(mode) => write!(f, "is read-only (mode {mode:04o})"),
            Finding::Signatures(sigs) => {
                f.write_str("holds ")?;
                write_signatures(f, sigs)
            }
            Finding::ForeignData(len) => {
                write!(f, "holds {len} bytes that vectest did not write")
            }
        }
    }
}

/// "it backs /dev/loop3 (...) and holds ext4 filesystem (...)".
pub fn describe(findings: &[Finding]) -> String {
    let all: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    format!("it {}", all.join(" and "))
}

fn write_signatures(f: &mut std::fmt::Formatter<'_>, sigs: &[Signature]) -> std::fmt::Result {
    for (i, s) in sigs.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{} (signature at byte {})", s.kind, s.offset)?;
    }
    Ok(())
}

/// Why a target must not be written, if it must not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Mounted at these mount points (the device or a partition of it).
    Mounted(Vec<String>),
    /// Used by these other block devices.
    Held(Vec<String>),
    /// Opened exclusively by another program (`EBUSY` on `O_EXCL`).
    Busy,
    /// Carries these signatures.
    Formatted(Vec<Signature>),
    /// A regular file with these findings.
    Kept(Vec<Finding>),
    /// Its data is in use through loop device `via` (mounted, or held):
    /// the target backs `via`, or (`backing`) the target is another loop
    /// device over the same file.
    ThroughLoop {
        /// The backing file both loop devices share.
        backing: Option<String>,
        /// The loop device in use.
        via: String,
        /// How it is in use ([`Refusal::Mounted`] or [`Refusal::Held`]).
        why: Box<Refusal>,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Mounted(at) => {
                write!(f, "it is mounted at {}; unmount it first", at.join(", "))
            }
            Refusal::Held(by) => write!(
                f,
                "it is in use by {} (device-mapper, RAID or similar); release it first",
                by.join(", ")
            ),
            Refusal::Busy => f.write_str("another program has it open exclusively"),
            Refusal::Formatted(sigs) => {
                f.write_str("it holds data: ")?;
                write_signatures(f, sigs)?;
                f.write_str("; pass --force to overwrite it")
            }
            Refusal::Kept(findings) => {
                write!(f, "{}; pass --force to overwrite it", describe(findings))
            }
            Refusal::ThroughLoop { backing, via, why } => {
                match backing {
                    Some(file) => write!(f, "its backing file {file} is also attached to {via}")?,
                    None => write!(f, "it backs {via}")?,
                }
                match &**why {
                    Refusal::Mounted(at) => {
                        write!(
                            f,
                            ", which is mounted at {}; unmount it first",
                            at.join(", ")
                        )
                    }
                    Refusal::Held(by) => write!(
                        f,
                        ", which is in use by {} (device-mapper, RAID or similar); release it first",
                        by.join(", ")
                    ),
                    other => write!(f, ", which is in use ({other})"),
                }
            }
        }
    }
}

/// Mount points of any of `devs` (as `major:minor`), from mountinfo.
fn mounts_of(devs: &[String]) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let mut fields = l.split(' ');
            let dev = fields.nth(2)?;
            let mnt = fields.nth(1)?;
            devs.iter().any(|d| d == dev).then(|| mnt.to_owned())
        })
        .collect()
}

/// Reasons found without opening the device: mounted (the device or a
/// partition of it), or held by another block device.
pub fn in_use(rdev: u64) -> Option<Refusal> {
    let sys = sysfs_dir(rdev);
    let mounted = mounts_of(&device_numbers(&sys));
    if !mounted.is_empty() {
        return Some(Refusal::Mounted(mounted));
    }
    let mut holders = Vec::new();
    for dir in std::iter::once(sys.clone()).chain(partitions(&sys)) {
        if let Ok(entries) = std::fs::read_dir(dir.join("holders")) {
            holders.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    (!holders.is_empty()).then_some(Refusal::Held(holders))
}

/// The loop devices (`/dev/loop3`) whose backing file is the file with
/// device number `dev` and inode `ino`, with their device numbers.
pub fn loops_over(dev: u64, ino: u64) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<(String, u64)> = entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(b"loop"))
        .filter_map(|e| {
            let backing = std::fs::metadata(backing_file(&e.path())?).ok()?;
            if (backing.dev(), backing.ino()) != (dev, ino) {
                return None;
            }
            let numbers = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (major, minor) = numbers.trim().split_once(':')?;
            let rdev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
            let name = format!("/dev/{}", e.file_name().to_string_lossy());
            Some((name, rdev))
        })
        .collect();
    found.sort();
    found
}

/// The first of `loops` (from [`loops_over`]) that is mounted or held, and
/// how: writing their backing file would corrupt what is on it.
pub fn loop_in_use(loops: &[(String, u64)]) -> Option<(String, Refusal)> {
    loops
        .iter()
        .find_map(|(name, rdev)| in_use(*rdev).map(|why| (name.clone(), why)))
}

/// For a loop device (or a partition of one): another loop device over the
/// same backing file that is mounted or held.
pub fn backing_in_use(rdev: u64) -> Option<Refusal> {
    let mut sys = sysfs_dir(rdev);
    if sys.join("partition").exists() {
        sys = sys.canonicalize().ok()?.parent()?.to_path_buf();
    }
    let backing = backing_file(&sys)?;
    let meta = std::fs::metadata(&backing).ok()?;
    let own = format!(
        "/dev/{}",
        sys.canonicalize().ok()?.file_name()?.to_string_lossy()
    );
    let others: Vec<(String, u64)> = loops_over(meta.dev(), meta.ino())
        .into_iter()
        .filter(|(name, _)| *name != own)
        .collect();
    let (via, why) = loop_in_use(&others)?;
    Some(Refusal::ThroughLoop {
        backing: Some(backing.display().to_string()),
        via,
        why: Box::new(why),
    })
}

/// The backing file of the loop device whose sysfs directory is `sys`, when
/// it is bound to one that still has a name.
fn backing_file(sys: &Path) -> Option<PathBuf> {
    let raw = std::fs::read(sys.join("loop/backing_file")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    if raw.ends_with(b" (deleted)") {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(raw)))
}

/// What an existing regular file is or holds that only `--force`
/// overwrites, apart from the loop devices over it: read-only permission
/// bits, a signature at its start, or data that vectest did not write.
pub fn file_findings(file: &File) -> io::Result<Vec<Finding>> {
    let meta = file.metadata()?;
    let mut found = Vec::new();
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o222 == 0 {
        found.push(Finding::ReadOnly(mode));
    }
    // A second, buffered description: `file` may be open with O_DIRECT.
    let again = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let Some(data) = first_data(&again, &meta) else {
        return Ok(found);
    };
    let mut head = vec![0u8; (meta.len() as usize).min(PROBE_LEN)];
    again.read_exact_at(&mut head, 0)?;
    let ours = if data < head.len() as u64 {
        written_by_vectest(&head, 0)
    } else {
        // Holes first: look where the data is.
        let at = data / 8 * 8;
        let mut window = vec![0u8; ((meta.len() - at) as usize).min(PROBE_LEN)];
        again.read_exact_at(&mut window, at)?;
        written_by_vectest(&window, at)
    };
    if !ours {
        let sigs = signatures(&head, 512);
        found.push(if sigs.is_empty() {
            Finding::ForeignData(meta.len())
        } else {
            Finding::Signatures(sigs)
        });
    }
    Ok(found)
}

/// Offset of the first byte of data (not a hole) in `file`, if it has any
/// (`SEEK_DATA`; where the filesystem cannot tell, the start).
fn first_data(file: &File, meta: &Metadata) -> Option<u64> {
    if meta.len() == 0 {
        return None;
    }
    // SAFETY: lseek on a descriptor `file` owns; no memory is passed.
    let at = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    if at >= 0 {
        return Some(at as u64);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENXIO) => None,
        _ => Some(0),
    }
}

/// Whether `path`, which does not exist, would be made in `/dev` (on the
/// filesystem of `/dev` itself, not a tmpfs such as `/dev/shm` below it).
pub fn in_dev(path: &Path) -> bool {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (Ok(parent), Ok(dev)) = (parent.canonicalize(), std::fs::metadata("/dev")) else {
        return false;
    };
    parent.starts_with("/dev") && std::fs::metadata(&parent).is_ok_and(|m| m.dev() == dev.dev())
}

/// Signatures at the start of an opened block device.
pub fn signatures_on(file: &File, sector: u64) -> io::Result<Vec<Signature>> {
    let len = (block_device_size(file)? as usize).min(PROBE_LEN);
    let mut head = vec![0u8; len];
    read_fully_at(file, &mut head, 0)?;
    Ok(signatures(&head, sector))
}

/// Reads with `pread` on a file that may be open with `O_DIRECT`: through a
/// second, buffered descriptor of the same node.
fn read_fully_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let again = File::open(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(file)
    ))?;
    again.read_exact_at(buf, offset)
}

/// Size in bytes of a block device (`BLKGETSIZE64`).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer we pass.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            BLKGETSIZE64,
            &mut size as *mut u64,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Logical block size of a block device (`BLKSSZGET`).
pub fn logical_block_size(file: &File) -> io::Result<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer we pass.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            BLKSSZGET,
            &mut size as *mut libc::c_int,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size as u64)
}

// _IOR(0x12, 114, size_t) and _IO(0x12, 104), from <linux/fs.h>.
const BLKGETSIZE64: libc::Ioctl = 0x8008_1272u32 as libc::Ioctl;
const BLKSSZGET: libc::Ioctl = 0x1268;

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        vec![0u8; PROBE_LEN]
    }

    #[test]
    fn blank_device_has_no_signature() {
        assert!(signatures(&image(), 512).is_empty());
    }

    #[test]
    fn ext_generations_are_told_apart() {
        let mut img = image();
        img[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(signatures(&img, 512)[0].kind, "ext2 filesystem");
        img[1024 + 92] = 0x4;
        assert_eq!(signatures(&img, 512)[0].kind, "ext3 filesystem");
        img[1024 + 96] = 0x40;
        assert_eq!(
            signatures(&img, 512),
            vec![Signature {
                kind: "ext4 filesystem",
                offset: 1080
            }]
        );
    }

    #[test]
    fn each_known_magic_is_found() {
        let cases: &[(&str, usize, &[u8])] = &[
            ("xfs filesystem", 0, b"XFSB"),
            ("btrfs filesystem", 65536 + 64, b"_BHRfS_M"),
            ("swap area", 4096 - 10, b"SWAPSPACE2"),
            ("LUKS encrypted volume", 0, b"LUKS\xba\xbe"),
            ("GPT partition table", 512, b"EFI PART"),
            ("MBR partition table", 510, &[0x55, 0xaa]),
        ];
        for (kind, off, magic) in cases {
            let mut img = image();
            img[*off..off + magic.len()].copy_from_slice(magic);
            let found = signatures(&img, 512);
            assert!(
                found
                    .iter()
                    .any(|s| s.kind == *kind && s.offset == *off as u64),
                "{kind}: {found:?}"
            );
        }
    }

    #[test]
    fn refusal_messages_say_what_to_do() {
        let r = Refusal::Formatted(vec![Signature {
            kind: "ext4 filesystem",
            offset: 1080,
        }]);
        assert_eq!(
            r.to_string(),
            "it holds data: ext4 filesystem (signature at byte 1080); pass --force to overwrite it"
        );
        assert!(
            Refusal::Mounted(vec!["/mnt".into()])
                .to_string()
                .contains("unmount")
        );
        let through = |backing: Option<&str>| Refusal::ThroughLoop {
            backing: backing.map(str::to_owned),
            via: "/dev/loop1".into(),
            why: Box::new(Refusal::Mounted(vec!["/mnt".into()])),
        };
        assert_eq!(
            through(None).to_string(),
            "it backs /dev/loop1, which is mounted at /mnt; unmount it first"
        );
        assert_eq!(
            through(Some("/img")).to_string(),
            "its backing file /img is also attached to /dev/loop1, which is mounted at /mnt; \
             unmount it first"
        );
        let kept = Refusal::Kept(vec![
            Finding::BacksLoop(vec!["/dev/loop3".into()]),
            Finding::ReadOnly(0o444),
            Finding::ForeignData(12),
        ]);
        assert_eq!(
            kept.to_string(),
            "it backs /dev/loop3 (detach with `losetup -d /dev/loop3`) and is read-only \
             (mode 0444) and holds 12 bytes that vectest did not write; pass --force to overwrite it"
        );
    }

    #[test]
    fn a_file_is_judged_by_its_data() {
        use super::super::pattern::Pattern;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // `bytes` at `at` in a file of `len` bytes, holes elsewhere.
        let findings = |at: u64, bytes: &[u8], len: u64| {
            let _ = std::fs::remove_file(&path);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            f.set_len(len).unwrap();
            f.write_all_at(bytes, at).unwrap();
            file_findings(&f).unwrap()
        };
        assert_eq!(findings(0, b"", 0), vec![]);
        assert_eq!(findings(0, b"", 1 << 20), vec![], "holes only");
        assert_eq!(findings(0, b"hello", 5), vec![Finding::ForeignData(5)]);
        assert_eq!(
            findings(0, &[0u8; 4096], 4096),
            vec![Finding::ForeignData(4096)],
            "written zeros are data"
        );
        let mut ours = vec![0u8; 1 << 17];
        Pattern::new(3).fill(&mut ours, 0, 1);
        assert_eq!(findings(0, &ours, 1 << 20), vec![]);
        // Data only past the first PROBE_LEN bytes: that data is judged.
        let mut late = vec![0u8; 1 << 16];
        Pattern::new(3).fill(&mut late, 1 << 17, 2);
        assert_eq!(findings(1 << 17, &late, 1 << 18), vec![]);
        late[100] ^= 0xff;
        assert_eq!(
            findings(1 << 17, &late, 1 << 18),
            vec![Finding::ForeignData(1 << 18)]
        );
        let mut ext = vec![0u8; 4096];
        ext[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(
            findings(0, &ext, 4096),
            vec![Finding::Signatures(vec![Signature {
                kind: "ext2 filesystem",
                offset: 1080
            }])]
        );
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(file_findings(&f).unwrap(), vec![Finding::ReadOnly(0o444)]);
    }

    #[test]
    fn new_paths_in_dev_are_told_apart() {
        assert!(in_dev(Path::new("/dev/sdz")));
        assert!(in_dev(Path::new("/dev/disk/by-id/none")) == Path::new("/dev/disk/by-id").exists());
        assert!(!in_dev(Path::new("/tmp/sdz")));
        assert!(!in_dev(Path::new("sdz")) || std::env::current_dir().unwrap().starts_with("/dev"));
    }
}
