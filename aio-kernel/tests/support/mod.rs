//! Test support for the differential suite: the running kernel through raw
//! system calls, the engine through its syscall-shaped API, scratch files
//! and memory laid out identically for both.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aio_abi::{Errno, IoEvent, Iocb, syscall::NATIVE};
use aio_kernel::engine::Engine;

/// One implementation of the six calls, with raw arguments.
pub trait Side {
    fn name(&self) -> &'static str;
    /// # Safety
    /// Raw pointers as in the system call.
    unsafe fn setup(&self, nr: u32, ctxp: u64) -> Result<(), Errno>;
    /// # Safety
    /// Raw pointers as in the system call.
    unsafe fn submit(&self, ctx: u64, nr: i64, iocbpp: u64) -> Result<usize, Errno>;
    /// # Safety
    /// Raw pointers as in the system call.
    unsafe fn getevents(
        &self,
        ctx: u64,
        min: i64,
        nr: i64,
        ev: u64,
        ts: u64,
    ) -> Result<usize, Errno>;
    /// # Safety
    /// Raw pointers as in the system call.
    unsafe fn pgetevents(
        &self,
        ctx: u64,
        min: i64,
        nr: i64,
        ev: u64,
        ts: u64,
        sig: u64,
    ) -> Result<usize, Errno>;
    fn cancel(&self, ctx: u64, iocb: u64) -> Result<(), Errno>;
    fn destroy(&self, ctx: u64) -> Result<(), Errno>;
}

fn ret(r: libc::c_long) -> Result<i64, Errno> {
    if r < 0 {
        Err(Errno(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(r)
    }
}

/// The running kernel.
pub struct Linux;

impl Side for Linux {
    fn name(&self) -> &'static str {
        "linux"
    }
    unsafe fn setup(&self, nr: u32, ctxp: u64) -> Result<(), Errno> {
        // SAFETY: forwarded contract.
        ret(unsafe { libc::syscall(NATIVE.io_setup, nr as libc::c_ulong, ctxp) }).map(|_| ())
    }
    unsafe fn submit(&self, ctx: u64, nr: i64, iocbpp: u64) -> Result<usize, Errno> {
        // SAFETY: forwarded contract.
        ret(unsafe { libc::syscall(NATIVE.io_submit, ctx, nr, iocbpp) }).map(|n| n as usize)
    }
    unsafe fn getevents(
        &self,
        ctx: u64,
        min: i64,
        nr: i64,
        ev: u64,
        ts: u64,
    ) -> Result<usize, Errno> {
        // SAFETY: forwarded contract.
        ret(unsafe { libc::syscall(NATIVE.io_getevents, ctx, min, nr, ev, ts) }).map(|n| n as usize)
    }
    unsafe fn pgetevents(
        &self,
        ctx: u64,
        min: i64,
        nr: i64,
        ev: u64,
        ts: u64,
        sig: u64,
    ) -> Result<usize, Errno> {
        // SAFETY: forwarded contract.
        ret(unsafe { libc::syscall(NATIVE.io_pgetevents, ctx, min, nr, ev, ts, sig) })
            .map(|n| n as usize)
    }
    fn cancel(&self, ctx: u64, iocb: u64) -> Result<(), Errno> {
        let mut ev = IoEvent::default();
        // SAFETY: io_cancel reads the iocb's key (EFAULT if bad) and no
        // longer writes `result`; `ev` is valid anyway.
        ret(unsafe { libc::syscall(NATIVE.io_cancel, ctx, iocb, &mut ev as *mut IoEvent as u64) })
            .map(|_| ())
    }
    fn destroy(&self, ctx: u64) -> Result<(), Errno> {
        // SAFETY: io_destroy dereferences nothing of ours but the ring.
        ret(unsafe { libc::syscall(NATIVE.io_destroy, ctx) }).map(|_| ())
    }
}

/// The engine.
pub struct EngineSide(pub Engine);

impl EngineSide {
    pub fn new() -> EngineSide {
        EngineSide(Engine::new())
    }
}

impl Side for EngineSide {
    fn name(&self) -> &'static str {
        "engine"
    }
    unsafe fn setup(&self, nr: u32, ctxp: u64) -> Result<(), Errno> {
        // SAFETY: forwarded contract.
        unsafe { self.0.sys_io_setup(nr, ctxp) }
    }
    unsafe fn submit(&self, ctx: u64, nr: i64, iocbpp: u64) -> Result<usize, Errno> {
        // SAFETY: forwarded contract.
        unsafe { self.0.sys_io_submit(ctx, nr, iocbpp) }
    }
    unsafe fn getevents(
        &self,
        ctx: u64,
        min: i64,
        nr: i64,
        ev: u64,
        ts: u64,
    ) -> Result<usize, Errno> {
        // SAFETY: forwarded contract.
        unsafe { self.0.sys_io_getevents(ctx, min, nr, ev, ts) }
    }
    unsafe fn pgetevents(
        &self,
        ctx: u64,
        min: i64,
        nr: i64,
        ev: u64,
        ts: u64,
        sig: u64,
    ) -> Result<usize, Errno> {
        // SAFETY: forwarded contract.
        unsafe { self.0.sys_io_pgetevents(ctx, min, nr, ev, ts, sig) }
    }
    fn cancel(&self, ctx: u64, iocb: u64) -> Result<(), Errno> {
        self.0.io_cancel(ctx, iocb as *const Iocb)
    }
    fn destroy(&self, ctx: u64) -> Result<(), Errno> {
        // SAFETY: the tests destroy only contexts they set up (or ids that
        // name none) and use none of them afterwards.
        unsafe { self.0.io_destroy(ctx) }
    }
}

