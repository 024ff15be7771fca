//! Errors: refused misaligned O_DIRECT requests, bad descriptors, setup
//! limits, unsupported operations.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};

use aio::{AlignedBuf, Context, Fsync, Read, ReadV, RwFlags, Write, errno};
use common::{BlockDevice, direct_scratch_in, scratch_dir, scratch_in, shm_dir};

fn message(e: &std::io::Error) -> String {
    e.to_string()
}

fn misaligned_requests_are_refused(file: &std::fs::File) {
    let a = aio::dio_alignment(file).unwrap();
    eprintln!("alignment: {a:?}");
    assert!(aio::is_direct(file).unwrap());
    let ctx = Context::new(8).unwrap();
    let unit = a.offset.max(a.memory);
    let mut buf = AlignedBuf::new(4 * unit, unit.max(4096));
    ctx.scope(|s| {
        // Offset.
        let (r, _) = s.push(Read::new(file, &mut buf[..unit], 1)).wait();
        let e = r.expect_err("misaligned offset accepted");
        assert_eq!(errno(&e), Some(libc::EINVAL));
        assert!(
            message(&e).contains(&format!("multiple of {}", a.offset)),
            "{e}"
        );
        assert!(message(&e).contains("O_DIRECT"), "{e}");
    });
    ctx.scope(|s| {
        // Length.
        let (r, _) = s.push(Write::new(file, &buf[..a.offset + 1], 0)).wait();
        let e = r.expect_err("misaligned length accepted");
        assert!(
            message(&e).contains(&format!("length {}", a.offset + 1)),
            "{e}"
        );
        assert!(
            message(&e).contains(&format!("multiple of {}", a.offset)),
            "{e}"
        );
    });
    if a.memory > 1 {
        ctx.scope(|s| {
            // Buffer address, in the second segment of a vectored read.
            let (first, rest) = buf.split_at_mut(unit);
            let (r, _) = s
                .push(ReadV::new(file, [first, &mut rest[1..1 + unit]], 0))
                .wait();
            let e = r.expect_err("misaligned buffer accepted");
            assert!(
                message(&e).contains(&format!("multiple of {}", a.memory)),
                "{e}"
            );
            assert!(message(&e).contains("buffer address"), "{e}");
        });
    }
    // Refused before submission: the kernel never saw them.
    assert_eq!(ctx.stats().submit_calls, 0);
    // And an aligned request on the same file goes through.
    let (r, _) = ctx.run(Write::new(file, AlignedBuf::new(unit, unit.max(4096)), 0));
    assert_eq!(r.unwrap(), unit);
}

#[test]
fn misaligned_o_direct_file_requests_are_refused_with_the_alignment() {
    if let Some(s) = direct_scratch_in(&scratch_dir()) {
        misaligned_requests_are_refused(&s.file);
    }
}

#[test]
fn misaligned_o_direct_device_requests_are_refused_with_the_alignment() {
    if let Some(dev) = BlockDevice::get(16 << 20) {
        misaligned_requests_are_refused(&dev.open(true));
    }
}

#[test]
fn misaligned_buffered_requests_are_not_checked() {
    let s = scratch_in(&shm_dir(), false);
    let ctx = Context::new(8).unwrap();
    let (r, _) = ctx.run(Write::new(&s.file, vec![1u8; 3], 1));
    assert_eq!(r.unwrap(), 3);
}

#[test]
fn a_descriptor_not_open_for_reading_is_ebadf_in_the_result() {
    let s = scratch_in(&shm_dir(), false);
    let write_only = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.path)
        .unwrap();
    let good = s.shared();
    let ctx = Context::new(8).unwrap();
    // A bad request between two good ones: io_submit stops at it, the
    // rest is submitted after it, every request gets its own result.
    let a = ctx.push(Write::new(good.clone(), b"abcd".to_vec(), 0));
    let b = ctx.push(Read::new(write_only, vec![0u8; 4], 0));
    let c = ctx.push(Read::new(good, vec![0u8; 4], 0));
    ctx.submit();
    assert_eq!(a.wait().0.unwrap(), 4);
    let (r, buf) = b.wait();
    let e = r.expect_err("read on a write-only descriptor");
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    assert_eq!(buf.len(), 4, "the buffer comes back");
    let (r, buf) = c.wait();
    assert_eq!((r.unwrap(), &buf[..]), (4, &b"abcd"[..]));
}

#[test]
fn queue_depth_over_aio_max_nr_names_the_sysctl() {
    let max = aio_sys::probe::read_fs_sysctl("aio-max-nr").unwrap_or(65536);
    let depth = u32::try_from(max + 1).unwrap_or(u32::MAX).min(4_000_000);
    let e = Context::new(depth).expect_err("io_setup above aio-max-nr");
    assert_eq!(errno(&e), Some(libc::EAGAIN));
    let text = e.to_string();
    assert!(text.contains("aio-max-nr"), "{text}");
    assert!(text.contains(&max.to_string()), "{text}");
    assert!(text.contains("sysctl -w fs.aio-max-nr="), "{text}");
}

#[test]
fn zero_depth_is_explained() {
    let e = Context::new(0).expect_err("io_setup(0)");
    assert_eq!(errno(&e), Some(libc::EINVAL));
    assert!(e.to_string().contains("queue depth"), "{e}");
}

#[test]
fn unsupported_rw_flags_are_named() {
    let s = scratch_in(&shm_dir(), false);
    let ctx = Context::new(8).unwrap();
    let (r, _) = ctx.run(Read::new(&s.file, vec![0u8; 8], 0).rw_flags(RwFlags(1 << 28)));
    let e = r.expect_err("unknown RWF bit accepted");
    assert_eq!(errno(&e), Some(libc::EOPNOTSUPP));
    assert!(e.to_string().contains("RWF flags"), "{e}");
}

#[test]
fn fsync_on_a_pipe_is_explained() {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    let (_rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let ctx = Context::new(8).unwrap();
    let e = ctx.run(Fsync::new(&wr)).expect_err("fsync of a pipe");
    assert_eq!(errno(&e), Some(libc::EINVAL));
    assert!(e.to_string().contains("does not support fsync"), "{e}");
}

#[test]
fn too_many_segments_are_explained() {
    let s = scratch_in(&shm_dir(), false);
    let ctx = Context::new(8).unwrap();
    let bufs: Vec<Vec<u8>> = (0..1025).map(|_| vec![0u8; 1]).collect();
    let (r, bufs) = ctx.run(ReadV::new(&s.file, bufs, 0));
    let e = r.expect_err("1025 segments accepted");
    assert!(e.to_string().contains("UIO_MAXIOV"), "{e}");
    assert_eq!(bufs.len(), 1025);
}

#[test]
fn reading_a_directory_is_explained() {
    let dir = std::fs::File::open(scratch_dir()).unwrap();
    let ctx = Context::new(8).unwrap();
    let (r, _) = ctx.run(Read::new(&dir, vec![0u8; 8], 0));
    let e = r.expect_err("read of a directory");
    assert_eq!(errno(&e), Some(libc::EINVAL));
    assert!(e.to_string().contains("directory"), "{e}");
}
