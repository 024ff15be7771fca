//! Shared helpers for the `aio` integration tests.
//!
//! Scratch location contract (used by `cargo xtask fs-matrix`): scratch
//! files go to `$AIO_TEST_DIR` if set, else the temporary directory; tmpfs
//! tests use /dev/shm. Raw block device tests use `$AIO_TEST_DEVICE` if set,
//! else (as root) a loop device on a sparse image, detached on drop even
//! when the test panics. Without root they skip with a message, except
//! under `CI=true`, where they fail.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};

use aio::AlignedBuf;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where scratch files go.
pub fn scratch_dir() -> PathBuf {
    std::env::var_os("AIO_TEST_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A tmpfs directory.
pub fn shm_dir() -> PathBuf {
    PathBuf::from("/dev/shm")
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test with `why`, or fails it under CI. Returns so the
/// caller can `return`.
pub fn skip(why: &str) {
    if in_ci() {
        panic!("required test prerequisite missing under CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh, unlinked-on-drop scratch file in `dir`, optionally `O_DIRECT`.
pub struct Scratch {
    pub file: File,
    pub path: PathBuf,
}

impl Scratch {
    /// A share of the scratch file (a duplicate of its descriptor) that
    /// requests pushed to a context can hold until they complete.
    #[allow(dead_code)]
    pub fn shared(&self) -> std::sync::Arc<File> {
        std::sync::Arc::new(self.file.try_clone().expect("dup the scratch file"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn scratch_in(dir: &Path, direct: bool) -> Scratch {
    try_scratch_in(dir, direct)
        .unwrap_or_else(|e| panic!("create a scratch file in {}: {e}", dir.display()))
}

/// An `O_DIRECT` scratch file in `dir`, or `None` (with a message) if the
/// filesystem does not support `O_DIRECT`: a property of the filesystem
/// under test (`AIO_TEST_DIR`), not a missing prerequisite.
pub fn direct_scratch_in(dir: &Path) -> Option<Scratch> {
    match try_scratch_in(dir, true) {
        Ok(s) => Some(s),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("SKIPPED: {} does not support O_DIRECT", dir.display());
            None
        }
        Err(e) => panic!("create an O_DIRECT scratch file in {}: {e}", dir.display()),
    }
}

fn try_scratch_in(dir: &Path, direct: bool) -> std::io::Result<Scratch> {
    let path = dir.join(format!(
        "aio-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let file = opts.open(&path)?;
    Ok(Scratch { file, path })
}

/// A pipe: (read end, write end), close-on-exec. (`std::io::pipe` needs
/// Rust 1.87, above this workspace's MSRV.)
pub fn pipe() -> (File, File) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and owned by nobody else.
    unsafe {
        (
            OwnedFd::from_raw_fd(fds[0]).into(),
            OwnedFd::from_raw_fd(fds[1]).into(),
        )
    }
}

/// Whether `file` is on tmpfs, where reads and writes (`O_DIRECT` too,
/// since Linux 6.6) complete inside `io_submit`.
pub fn on_tmpfs(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs writes into a local.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::fstatfs(file.as_raw_fd(), &mut sfs) }, 0);
    sfs.f_type == libc::TMPFS_MAGIC as _
}

/// Deterministic test bytes: position `i` of stream `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i as u64)
                .wrapping_mul(31)
                .wrapping_add(seed.wrapping_mul(7919))
                % 251) as u8
        })
        .collect()
}

/// Splits `total` bytes into at most `UIO_MAXIOV` (1024) segments that are
/// multiples of `unit`, sized pseudo-randomly from `seed` (from many small
/// segments to a few large ones).
pub fn layout(total: usize, unit: usize, seed: u64) -> Vec<usize> {
    const UIO_MAXIOV: usize = 1024;
    let units = total / unit;
    let smallest_max = units.div_ceil(512) as u64;
    let max = smallest_max + seed % (units as u64 / 3).max(1);
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut left = units;
    let mut out = Vec::new();
    while left > 0 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = ((state >> 33) % max + 1).min(left as u64) as usize;
        out.push(n * unit);
        left -= n;
    }
    // Sizes drawn from 1..=max average max/2, so the smallest `max`
    // (units/512) gives about 1024 segments, sometimes more than the kernel
    // takes in one request (seed 316986122782490429 gave 1031 for 1 MiB,
    // and the readv failed with EINVAL). Fold the excess into the last one.
    while out.len() > UIO_MAXIOV {
        let last = out.pop().unwrap();
        *out.last_mut().unwrap() += last;
    }
    out
}

pub fn bufs_from(data: &[u8], lens: &[usize], align: usize) -> Vec<AlignedBuf> {
    let mut at = 0;
    lens.iter()
        .map(|&len| {
            let b = AlignedBuf::from_slice(&data[at..at + len], align);
            at += len;
            b
        })
        .collect()
}

pub fn concat(bufs: &[AlignedBuf]) -> Vec<u8> {
    bufs.iter().flat_map(|b| b.iter().copied()).collect()
}

/// A raw block device for tests, detached (if we attached it) on drop.
pub struct BlockDevice {
    pub path: PathBuf,
    image: Option<PathBuf>,
}

impl BlockDevice {
    /// `$AIO_TEST_DEVICE`, or a new loop device of `size` bytes as root;
    /// `None` (after `skip`) when neither is possible.
    pub fn get(size: u64) -> Option<BlockDevice> {
        if let Some(dev) = std::env::var_os("AIO_TEST_DEVICE") {
            return Some(BlockDevice {
                path: dev.into(),
                image: None,
            });
        }
        Self::new_loop(size)
    }

    /// A new loop device of `size` bytes, whatever `$AIO_TEST_DEVICE` says:
    /// its requests complete on the loop driver's worker, never inside
    /// `io_submit`. `None` (after `skip`) without root.
    pub fn new_loop(size: u64) -> Option<BlockDevice> {
        if !is_root() {
            skip("raw block device tests need root (to attach a loop device) or AIO_TEST_DEVICE");
            return None;
        }
        let image = scratch_dir().join(format!(
            "aio-test-loop-{}-{}.img",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&image).expect("create loop image");
        f.set_len(size).expect("size loop image");
        drop(f);
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                Some(BlockDevice {
                    path: path.into(),
                    image: Some(image),
                })
            }
            other => {
                let _ = std::fs::remove_file(&image);
                skip(&format!("losetup failed: {other:?}"));
                None
            }
        }
    }

    pub fn open(&self, direct: bool) -> File {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        opts.open(&self.path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()))
    }
}

impl Drop for BlockDevice {
    fn drop(&mut self) {
        if let Some(image) = &self.image {
            let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
            let _ = std::fs::remove_file(image);
        }
    }
}

/// Every driver a context can have; round-trip tests run on each.
pub const DRIVERS: [aio::Driver; 3] = [aio::Driver::Auto, aio::Driver::Kernel, aio::Driver::Engine];

/// A context of `depth` on `driver`.
pub fn context_on(driver: aio::Driver, depth: u32) -> aio::Context {
    aio::Context::builder()
        .queue_depth(depth)
        .driver(driver)
        .build()
        .unwrap_or_else(|e| panic!("a context on {driver:?}: {e}"))
}

/// `data` cut into owned segments of `lens` (which sum to its length).
pub fn layout_of(data: &[u8], lens: &[usize]) -> Vec<Vec<u8>> {
    assert_eq!(lens.iter().sum::<usize>(), data.len());
    let mut rest = data;
    lens.iter()
        .map(|&l| {
            let (a, b) = rest.split_at(l);
            rest = b;
            a.to_vec()
        })
        .collect()
}
