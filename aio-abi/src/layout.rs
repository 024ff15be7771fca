use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{Errno, IocbFlags, Opcode, PollEvents, RwFlags};

/// `aio_context_t`: the user address of the context's ring mapping.
pub type AioContext = u64;

/// `AIO_RING_MAGIC`, the first check a user-space reaper makes.
pub const AIO_RING_MAGIC: u32 = 0xa10a_10a1;
/// `AIO_RING_COMPAT_FEATURES`
pub const AIO_RING_COMPAT_FEATURES: u32 = 1;
/// `AIO_RING_INCOMPAT_FEATURES`: a reaper must see exactly this value.
pub const AIO_RING_INCOMPAT_FEATURES: u32 = 0;
/// Size of the `aio_ring` header; events start here.
pub const RING_HEADER_LEN: u32 = 32;
/// `UIO_MAXIOV`: the most segments one vectored request may have.
pub const UIO_MAXIOV: u64 = 1024;
/// `MAX_RW_COUNT` with 4 KiB pages: `INT_MAX & PAGE_MASK`, the cap on one transfer.
pub const MAX_RW_COUNT: u64 = 0x7fff_f000;

/// `struct iocb`: one request, 64 bytes.
///
/// `aio_key` is always the low half of the 64-bit word at offset 8, so its
/// position swaps with `aio_rw_flags` on big-endian machines, as in the
/// kernel header.
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Iocb {
    /// Opaque; copied into `io_event.data`.
    pub aio_data: u64,
    /// Written 0 by the kernel during submission (`KIOCB_KEY`).
    #[cfg(target_endian = "little")]
    pub aio_key: u32,
    /// `RWF_*` flags for reads and writes.
    pub aio_rw_flags: RwFlags,
    /// Written 0 by the kernel during submission (`KIOCB_KEY`).
    #[cfg(target_endian = "big")]
    pub aio_key: u32,
    /// `IOCB_CMD_*`.
    pub aio_lio_opcode: Opcode,
    /// I/O priority, used only with [`IocbFlags::IOPRIO`].
    pub aio_reqprio: i16,
    /// The file descriptor the request targets.
    pub aio_fildes: u32,
    /// Buffer address; iovec array address for vectored requests; poll mask for `POLL`.
    pub aio_buf: u64,
    /// Byte count; iovec count for vectored requests.
    pub aio_nbytes: u64,
    /// File offset.
    pub aio_offset: i64,
    /// Must be zero.
    pub aio_reserved2: u64,
    /// `IOCB_FLAG_*`.
    pub aio_flags: IocbFlags,
    /// Eventfd to signal, used only with [`IocbFlags::RESFD`].
    pub aio_resfd: u32,
}

impl Iocb {
    const fn rw(opcode: Opcode, fd: i32, addr: u64, len: u64, offset: i64) -> Iocb {
        Iocb {
            aio_data: 0,
            aio_key: 0,
            aio_rw_flags: RwFlags::EMPTY,
            aio_lio_opcode: opcode,
            aio_reqprio: 0,
            aio_fildes: fd as u32,
            aio_buf: addr,
            aio_nbytes: len,
            aio_offset: offset,
            aio_reserved2: 0,
            aio_flags: IocbFlags::EMPTY,
            aio_resfd: 0,
        }
    }

    /// `io_prep_pread`: read `len` bytes at `offset` into the buffer at `buf`.
    pub const fn pread(fd: i32, buf: u64, len: u64, offset: i64) -> Iocb {
        Iocb::rw(Opcode::PREAD, fd, buf, len, offset)
    }

    /// `io_prep_pwrite`: write `len` bytes from `buf` at `offset`.
    pub const fn pwrite(fd: i32, buf: u64, len: u64, offset: i64) -> Iocb {
        Iocb::rw(Opcode::PWRITE, fd, buf, len, offset)
    }

    /// `io_prep_preadv`: scatter-read into the `count` [`IoVec`]s at `iov`.
    pub const fn preadv(fd: i32, iov: u64, count: u64, offset: i64) -> Iocb {
        Iocb::rw(Opcode::PREADV, fd, iov, count, offset)
    }

    /// `io_prep_pwritev`: gather-write from the `count` [`IoVec`]s at `iov`.
    pub const fn pwritev(fd: i32, iov: u64, count: u64, offset: i64) -> Iocb {
        Iocb::rw(Opcode::PWRITEV, fd, iov, count, offset)
    }

    /// `io_prep_preadv2`: [`Iocb::preadv`] with `RWF_*` flags.
    pub const fn preadv2(fd: i32, iov: u64, count: u64, offset: i64, flags: RwFlags) -> Iocb {
        Iocb::preadv(fd, iov, count, offset).with_rw_flags(flags)
    }

    /// `io_prep_pwritev2`: [`Iocb::pwritev`] with `RWF_*` flags.
    pub const fn pwritev2(fd: i32, iov: u64, count: u64, offset: i64, flags: RwFlags) -> Iocb {
        Iocb::pwritev(fd, iov, count, offset).with_rw_flags(flags)
    }

