//! System call numbers of the AIO calls per architecture.

/// The six AIO system call numbers of one architecture.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Numbers {
    /// `io_setup`
    pub io_setup: i64,
    /// `io_destroy`
    pub io_destroy: i64,
    /// `io_submit`
    pub io_submit: i64,
    /// `io_cancel`
    pub io_cancel: i64,
    /// `io_getevents`
    pub io_getevents: i64,
    /// `io_pgetevents`
    pub io_pgetevents: i64,
}

/// x86-64.
pub const X86_64: Numbers = Numbers {
    io_setup: 206,
    io_destroy: 207,
    io_getevents: 208,
    io_submit: 209,
    io_cancel: 210,
    io_pgetevents: 333,
};

/// The asm-generic table, used by arm64 and riscv64.
pub const ASM_GENERIC: Numbers = Numbers {
    io_setup: 0,
    io_destroy: 1,
    io_submit: 2,
    io_cancel: 3,
    io_getevents: 4,
    io_pgetevents: 292,
};

/// arm64.
pub const AARCH64: Numbers = ASM_GENERIC;
/// riscv64.
pub const RISCV64: Numbers = ASM_GENERIC;

/// The numbers of the architecture this crate is compiled for.
#[cfg(target_arch = "x86_64")]
pub const NATIVE: Numbers = X86_64;
/// The numbers of the architecture this crate is compiled for.
#[cfg(target_arch = "aarch64")]
pub const NATIVE: Numbers = AARCH64;
/// The numbers of the architecture this crate is compiled for.
#[cfg(target_arch = "riscv64")]
pub const NATIVE: Numbers = RISCV64;

/// `cachestat(2)` (Linux 6.5): the page-cache state of a file range,
/// without reading it (a read with `RWF_NOWAIT` that misses starts
/// readahead). The same number on every architecture.
pub const CACHESTAT: i64 = 451;

/// `struct cachestat_range`: `len` 0 means to the end of the file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachestatRange {
    /// First byte.
    pub off: u64,
    /// Bytes.
    pub len: u64,
}

impl CachestatRange {
    /// The range of `len` bytes at `off` (a negative offset is 0; an empty
    /// range is one byte, never cachestat's "to the end of the file").
    pub const fn bytes(off: i64, len: u64) -> CachestatRange {
        CachestatRange {
            off: if off < 0 { 0 } else { off as u64 },
            len: if len == 0 { 1 } else { len },
        }
    }

    /// Pages of `page` bytes the range touches: all of them cached means
    /// a read of it will not wait.
    pub const fn pages(&self, page: u64) -> u64 {
        (self.off + self.len).div_ceil(page) - self.off / page
    }
}

/// `struct cachestat`, in pages.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cachestat {
    /// Pages of the range in the page cache.
    pub nr_cache: u64,
    /// Of those, dirty.
    pub nr_dirty: u64,
    /// Of those, under writeback.
    pub nr_writeback: u64,
    /// Pages evicted from the cache.
    pub nr_evicted: u64,
    /// Of those, recently.
    pub nr_recently_evicted: u64,
}

#[cfg(test)]
mod tests {
    use super::CachestatRange;

    #[test]
    fn a_cachestat_range_counts_every_page_it_touches() {
        let pages = |off, len| CachestatRange::bytes(off, len).pages(4096);
        assert_eq!(pages(0, 4096), 1);
        assert_eq!(pages(1, 4096), 2);
        assert_eq!(pages(4095, 2), 2);
        assert_eq!(pages(8192, 3 * 4096), 3);
        // Empty: one byte (cachestat's 0 would mean to the end of the file).
        assert_eq!(CachestatRange::bytes(100, 0).len, 1);
        assert_eq!(pages(100, 0), 1);
        // A negative offset (a stream's -1) is the start.
        assert_eq!(CachestatRange::bytes(-1, 10).off, 0);
    }
}