/// A context on one side, destroyed on drop.
pub struct Ctx<'a> {
    pub side: &'a dyn Side,
    pub id: u64,
}

impl<'a> Ctx<'a> {
    pub fn new(side: &'a dyn Side, nr: u32) -> Ctx<'a> {
        // aio-nr is system-wide: other processes' contexts can fill
        // aio-max-nr for a moment. Wait for room rather than fail.
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let mut id = 0u64;
            // SAFETY: `id` is a live u64.
            match unsafe { side.setup(nr, &mut id as *mut u64 as u64) } {
                Ok(()) => return Ctx { side, id },
                Err(Errno::EAGAIN) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("io_setup({nr}) on {}: {e:?}", side.name()),
            }
        }
    }

    /// Submits `iocbs` (kept at stable addresses by the caller).
    pub fn submit(&self, iocbs: &[Iocb]) -> Result<usize, Errno> {
        let ptrs: Vec<u64> = iocbs.iter().map(|i| i as *const Iocb as u64).collect();
        // SAFETY: the iocbs and their buffers live in the caller's arena
        // until the events are collected.
        unsafe {
            self.side
                .submit(self.id, ptrs.len() as i64, ptrs.as_ptr() as u64)
        }
    }

    /// Waits up to `limit` for `n` events in total.
    pub fn collect(&self, n: usize, limit: Duration) -> Vec<IoEvent> {
        let mut out = Vec::new();
        let end = Instant::now() + limit;
        while out.len() < n {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ts = libc::timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            };
            let mut evs = vec![IoEvent::default(); n - out.len()];
            // SAFETY: `evs` has room for the requested count; `ts` is live.
            let got = unsafe {
                self.side.getevents(
                    self.id,
                    1,
                    evs.len() as i64,
                    evs.as_mut_ptr() as u64,
                    &ts as *const libc::timespec as u64,
                )
            }
            .expect("io_getevents");
            out.extend_from_slice(&evs[..got]);
        }
        out
    }
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        let _ = self.side.destroy(self.id);
    }
}

/// A page that is mapped but inaccessible: any access through the kernel is
/// `EFAULT`, and it never becomes accessible while the test runs.
pub fn prot_none_page() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: a fresh anonymous mapping, never unmapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p as u64
    })
}

/// A read-only page holding `iocb`.
pub fn read_only_iocb(iocb: &Iocb) -> u64 {
    // SAFETY: a fresh anonymous mapping, filled, then made read-only; it is
    // leaked on purpose (tests are short).
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::write(p as *mut Iocb, *iocb);
        assert_eq!(libc::mprotect(p, 4096, libc::PROT_READ), 0);
        p as u64
    }
}

/// Scratch directory (under `AIO_TEST_DIR` or the temp dir), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("AIO_TEST_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "aio-kernel-diff-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn open(path: &std::path::Path, flags: i32) -> OwnedFd {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    assert!(
        fd >= 0,
        "open {path:?}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub const DATA_LEN: usize = 256 * 1024;

