//! Helpers shared by the aio-sys integration tests: scratch locations (the
//! `AIO_TEST_DIR` / `AIO_TEST_DEVICE` contract of `cargo xtask fs-matrix`),
//! a context that is destroyed on drop, aligned buffers and segment layouts.
#![allow(dead_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use aio_sys::abi::{AioContext, Errno, IoEvent, IoVec, Iocb};
use aio_sys::{io_destroy, io_getevents, io_setup, io_submit};

/// Where file tests create scratch files: `$AIO_TEST_DIR`, else the
/// temporary directory.
pub fn scratch_dir() -> PathBuf {
    std::env::var_os("AIO_TEST_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// A tmpfs directory.
pub fn tmpfs_dir() -> PathBuf {
    PathBuf::from("/dev/shm")
}

/// A raw block device the tests may overwrite, named by `$AIO_TEST_DEVICE`.
pub fn test_device() -> Option<PathBuf> {
    std::env::var_os("AIO_TEST_DEVICE").map(PathBuf::from)
}

/// True when running in CI, where a missing prerequisite is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (returns false) outside CI when not root; panics in CI.
pub fn require_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!in_ci(), "{what} needs root, and CI runs as root");
    eprintln!("skipping {what}: needs root");
    false
}

/// A scratch file in `dir`, unlinked at once; `direct` adds `O_DIRECT`.
/// `Err` carries the errno when the filesystem refuses `O_DIRECT`.
pub fn scratch_file_in(dir: &std::path::Path, direct: bool) -> Result<File, std::io::Error> {
    let dir = tempfile::tempdir_in(dir)?;
    let path = dir.path().join("scratch");
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts.open(&path)
}

/// A file in the scratch directory.
pub fn scratch_file() -> File {
    scratch_file_in(&scratch_dir(), false).expect("create scratch file")
}

/// A file opened with `O_RDONLY` or `O_WRONLY` on the same scratch data.
pub fn reopen(file: &File, write: bool) -> File {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let mut opts = OpenOptions::new();
    if write {
        opts.write(true);
    } else {
        opts.read(true);
    }
    opts.open(path).expect("reopen scratch file")
}

/// An AIO context destroyed on drop.
pub struct Ctx(pub AioContext);

impl Ctx {
    pub fn new(nr: u32) -> Ctx {
        Ctx(io_setup(nr).expect("io_setup"))
    }

    /// Submits iocbs; the caller keeps their buffers alive until reaped.
    pub fn submit(&self, iocbs: &mut [Iocb]) -> Result<usize, Errno> {
        let ptrs: Vec<*mut Iocb> = iocbs.iter_mut().map(|i| i as *mut Iocb).collect();
        // SAFETY: the tests keep every buffer alive until its event is reaped.
        unsafe { io_submit(self.0, &ptrs) }
    }

    /// Waits for exactly `n` events (10 s at most).
    pub fn wait(&self, n: usize) -> Vec<IoEvent> {
        let mut out = vec![IoEvent::default(); n];
        let mut got = 0;
        while got < n {
            // SAFETY: no ring view reaps while a test waits through its Ctx.
            let r = unsafe {
                io_getevents(
                    self.0,
                    n - got,
                    &mut out[got..],
                    Some(Duration::from_secs(10)),
                )
            };
            match r {
                Ok(0) => panic!("timed out with {got} of {n} events"),
                Ok(k) => got += k,
                Err(Errno::EINTR) => {}
                Err(e) => panic!("io_getevents: {e}"),
            }
        }
        out
    }

    /// Submits one request and returns its event.
    pub fn run(&self, iocb: Iocb) -> Result<IoEvent, Errno> {
        let mut iocbs = [iocb];
        self.submit(&mut iocbs)?;
        Ok(self.wait(1)[0])
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: tests never keep a RingView past their Ctx.
        let _ = unsafe { io_destroy(self.0) };
    }
}

/// A zeroed heap buffer with the given alignment, for `O_DIRECT`.
pub struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    pub fn new(len: usize, align: usize) -> Aligned {
        let layout = Layout::from_size_align(len.max(1), align).unwrap();
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// A small deterministic generator, so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Splits `total` bytes into `nsegs` nonzero segments of unequal lengths,
/// each a multiple of `unit` (`total` must be a multiple of `unit` and at
/// least `nsegs * unit`).
pub fn layout(total: usize, nsegs: usize, unit: usize, rng: &mut Rng) -> Vec<usize> {
    let units = total / unit;
    assert!(units >= nsegs && total % unit == 0);
    // Choose nsegs-1 distinct cut points among 1..units.
    let mut cuts = std::collections::BTreeSet::new();
    while cuts.len() < nsegs - 1 {
        cuts.insert(1 + rng.below(units as u64 - 1) as usize);
    }
    let mut lens = Vec::with_capacity(nsegs);
    let mut prev = 0;
    for c in cuts.into_iter().chain([units]) {
        lens.push((c - prev) * unit);
        prev = c;
    }
    lens
}

/// The iovecs describing consecutive pieces of `buf` with lengths `lens`.
pub fn iovecs_over(buf: &mut [u8], lens: &[usize]) -> Vec<IoVec> {
    let mut off = 0;
    lens.iter()
        .map(|&len| {
            let iov = IoVec {
                iov_base: buf[off..].as_mut_ptr() as u64,
                iov_len: len as u64,
            };
            off += len;
            iov
        })
        .collect()
}

/// Bytes that encode their own position, so misplaced data shows.
pub fn pattern(buf: &mut [u8], seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((i as u64).wrapping_mul(31).wrapping_add(seed) % 251) as u8;
    }
}
