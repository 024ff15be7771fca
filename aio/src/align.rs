//! `O_DIRECT` alignment: what a file requires, and refusing misaligned
//! requests before they reach the kernel.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use aio_abi::{Errno, IoVec};

use crate::error::explained;

/// Where a [`DioAlignment`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignmentSource {
    /// `statx(STATX_DIOALIGN)` (Linux 6.1+ for filesystems, 6.11+ for block
    /// devices).
    Statx,
    /// The block device's logical block size (`BLKSSZGET`).
    LogicalBlockSize,
    /// The filesystem's block size (`st_blksize`), a conservative guess.
    BlockSize,
}

/// The alignment `O_DIRECT` requests on a file must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlignment {
    /// Buffer addresses must be multiples of this.
    pub memory: usize,
    /// File offsets and segment lengths must be multiples of this.
    pub offset: usize,
    /// How it was found.
    pub source: AlignmentSource,
}

impl DioAlignment {
    /// Why `offset` and `segments` break this alignment, or `None` if they
    /// respect it.
    fn violation(&self, offset: i64, segments: &[IoVec]) -> Option<String> {
        let (mem, off) = (self.memory.max(1) as u64, self.offset.max(1) as u64);
        let what = if offset as u64 % off != 0 {
            format!("file offset {offset} is not a multiple of {off}")
        } else if let Some(v) = segments.iter().find(|v| v.iov_base % mem != 0) {
            format!(
                "buffer address {:#x} is not a multiple of {mem}",
                v.iov_base
            )
        } else if let Some(v) = segments.iter().find(|v| v.iov_len % off != 0) {
            format!("length {} is not a multiple of {off}", v.iov_len)
        } else {
            return None;
        };
        Some(format!(
            "O_DIRECT requires {mem}-byte aligned buffers and {off}-byte aligned offsets and \
             lengths (from {}): {what}",
            match self.source {
                AlignmentSource::Statx => "statx STATX_DIOALIGN",
                AlignmentSource::LogicalBlockSize => "the device's logical block size",
                AlignmentSource::BlockSize => "the filesystem block size",
            }
        ))
    }
}

/// The `O_DIRECT` alignment of the file behind `fd`, whether or not it is
/// open with `O_DIRECT`.
///
/// `statx(STATX_DIOALIGN)` where the kernel reports it (with the memory
/// alignment raised to the offset alignment, because some drivers mishandle
/// buffers that are less aligned than a block); otherwise the logical block
/// size of a block device, else the filesystem's block size.
/// An error of kind `Unsupported` if statx says the file cannot do direct
/// I/O at all.
///
/// ```
/// let file = std::fs::File::open("/").unwrap();
/// let a = aio::dio_alignment(&file);
/// if let Ok(a) = a {
///     assert!(a.memory.is_power_of_two() && a.offset.is_power_of_two());
/// }
/// ```
pub fn dio_alignment(fd: impl AsFd) -> io::Result<DioAlignment> {
    dio_alignment_raw(fd.as_fd().as_raw_fd())
}

fn dio_alignment_raw(fd: RawFd) -> io::Result<DioAlignment> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: an empty path with AT_EMPTY_PATH names `fd` itself; `stx` is a
    // writable statx buffer.
    let rc = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN | libc::STATX_TYPE,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded and filled the structure (zeroed beforehand).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_DIOALIGN != 0 {
        if stx.stx_dio_offset_align == 0 {
            return Err(explained(
                Errno::EOPNOTSUPP,
                "the file does not support O_DIRECT (statx reports no direct I/O alignment)".into(),
            ));
        }
        // Buffers are held to the offset alignment too, not only to what
        // statx allows: on Linux 6.18 zram reports 512-byte memory
        // alignment but an O_DIRECT read into a buffer that is not
        // page-aligned overwrites the whole pages around it, corrupting
        // the caller's heap (shown by aio/tests/zram_alignment.rs).
        let offset = stx.stx_dio_offset_align as usize;
        return Ok(DioAlignment {
            memory: (stx.stx_dio_mem_align as usize).max(offset),
            offset,
            source: AlignmentSource::Statx,
        });
    }
    if u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFBLK {
        let mut size: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int.
        if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut size) } == 0 && size > 0 {
            return Ok(DioAlignment {
                memory: size as usize,
                offset: size as usize,
                source: AlignmentSource::LogicalBlockSize,
            });
        }
    }
    let blksize = (stx.stx_blksize as usize).max(512);
    Ok(DioAlignment {
        memory: blksize,
        offset: blksize,
        source: AlignmentSource::BlockSize,
    })
}