/// The files a scenario may use, created identically for each side.
pub struct Fixture {
    pub scratch: Scratch,
    pub data: OwnedFd,
    pub ro: OwnedFd,
    pub wo: OwnedFd,
    pub append: OwnedFd,
    pub dir: OwnedFd,
    pub path: OwnedFd,
    pub devnull: OwnedFd,
    pub pipe_r: OwnedFd,
    pub pipe_w: OwnedFd,
    pub sock_a: OwnedFd,
    pub sock_b: OwnedFd,
    pub efd: OwnedFd,
    /// An fd number that is not open.
    pub closed: i32,
}

impl Fixture {
    pub fn new() -> Fixture {
        let scratch = Scratch::new();
        let d = &scratch.0;
        std::fs::write(d.join("data"), pattern(DATA_LEN, 1)).unwrap();
        std::fs::write(d.join("ro"), pattern(DATA_LEN, 2)).unwrap();
        std::fs::write(d.join("wo"), b"").unwrap();
        std::fs::write(d.join("append"), pattern(100, 3)).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let mut p = [0i32; 2];
        // SAFETY: `p` has room for two fds.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let mut s = [0i32; 2];
        assert_eq!(
            // SAFETY: `s` has room for two fds.
            unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    s.as_mut_ptr(),
                )
            },
            0
        );
        // SAFETY: plain syscall; checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(efd >= 0);
        // SAFETY: the fds were just created and are owned here.
        let (pipe_r, pipe_w, sock_a, sock_b, efd) = unsafe {
            (
                OwnedFd::from_raw_fd(p[0]),
                OwnedFd::from_raw_fd(p[1]),
                OwnedFd::from_raw_fd(s[0]),
                OwnedFd::from_raw_fd(s[1]),
                OwnedFd::from_raw_fd(efd),
            )
        };
        Fixture {
            data: open(&d.join("data"), libc::O_RDWR),
            ro: open(&d.join("ro"), libc::O_RDONLY),
            wo: open(&d.join("wo"), libc::O_WRONLY),
            append: open(&d.join("append"), libc::O_RDWR | libc::O_APPEND),
            dir: open(&d.join("sub"), libc::O_RDONLY | libc::O_DIRECTORY),
            path: open(&d.join("data"), libc::O_PATH),
            devnull: open(std::path::Path::new("/dev/null"), libc::O_RDWR),
            pipe_r,
            pipe_w,
            sock_a,
            sock_b,
            efd,
            closed: 1_000_000,
            scratch,
        }
    }

    /// The file's length and its first MiB: a write far out (tmpfs takes
    /// offsets up to 2^63) makes a sparse file too big to read whole.
    pub fn read(&self, name: &str) -> (u64, Vec<u8>) {
        use std::io::Read;
        let f = std::fs::File::open(self.scratch.0.join(name)).unwrap();
        let len = f.metadata().unwrap().len();
        let mut head = Vec::new();
        f.take(1 << 20).read_to_end(&mut head).unwrap();
        (len, head)
    }

    /// The eventfd's counter, reset to 0.
    pub fn take_efd(&self) -> u64 {
        let mut v = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from a nonblocking eventfd.
        let n = unsafe { libc::read(self.efd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
        if n == 8 { u64::from_ne_bytes(v) } else { 0 }
    }

    /// Bytes waiting in the pipe (drained).
    pub fn drain_pipe(&self) -> Vec<u8> {
        let fd = self.pipe_r.as_raw_fd();
        // SAFETY: toggles O_NONBLOCK on our own fd.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a live buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        out
    }
}

/// Pins the calling thread to one CPU, so both sides use the same per-CPU
/// slot cache.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Whether the running kernel has native AIO (it may be compiled out or
/// filtered by seccomp).
pub fn linux_aio_available() -> bool {
    let mut id = 0u64;
    // SAFETY: `id` is a live u64.
    match unsafe { Linux.setup(1, &mut id as *mut u64 as u64) } {
        Ok(()) => {
            let _ = Linux.destroy(id);
            true
        }
        // Compiled out, or filtered by seccomp; EAGAIN (aio-nr full for a
        // moment) does not mean unavailable.
        Err(Errno::ENOSYS) | Err(Errno::EPERM) => false,
        Err(_) => true,
    }
}
