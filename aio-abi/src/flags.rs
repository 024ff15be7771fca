use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign, Not};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `iocb.aio_lio_opcode`: an `IOCB_CMD_*` value, or any other `u16` a caller
/// put there.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(transparent)]
pub struct Opcode(pub u16);

impl Opcode {
    /// `IOCB_CMD_PREAD`: `pread(2)`; the one-segment case of `PREADV`.
    pub const PREAD: Opcode = Opcode(0);
    /// `IOCB_CMD_PWRITE`: `pwrite(2)`; the one-segment case of `PWRITEV`.
    pub const PWRITE: Opcode = Opcode(1);
    /// `IOCB_CMD_FSYNC`: `fsync(2)` (again supported since 4.18).
    pub const FSYNC: Opcode = Opcode(2);
    /// `IOCB_CMD_FDSYNC`: `fdatasync(2)` (again supported since 4.18).
    pub const FDSYNC: Opcode = Opcode(3);
    /// Value 4 was the experimental `IOCB_CMD_PREADX`; Linux rejects it.
    pub const PREADX_RETIRED: Opcode = Opcode(4);
    /// `IOCB_CMD_POLL`: one-shot `poll(2)` (since 4.18).
    pub const POLL: Opcode = Opcode(5);
    /// `IOCB_CMD_NOOP`: defined in the header, rejected by Linux with `EINVAL`.
    pub const NOOP: Opcode = Opcode(6);
    /// `IOCB_CMD_PREADV`: `preadv2(2)` (since 2.6.19).
    pub const PREADV: Opcode = Opcode(7);
    /// `IOCB_CMD_PWRITEV`: `pwritev2(2)` (since 2.6.19).
    pub const PWRITEV: Opcode = Opcode(8);

    /// The header's name for this opcode, if it has one.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "PREAD",
            1 => "PWRITE",
            2 => "FSYNC",
            3 => "FDSYNC",
            5 => "POLL",
            6 => "NOOP",
            7 => "PREADV",
            8 => "PWRITEV",
            _ => return None,
        })
    }

    /// Reads and vectored reads.
    pub const fn is_read(self) -> bool {
        matches!(self.0, 0 | 7)
    }

    /// Writes and vectored writes.
    pub const fn is_write(self) -> bool {
        matches!(self.0, 1 | 8)
    }

    /// `PREADV`/`PWRITEV`: `aio_buf` points at an iovec array.
    pub const fn is_vectored(self) -> bool {
        matches!(self.0, 7 | 8)
    }

    /// The plain command of a vectored one (`PREADV` -> `PREAD`, `PWRITEV`
    /// -> `PWRITE`); others unchanged.
    pub const fn unvectored(self) -> Opcode {
        match self.0 {
            7 => Opcode::PREAD,
            8 => Opcode::PWRITE,
            _ => self,
        }
    }
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Opcode({})", self.0),
        }
    }
}

macro_rules! bitflags_newtype {
    ($(#[$m:meta])* $name:ident($int:ty) { $($(#[$fm:meta])* $flag:ident = $val:expr;)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
        #[repr(transparent)]
        pub struct $name(pub $int);

        impl $name {
            $($(#[$fm])* pub const $flag: $name = $name($val);)*
            /// No flag set.
            pub const EMPTY: $name = $name(0);
            /// Every flag this crate knows.
            pub const ALL_KNOWN: $name = $name(0 $(| $val)*);

            /// Whether every bit of `other` is set in `self`.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
            /// Whether any bit of `other` is set in `self`.
            pub const fn intersects(self, other: $name) -> bool {
                self.0 & other.0 != 0
            }
            /// Whether no bit is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
            /// `self` with the bits of `other` added.
            pub const fn union(self, other: $name) -> $name {
                $name(self.0 | other.0)
            }
            /// `self` with the bits of `other` removed.
            pub const fn difference(self, other: $name) -> $name {
                $name(self.0 & !other.0)
            }
            /// Bits set in `self` that this crate has no name for.
            pub const fn unknown_bits(self) -> $int {
                self.0 & !Self::ALL_KNOWN.0
            }
        }

        impl BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name { $name(self.0 | rhs.0) }
        }
        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: $name) { self.0 |= rhs.0 }
        }
        impl BitAnd for $name {
            type Output = $name;
            fn bitand(self, rhs: $name) -> $name { $name(self.0 & rhs.0) }
        }
        impl Not for $name {
            type Output = $name;
            fn not(self) -> $name { $name(!self.0) }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                let mut sep = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
                    if !core::mem::replace(&mut first, false) { f.write_str(" | ")?; }
                    Ok(())
                };
                $(
                    if self.contains($name($val)) {
                        sep(f)?;
                        f.write_str(stringify!($flag))?;
                    }
                )*
                let unknown = self.unknown_bits();
                if unknown != 0 {
                    sep(f)?;
                    write!(f, "{:#x}", unknown)?;
                }
                if first {
                    f.write_str("(empty)")?;
                }
                Ok(())
            }
        }
    };
}