/// Whether `fd` is open with `O_DIRECT` (`fcntl(F_GETFL)`).
pub fn is_direct(fd: impl AsFd) -> io::Result<bool> {
    is_direct_raw(fd.as_fd().as_raw_fd())
}

fn is_direct_raw(fd: RawFd) -> io::Result<bool> {
    // SAFETY: F_GETFL takes no pointer argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & libc::O_DIRECT != 0)
}

/// No device or filesystem this crate knows requires more than this, so a
/// request aligned to it needs no system call to be checked.
const SAFE_ALIGN: u64 = 4096;

/// Refuses reads and writes that `O_DIRECT` would reject with a bare
/// `EINVAL`, remembering what it learnt about the last descriptor.
///
/// Costs nothing for 4 KiB-aligned requests; otherwise one `fcntl` per
/// descriptor (plus one `statx` for `O_DIRECT` ones) for as long as the
/// cache lives, which is one submission batch.
#[derive(Default)]
pub(crate) struct DirectCache {
    last: Option<(RawFd, Option<DioAlignment>)>,
}

impl DirectCache {
    pub(crate) fn check(&mut self, fd: RawFd, offset: i64, segments: &[IoVec]) -> io::Result<()> {
        let aligned = offset as u64 % SAFE_ALIGN == 0
            && segments
                .iter()
                .all(|v| (v.iov_base | v.iov_len) % SAFE_ALIGN == 0);
        if aligned {
            return Ok(());
        }
        let alignment = match self.last {
            Some((cached, alignment)) if cached == fd => alignment,
            _ => {
                // A bad fd is the kernel's to report (EBADF in the result).
                let alignment = if is_direct_raw(fd).unwrap_or(false) {
                    dio_alignment_raw(fd).ok()
                } else {
                    None
                };
                self.last = Some((fd, alignment));
                alignment
            }
        };
        match alignment.and_then(|a| a.violation(offset, segments)) {
            None => Ok(()),
            Some(text) => Err(explained(
                Errno::EINVAL,
                format!("refused before submission: {text}"),
            )),
        }
    }
}

/// For an `EINVAL` from a read or write: the `O_DIRECT` alignment
/// explanation, if `fd` is open with `O_DIRECT`.
pub(crate) fn explain_einval(fd: RawFd) -> Option<String> {
    if !is_direct_raw(fd).ok()? {
        return None;
    }
    let a = dio_alignment_raw(fd).ok()?;
    Some(format!(
        "O_DIRECT rejected the request: buffers must be {}-byte aligned and offsets and lengths \
         multiples of {}",
        a.memory, a.offset
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_name_the_alignment() {
        let a = DioAlignment {
            memory: 512,
            offset: 4096,
            source: AlignmentSource::Statx,
        };
        let ok = [IoVec {
            iov_base: 8192,
            iov_len: 4096,
        }];
        assert_eq!(a.violation(4096, &ok), None);
        assert!(a.violation(1, &ok).unwrap().contains("4096"));
        let bad_addr = [IoVec {
            iov_base: 8193,
            iov_len: 4096,
        }];
        assert!(a.violation(0, &bad_addr).unwrap().contains("512"));
        let bad_len = [IoVec {
            iov_base: 8192,
            iov_len: 100,
        }];
        assert!(a.violation(0, &bad_len).unwrap().contains("length 100"));
    }
}
