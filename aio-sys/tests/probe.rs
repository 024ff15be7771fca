//! The capability probe against the running kernel (6.x here).

use aio_sys::abi::{Errno, Opcode, RwFlags};
use aio_sys::probe::Support;

#[test]
fn probe_reports_what_this_kernel_accepts() {
    let caps = aio_sys::probe(None);
    assert_eq!(caps.setup, Ok(()), "AIO works on the test machine");
    assert_eq!(caps.incomplete, None);
    assert!(caps.aio_max_nr.is_some() && caps.aio_nr.is_some());
    for op in [
        Opcode::PREAD,
        Opcode::PWRITE,
        Opcode::PREADV,
        Opcode::PWRITEV,
    ] {
        assert_eq!(caps.opcode(op), Some(Support::Yes), "{op:?}");
    }
    // Since 4.18.
    for op in [Opcode::FSYNC, Opcode::FDSYNC, Opcode::POLL] {
        assert_eq!(caps.opcode(op), Some(Support::Yes), "{op:?}");
    }
    assert_eq!(caps.opcode(Opcode::NOOP), Some(Support::No(Errno::EINVAL)));
    // Present since 4.7/4.13/4.16; probed on a regular file in the temp dir.
    for flag in [
        RwFlags::HIPRI,
        RwFlags::DSYNC,
        RwFlags::SYNC,
        RwFlags::NOWAIT,
        RwFlags::APPEND,
    ] {
        assert_eq!(caps.rw_flag(flag), Some(Support::Yes), "{flag:?}");
    }
    assert_eq!(
        caps.rw_flags.len(),
        9,
        "every RWF_* flag through RWF_NOSIGNAL is probed"
    );
    assert!(
        caps.supported_rw_flags()
            .contains(RwFlags::NOWAIT | RwFlags::DSYNC)
    );
    assert_eq!(caps.pgetevents, Support::Yes);
    assert!(
        caps.kernel_release
            .starts_with(|c: char| c.is_ascii_digit())
    );
}

#[test]
fn probe_reports_a_refused_flag_with_the_kernels_errno() {
    let caps = aio_sys::probe(None);
    // RWF_ATOMIC on a 1-byte write is refused on every kernel: before 6.11
    // as an unknown flag, after it because the length is not a valid
    // atomic unit (or the filesystem lacks support).
    match caps.rw_flag(RwFlags::ATOMIC) {
        Some(Support::No(e)) => assert!(
            [Errno::EOPNOTSUPP, Errno::EINVAL].contains(&e),
            "unexpected errno {e:?}"
        ),
        other => panic!("RWF_ATOMIC on a 1-byte write: {other:?}"),
    }
}

#[test]
fn page_cache_holds_follows_the_cache() {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    let dir = std::env::var_os("AIO_TEST_DIR").map_or_else(std::env::temp_dir, Into::into);
    let mut f = tempfile::tempfile_in(dir).unwrap();
    f.write_all(&vec![7u8; 1 << 20]).unwrap();
    let fd = f.as_raw_fd();
    let Some(held) = aio_sys::page_cache_holds(fd, 0, 1 << 20) else {
        eprintln!("SKIPPED: no cachestat (Linux < 6.5)");
        return;
    };
    // Just written: in the cache.
    assert!(held);
    assert_eq!(aio_sys::page_cache_holds(fd, 4096, 8192), Some(true));
    // Past the end there is nothing to hold.
    assert_eq!(aio_sys::page_cache_holds(fd, 2 << 20, 4096), Some(false));
    f.sync_all().unwrap();
    // SAFETY: advice on our own descriptor.
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::fstatfs(fd, &mut sfs) }, 0);
    if sfs.f_type != libc::TMPFS_MAGIC as _ {
        assert_eq!(aio_sys::page_cache_holds(fd, 0, 1 << 20), Some(false));
    }
}
