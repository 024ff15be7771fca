//! On Linux 6.18, zram reports a 512-byte memory alignment for `O_DIRECT`
//! (statx `STATX_DIOALIGN`, from its DMA alignment) but an `O_DIRECT` read
//! into a buffer that is not page-aligned writes whole pages: the bytes
//! around the buffer are overwritten, which corrupted the heap of this
//! crate's round-trip test before `dio_alignment` raised the memory
//! alignment to the block size. These tests show the kernel's behaviour
//! (on memory of our own, outside the heap) and that the safe API refuses
//! such buffers before the kernel sees them.

mod common;

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use aio::{AlignedBuf, Context, ReadV};
use common::{in_ci, is_root, skip};

/// `/dev/zram0`, set up for the test and reset afterwards, or the one
/// `cargo xtask fs-matrix` prepared (`AIO_TEST_DEVICE=/dev/zram0`).
struct Zram {
    path: PathBuf,
    reset: bool,
}

impl Zram {
    fn get() -> Option<Zram> {
        if std::env::var_os("AIO_TEST_DEVICE").is_some_and(|d| d == "/dev/zram0") {
            return Some(Zram {
                path: "/dev/zram0".into(),
                reset: false,
            });
        }
        if !is_root() {
            skip("zram tests need root");
            return None;
        }
        if !std::path::Path::new("/sys/block/zram0").exists() {
            let _ = std::process::Command::new("modprobe").arg("zram").status();
        }
        let size = std::fs::read_to_string("/sys/block/zram0/disksize");
        match size.as_deref().map(str::trim) {
            Ok("0") => {}
            Ok(_) => {
                // In use by someone else: leave it alone.
                assert!(!in_ci(), "/dev/zram0 is in use in CI");
                skip("/dev/zram0 is in use");
                return None;
            }
            Err(e) => {
                assert!(!in_ci(), "no zram0 in CI: {e}");
                skip(&format!("no /dev/zram0: {e}"));
                return None;
            }
        }
        std::fs::write("/sys/block/zram0/disksize", "16M").expect("size zram0");
        Some(Zram {
            path: "/dev/zram0".into(),
            reset: true,
        })
    }
}

impl Drop for Zram {
    fn drop(&mut self) {
        if self.reset {
            let _ = std::fs::write("/sys/block/zram0/reset", "1");
        }
    }
}

#[test]
fn zram_misaligned_buffers_are_refused_and_aligned_ones_work() {
    let Some(zram) = Zram::get() else { return };
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&zram.path)
        .expect("open /dev/zram0 O_DIRECT");
    let a = aio::dio_alignment(&dev).unwrap();
    assert_eq!(a.offset, 4096, "zram's logical block size");
    assert!(
        a.memory >= a.offset,
        "memory alignment raised to the block size: {a:?}"
    );

    // What the kernel does with a 512-aligned buffer, on a private mapping
    // of three pages (not the heap): the bytes around the buffer.
    // SAFETY: a fresh anonymous mapping, unmapped below.
    let region = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            3 * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(region, libc::MAP_FAILED);
    // SAFETY: the mapping is 3 pages of writable memory, ours alone.
    let bytes = unsafe { std::slice::from_raw_parts_mut(region.cast::<u8>(), 3 * 4096) };
    bytes[..4096].fill(0xab);
    // SAFETY: writes one page from our mapping.
    let written = unsafe { libc::pwrite(dev.as_raw_fd(), region, 4096, 0) };
    assert_eq!(written, 4096);
    bytes.fill(0x11);
    // SAFETY: reads 4096 bytes into the mapping at +512, inside its 3 pages.
    let n = unsafe {
        libc::pread(
            dev.as_raw_fd(),
            region.cast::<u8>().add(512).cast(),
            4096,
            0,
        )
    };
    let outside = bytes[..512]
        .iter()
        .chain(&bytes[512 + 4096..])
        .filter(|&&b| b != 0x11)
        .count();
    eprintln!(
        "kernel: O_DIRECT pread of 4096 bytes into a 512-aligned buffer on zram returned {n} \
         and changed {outside} bytes outside the buffer"
    );
    // SAFETY: unmaps what was mapped above.
    unsafe { libc::munmap(region, 3 * 4096) };

    // The safe API refuses that buffer before submission...
    let ctx = Context::new(4).unwrap();
    let mut big = AlignedBuf::new(2 * 4096, 4096);
    let refused = ctx.scope(|s| s.read_at(&dev, &mut big[512..512 + 4096], 0).wait());
    let e = refused
        .0
        .expect_err("a buffer that is not block-aligned is refused");
    assert!(e.to_string().contains("4096-byte aligned buffers"), "{e}");
    assert_eq!(ctx.stats().submit_calls, 0, "the kernel never saw it");
    assert!(big.iter().all(|&b| b == 0), "nothing was written anywhere");
    // ... and block-aligned buffers read back what was written.
    let (r, bufs) = ctx.run(ReadV::new(&dev, vec![big], 0));
    assert_eq!(r.unwrap(), 2 * 4096);
    assert!(bufs[0][..4096].iter().all(|&b| b == 0xab));
}