    /// `io_prep_fsync`.
    pub const fn fsync(fd: i32) -> Iocb {
        Iocb::rw(Opcode::FSYNC, fd, 0, 0, 0)
    }

    /// `io_prep_fdsync`.
    pub const fn fdsync(fd: i32) -> Iocb {
        Iocb::rw(Opcode::FDSYNC, fd, 0, 0, 0)
    }

    /// `io_prep_poll`: one-shot readiness for `events` (`POLLERR`/`POLLHUP`
    /// are always reported).
    pub const fn poll(fd: i32, events: PollEvents) -> Iocb {
        Iocb::rw(Opcode::POLL, fd, events.0 as u64, 0, 0)
    }

    /// Sets `aio_data`, returned verbatim in the event.
    pub const fn with_data(mut self, data: u64) -> Iocb {
        self.aio_data = data;
        self
    }

    /// Sets `aio_rw_flags`.
    pub const fn with_rw_flags(mut self, flags: RwFlags) -> Iocb {
        self.aio_rw_flags = flags;
        self
    }

    /// `io_set_eventfd`: signal `eventfd` when this request completes.
    pub const fn with_eventfd(mut self, eventfd: i32) -> Iocb {
        self.aio_flags = self.aio_flags.union(IocbFlags::RESFD);
        self.aio_resfd = eventfd as u32;
        self
    }

    /// Sets an I/O priority (see [`crate::ioprio::value`]).
    pub const fn with_ioprio(mut self, prio: u16) -> Iocb {
        self.aio_flags = self.aio_flags.union(IocbFlags::IOPRIO);
        self.aio_reqprio = prio as i16;
        self
    }

    /// The target fd as the caller wrote it (an `int` in C).
    pub const fn fd(&self) -> i32 {
        self.aio_fildes as i32
    }
}

/// `struct io_event`: one completion, 32 bytes.
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct IoEvent {
    /// Copy of the request's `aio_data`.
    pub data: u64,
    /// User address of the request's iocb.
    pub obj: u64,
    /// Bytes transferred, poll mask, or `-errno`.
    pub res: i64,
    /// Always 0 in current kernels.
    pub res2: i64,
}

impl IoEvent {
    /// `res` as a result: `Err` for `-errno`.
    pub const fn result(&self) -> Result<u64, Errno> {
        match Errno::from_ret(self.res) {
            Ok(n) => Ok(n as u64),
            Err(e) => Err(e),
        }
    }
}

/// The 32-byte header of the `aio_ring` mapping; events follow it.
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RingHeader {
    /// Index of the context in the process's context table.
    pub id: u32,
    /// Capacity in events (`ring_nr`).
    pub nr: u32,
    /// Consumer index.
    pub head: u32,
    /// Producer index, written only by the kernel.
    pub tail: u32,
    /// [`AIO_RING_MAGIC`].
    pub magic: u32,
    /// [`AIO_RING_COMPAT_FEATURES`].
    pub compat_features: u32,
    /// [`AIO_RING_INCOMPAT_FEATURES`].
    pub incompat_features: u32,
    /// [`RING_HEADER_LEN`].
    pub header_length: u32,
}

/// `struct iovec` as the kernel reads it from a 64-bit process.
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct IoVec {
    /// Start of the segment.
    pub iov_base: u64,
    /// Length of the segment.
    pub iov_len: u64,
}

/// The sigset argument of `io_pgetevents` (no longer in the UAPI headers).
#[derive(
    Clone, Copy, PartialEq, Eq, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct AioSigset {
    /// Address of a `sigset_t`, or 0 to leave the mask alone.
    pub sigmask: u64,
    /// Must equal the kernel's sigset size (8 on x86-64).
    pub sigsetsize: u64,
}

/// Ring geometry, computed as `io_setup` does (spec §2.1).
pub mod ring_layout {
    use super::RING_HEADER_LEN;
    use crate::Errno;

    /// The largest doubled request count `io_setup` accepts.
    pub const MAX_EVENTS: u64 = 0x80_0000;

    /// What `io_setup(nr_events)` maps.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct RingGeometry {
        /// Pages in the mapping.
        pub pages: u64,
        /// Event capacity of the ring (`ring->nr`).
        pub ring_nr: u32,
    }

    /// Geometry for `nr_events` on a machine with `possible_cpus` CPUs and
    /// `page_size`-byte pages, or the errno `io_setup` returns for it before
    /// consulting `aio-max-nr`.
    pub const fn for_request(
        nr_events: u32,
        possible_cpus: u32,
        page_size: u64,
    ) -> Result<RingGeometry, Errno> {
        if nr_events == 0 {
            return Err(Errno::EINVAL);
        }
        let min = 4u32.wrapping_mul(possible_cpus);
        let a = if nr_events > min { nr_events } else { min };
        // The kernel doubles in 32 bits: the product can wrap to 0.
        let b = a.wrapping_mul(2) as u64;
        if b > MAX_EVENTS {
            return Err(Errno::EINVAL);
        }
        if b == 0 {
            return Err(Errno::EAGAIN);
        }
        let bytes = RING_HEADER_LEN as u64 + 32 * (b + 2);
        let pages = bytes.div_ceil(page_size);
        let ring_nr = (pages * page_size - RING_HEADER_LEN as u64) / 32;
        Ok(RingGeometry {
            pages,
            ring_nr: ring_nr as u32,
        })
    }
}

