//! User memory and ring memory of the engine's own process.

use core::sync::atomic::{AtomicU32, Ordering};
use std::io;

use aio_abi::Errno;

use crate::host::RingMemory;

fn errno() -> Errno {
    Errno(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Reads `dst.len()` bytes at `addr` of process `pid` (this one: the
/// engine's, cached to spare a `getpid` per copy) through the kernel's
/// page-table walk, so an unmapped or protected address is `EFAULT`, never
/// a crash.
pub(crate) fn copy_from_user(pid: libc::pid_t, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
    if dst.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr().cast(),
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: dst.len(),
    };
    // SAFETY: `local` describes `dst`, which we borrow mutably; `remote` is
    // only read by the kernel, which validates it.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if n == dst.len() as isize {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

/// Writes `src` at `addr` of this process (`pid`); `EFAULT` if the range
/// is not writable.
///
/// # Safety
///
/// `addr..addr + src.len()` must be memory the caller of the engine allowed
/// it to write (an iocb, an event array, a `*ctxp`), or unmapped: writing
/// through the kernel is still writing into this process.
pub(crate) unsafe fn copy_to_user(pid: libc::pid_t, addr: u64, src: &[u8]) -> Result<(), Errno> {
    if src.is_empty() {
        return Ok(());
    }
    let local = libc::iovec {
        iov_base: src.as_ptr() as *mut libc::c_void,
        iov_len: src.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: src.len(),
    };
    // SAFETY: `local` is only read; the caller vouches for `remote`.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if n == src.len() as isize {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

/// An anonymous shared mapping holding an `aio_ring`, unmapped on drop.
pub struct EngineRing {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; header words are
// accessed atomically and events are written under the context's lock.
unsafe impl Send for EngineRing {}
// SAFETY: as above.
unsafe impl Sync for EngineRing {}

impl EngineRing {
    /// Maps `len` bytes, at exactly `at` if given (never replacing an
    /// existing mapping: `EEXIST`).
    pub(crate) fn map(len: u64, at: Option<u64>) -> Result<EngineRing, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::ENOMEM)?;
        let mut flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        let hint = match at {
            Some(a) => {
                flags |= libc::MAP_FIXED_NOREPLACE;
                a as *mut libc::c_void
            }
            None => core::ptr::null_mut(),
        };
        // SAFETY: an anonymous mapping; MAP_FIXED_NOREPLACE never clobbers
        // an existing mapping.
        let p = unsafe { libc::mmap(hint, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            let e = errno();
            return Err(if at.is_some() { e } else { Errno::ENOMEM });
        }
        if let Some(a) = at {
            if p as u64 != a {
                // A kernel older than 4.17 took the flag as a hint.
                // SAFETY: we just mapped exactly this range.
                unsafe { libc::munmap(p, len) };
                return Err(Errno::EEXIST);
            }
        }
        Ok(EngineRing { ptr: p.cast(), len })
    }

    fn word(&self, offset: u64) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.len as u64);
        // SAFETY: in bounds and aligned (checked above; the mapping is page
        // aligned); the mapping lives as long as `self`; all accesses to
        // header words go through atomics (user space's too, by the
        // aio_ring protocol).
        unsafe { AtomicU32::from_ptr(self.ptr.add(offset as usize).cast()) }
    }
}

impl Drop for EngineRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map` with this length and is
        // no longer referenced (the context holding it is gone).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

impl RingMemory for EngineRing {
    fn addr(&self) -> u64 {
        self.ptr as u64
    }
    fn size(&self) -> u64 {
        self.len as u64
    }
    fn load_u32(&self, offset: u64) -> u32 {
        self.word(offset).load(Ordering::Acquire)
    }
    fn store_u32(&self, offset: u64, value: u32) {
        self.word(offset).store(value, Ordering::Release);
    }
    fn write(&self, offset: u64, src: &[u8]) {
        assert!(offset + src.len() as u64 <= self.len as u64);
        // SAFETY: in bounds; events are written only by the core under the
        // completion lock, and readers read them only after an acquire load
        // of a tail published after this write.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset as usize), src.len())
        };
    }
    fn read(&self, offset: u64, dst: &mut [u8]) {
        assert!(offset + dst.len() as u64 <= self.len as u64);
        // SAFETY: in bounds; these events were published before the tail
        // the reader loaded with acquire ordering.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.ptr.add(offset as usize),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
    }
}