bitflags_newtype! {
    /// `iocb.aio_flags`: `IOCB_FLAG_*`. Linux ignores bits it does not know.
    IocbFlags(u32) {
        /// `IOCB_FLAG_RESFD`: signal the eventfd in `aio_resfd` on completion.
        RESFD = 1 << 0;
        /// `IOCB_FLAG_IOPRIO`: `aio_reqprio` holds an I/O priority.
        IOPRIO = 1 << 1;
    }
}

bitflags_newtype! {
    /// `iocb.aio_rw_flags`: the `RWF_*` flags shared with `preadv2`/`pwritev2`.
    RwFlags(i32) {
        /// `RWF_HIPRI` (4.6): accepted by AIO, then cleared.
        HIPRI = 0x01;
        /// `RWF_DSYNC` (4.7): per-I/O `O_DSYNC`.
        DSYNC = 0x02;
        /// `RWF_SYNC` (4.7): per-I/O `O_SYNC`.
        SYNC = 0x04;
        /// `RWF_NOWAIT` (4.13): fail with `EAGAIN` rather than block.
        NOWAIT = 0x08;
        /// `RWF_APPEND` (4.16): per-I/O `O_APPEND`.
        APPEND = 0x10;
        /// `RWF_NOAPPEND` (6.9): ignore an inherited `O_APPEND`.
        NOAPPEND = 0x20;
        /// `RWF_ATOMIC` (6.11): untorn write.
        ATOMIC = 0x40;
        /// `RWF_DONTCACHE` (6.14): drop the pages from the cache after the I/O.
        DONTCACHE = 0x80;
        /// `RWF_NOSIGNAL` (≈6.17): no `SIGPIPE` on pipe and socket writes.
        NOSIGNAL = 0x100;
    }
}

bitflags_newtype! {
    /// `poll(2)` event bits as `IOCB_CMD_POLL` takes them in `aio_buf` and
    /// returns them in `io_event.res` (the generic values, shared by x86-64,
    /// arm64 and riscv64).
    PollEvents(u32) {
        /// `POLLIN`
        IN = 0x0001;
        /// `POLLPRI`
        PRI = 0x0002;
        /// `POLLOUT`
        OUT = 0x0004;
        /// `POLLERR` (always added by the kernel)
        ERR = 0x0008;
        /// `POLLHUP` (always added by the kernel)
        HUP = 0x0010;
        /// `POLLNVAL`
        NVAL = 0x0020;
        /// `POLLRDNORM`
        RDNORM = 0x0040;
        /// `POLLRDBAND`
        RDBAND = 0x0080;
        /// `POLLWRNORM`
        WRNORM = 0x0100;
        /// `POLLWRBAND`
        WRBAND = 0x0200;
        /// `POLLMSG`
        MSG = 0x0400;
        /// `POLLRDHUP`
        RDHUP = 0x2000;
    }
}

/// I/O priorities for `IOCB_FLAG_IOPRIO` (`ioprio_set(2)` encoding).
pub mod ioprio {
    /// Bits the level occupies below the class.
    pub const CLASS_SHIFT: u16 = 13;
    /// `IOPRIO_CLASS_NONE`
    pub const CLASS_NONE: u16 = 0;
    /// `IOPRIO_CLASS_RT`: needs `CAP_SYS_ADMIN` or `CAP_SYS_NICE`.
    pub const CLASS_RT: u16 = 1;
    /// `IOPRIO_CLASS_BE`
    pub const CLASS_BE: u16 = 2;
    /// `IOPRIO_CLASS_IDLE`
    pub const CLASS_IDLE: u16 = 3;

    /// `IOPRIO_PRIO_VALUE(class, level)`; the value goes in `aio_reqprio`.
    pub const fn value(class: u16, level: u16) -> u16 {
        (class << CLASS_SHIFT) | (level & ((1 << CLASS_SHIFT) - 1))
    }

    /// The class of an encoded priority.
    pub const fn class(prio: u16) -> u16 {
        prio >> CLASS_SHIFT
    }

    /// The level of an encoded priority.
    pub const fn level(prio: u16) -> u16 {
        prio & ((1 << CLASS_SHIFT) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_names_flags_and_unknown_bits() {
        let f = RwFlags::NOWAIT | RwFlags::DSYNC | RwFlags(0x4000);
        assert_eq!(format!("{f:?}"), "DSYNC | NOWAIT | 0x4000");
        assert_eq!(format!("{:?}", RwFlags::EMPTY), "(empty)");
        assert_eq!(format!("{:?}", Opcode(42)), "Opcode(42)");
        assert_eq!(format!("{:?}", Opcode::PWRITEV), "PWRITEV");
    }

    #[test]
    fn flag_algebra() {
        let f = IocbFlags::RESFD | IocbFlags::IOPRIO;
        assert!(f.contains(IocbFlags::RESFD));
        assert_eq!(f.difference(IocbFlags::RESFD), IocbFlags::IOPRIO);
        assert_eq!(RwFlags::ALL_KNOWN.0, 0x1ff);
        assert_eq!(RwFlags(0x200).unknown_bits(), 0x200);
    }

    #[test]
    fn ioprio_round_trips() {
        let p = ioprio::value(ioprio::CLASS_BE, 4);
        assert_eq!(p, 0x4004);
        assert_eq!(ioprio::class(p), ioprio::CLASS_BE);
        assert_eq!(ioprio::level(p), 4);
    }
}