// The layouts are the ABI: any drift is a compile error.
const _: () = {
    assert!(size_of::<Iocb>() == 64);
    assert!(offset_of!(Iocb, aio_data) == 0);
    #[cfg(target_endian = "little")]
    assert!(offset_of!(Iocb, aio_key) == 8 && offset_of!(Iocb, aio_rw_flags) == 12);
    #[cfg(target_endian = "big")]
    assert!(offset_of!(Iocb, aio_rw_flags) == 8 && offset_of!(Iocb, aio_key) == 12);
    assert!(offset_of!(Iocb, aio_lio_opcode) == 16);
    assert!(offset_of!(Iocb, aio_reqprio) == 18);
    assert!(offset_of!(Iocb, aio_fildes) == 20);
    assert!(offset_of!(Iocb, aio_buf) == 24);
    assert!(offset_of!(Iocb, aio_nbytes) == 32);
    assert!(offset_of!(Iocb, aio_offset) == 40);
    assert!(offset_of!(Iocb, aio_reserved2) == 48);
    assert!(offset_of!(Iocb, aio_flags) == 56);
    assert!(offset_of!(Iocb, aio_resfd) == 60);

    assert!(size_of::<IoEvent>() == 32);
    assert!(offset_of!(IoEvent, data) == 0);
    assert!(offset_of!(IoEvent, obj) == 8);
    assert!(offset_of!(IoEvent, res) == 16);
    assert!(offset_of!(IoEvent, res2) == 24);

    assert!(size_of::<RingHeader>() == RING_HEADER_LEN as usize);
    assert!(offset_of!(RingHeader, id) == 0);
    assert!(offset_of!(RingHeader, nr) == 4);
    assert!(offset_of!(RingHeader, head) == 8);
    assert!(offset_of!(RingHeader, tail) == 12);
    assert!(offset_of!(RingHeader, magic) == 16);
    assert!(offset_of!(RingHeader, compat_features) == 20);
    assert!(offset_of!(RingHeader, incompat_features) == 24);
    assert!(offset_of!(RingHeader, header_length) == 28);

    assert!(size_of::<IoVec>() == 16);
    assert!(offset_of!(IoVec, iov_base) == 0);
    assert!(offset_of!(IoVec, iov_len) == 8);

    assert!(size_of::<AioSigset>() == 16);
    assert!(offset_of!(AioSigset, sigmask) == 0);
    assert!(offset_of!(AioSigset, sigsetsize) == 8);
};

#[cfg(test)]
mod tests {
    use super::ring_layout::{RingGeometry, for_request};
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn ring_geometry_matches_the_spec_examples() {
        // Spec §2.1, 8 CPUs.
        assert_eq!(
            for_request(1, 8, 4096),
            Ok(RingGeometry {
                pages: 1,
                ring_nr: 127
            })
        );
        assert_eq!(
            for_request(128, 8, 4096),
            Ok(RingGeometry {
                pages: 3,
                ring_nr: 383
            })
        );
        assert_eq!(for_request(0, 8, 4096), Err(Errno::EINVAL));
        assert_eq!(for_request(0x40_0001, 8, 4096), Err(Errno::EINVAL));
        assert_eq!(for_request(0x8000_0000, 1, 4096), Err(Errno::EAGAIN));
    }

    #[test]
    fn constructors_fill_the_fields_libaio_fills() {
        let iocb = Iocb::pwritev2(3, 0x1000, 7, 4096, RwFlags::DSYNC)
            .with_data(99)
            .with_eventfd(5)
            .with_ioprio(crate::ioprio::value(crate::ioprio::CLASS_BE, 2));
        assert_eq!(iocb.aio_lio_opcode, Opcode::PWRITEV);
        assert_eq!(iocb.aio_fildes, 3);
        assert_eq!(
            (iocb.aio_buf, iocb.aio_nbytes, iocb.aio_offset),
            (0x1000, 7, 4096)
        );
        assert_eq!(iocb.aio_rw_flags, RwFlags::DSYNC);
        assert_eq!(iocb.aio_flags, IocbFlags::RESFD | IocbFlags::IOPRIO);
        assert_eq!((iocb.aio_resfd, iocb.aio_data), (5, 99));
        assert_eq!(Iocb::poll(4, PollEvents::IN).aio_buf, 1);
        assert_eq!(Iocb::fdsync(4).aio_lio_opcode, Opcode::FDSYNC);
        // The kernel reads raw bytes: check the byte image of one field.
        let bytes = iocb.as_bytes();
        assert_eq!(&bytes[16..18], &8u16.to_ne_bytes());
    }

    #[test]
    fn event_result_splits_errno() {
        let ev = IoEvent {
            res: -22,
            ..Default::default()
        };
        assert_eq!(ev.result(), Err(Errno::EINVAL));
        let ev = IoEvent {
            res: 4096,
            ..Default::default()
        };
        assert_eq!(ev.result(), Ok(4096));
    }
}
