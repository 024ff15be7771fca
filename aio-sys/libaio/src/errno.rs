//! libaio's convention: the result carries `-errno`, `errno` itself is left
//! as the caller had it.

/// Restores the calling thread's `errno` when dropped.
///
/// The system call wrappers of `aio-sys` go through `syscall(3)`, which sets
/// `errno` on failure; every exported function holds one of these for the
/// duration of its own work, so callers never see `errno` change.
pub(crate) struct KeepErrno(libc::c_int);

impl KeepErrno {
    /// Saves the current `errno`.
    pub(crate) fn new() -> KeepErrno {
        // SAFETY: `__errno_location` returns the calling thread's errno slot,
        // valid for the life of the thread.
        KeepErrno(unsafe { *libc::__errno_location() })
    }
}

impl Drop for KeepErrno {
    fn drop(&mut self) {
        // SAFETY: as in `new`; the guard lives in one call frame, so this is
        // the thread whose errno was saved.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// A `Result` as libaio returns it: the count, or `-errno`.
pub(crate) fn ret(r: Result<libc::c_long, aio_abi::Errno>) -> libc::c_int {
    match r {
        Ok(n) => n as libc::c_int,
        Err(e) => -e.0,
    }
}
