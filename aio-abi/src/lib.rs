//! The Linux native AIO ABI as plain data.
//!
//! Every type here has exactly the layout the kernel uses (`struct iocb`,
//! `struct io_event`, the `aio_ring` header, the user `iovec`, the
//! `io_pgetevents` sigset argument) and derives zerocopy's traits, so the same
//! bytes can be handed to the running kernel by `aio-sys` and parsed by the
//! Rust kernel half in `aio-kernel`. Opcodes and flags are newtypes rather
//! than enums: a kernel must be able to receive, represent and reject values
//! it does not know.
//!
//! Nothing in this crate dereferences a pointer; constructors only fill
//! fields, like libaio's `io_prep_*`.
#![cfg_attr(not(test), no_std)]

mod errno;
mod flags;
mod layout;
pub mod syscall;

pub use errno::Errno;
pub use flags::{IocbFlags, Opcode, PollEvents, RwFlags, ioprio};
pub use layout::{
    AIO_RING_COMPAT_FEATURES, AIO_RING_INCOMPAT_FEATURES, AIO_RING_MAGIC, AioContext, AioSigset,
    IoEvent, IoVec, Iocb, MAX_RW_COUNT, RING_HEADER_LEN, RingHeader, UIO_MAXIOV, ring_layout,
};
