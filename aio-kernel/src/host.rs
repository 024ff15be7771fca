//! The `Host` trait: everything the core needs from the outside world.
//!
//! A host is what Linux calls "the rest of the kernel": user memory, the fd
//! table, the file operations, eventfds, sleeping and waking, time, and the
//! memory the ring lives in. The core never touches any of these directly.

use alloc::sync::Arc;
use alloc::vec::Vec;

use aio_abi::{Errno, IoVec, PollEvents, RwFlags};

/// What a host gives the core. One host serves one address space ("process").
pub trait Host: Send + Sync + 'static {
    /// Memory holding one context's ring (see [`RingMemory`]).
    type Ring: RingMemory;

    /// Copies `dst.len()` bytes from user address `addr`; `EFAULT` if any of
    /// them is not readable. Nothing is partially observable on failure.
    fn copy_from_user(&self, addr: u64, dst: &mut [u8]) -> Result<(), Errno>;

    /// Copies `src` to user address `addr`; `EFAULT` if any byte is not
    /// writable.
    fn copy_to_user(&self, addr: u64, src: &[u8]) -> Result<(), Errno>;

    /// One past the highest user address (`access_ok`'s bound): buffers that
    /// end beyond it are rejected with `EFAULT` at submission.
    fn user_addr_limit(&self) -> u64;

    /// `fget`: the open file behind `fd`. `EBADF` if none (or an `O_PATH` fd).
    fn fget(&self, fd: i32) -> Result<Arc<dyn File>, Errno>;

    /// `eventfd_ctx_fdget`: `EBADF` if `fd` is not open, `EINVAL` if it is not
    /// an eventfd.
    fn eventfd_get(&self, fd: i32) -> Result<Arc<dyn EventFd>, Errno>;

    /// Maps `len` bytes of zeroed ring memory, shared with user space, at a
    /// host-chosen address or at exactly `at`. Failure is `ENOMEM` unless the
    /// host has a more precise answer for an explicit address.
    fn map_ring(&self, len: u64, at: Option<u64>) -> Result<Self::Ring, Errno>;

    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;

    /// Sleeps until `ready()` returns true, `deadline_ns` (monotonic) passes,
    /// or a signal is pending. `ready` is evaluated first, and again after
    /// every [`Host::wake_all`]; a host must not lose a wake-up that happens
    /// between an evaluation and the sleep. `sigmask` is the `io_pgetevents`
    /// mask to install for the duration of the wait, if any.
    fn wait(
        &self,
        deadline_ns: Option<u64>,
        sigmask: Option<u64>,
        ready: &mut dyn FnMut() -> bool,
    ) -> WaitOutcome;

    /// Wakes every sleeper in [`Host::wait`] so that it re-evaluates its
    /// condition.
    fn wake_all(&self);

    /// Whether the calling thread has a signal pending (`EINTR` decisions).
    fn signal_pending(&self) -> bool;

    /// The CPU the caller runs on (per-CPU slot caches); any value is taken
    /// modulo [`Host::possible_cpus`].
    fn current_cpu(&self) -> u32;

    /// `num_possible_cpus()`: sizes the ring and the slot batches.
    fn possible_cpus(&self) -> u32;

    /// Page size in bytes.
    fn page_size(&self) -> u64;

    /// `fs.aio-max-nr`.
    fn aio_max_nr(&self) -> u64;

    /// `sizeof(sigset_t)` as the emulated kernel checks it in `io_pgetevents`.
    fn sigset_size(&self) -> u64;

    /// The `RWF_*` bits the emulated kernel version knows; any other bit is
    /// `EOPNOTSUPP`.
    fn rw_flags_supported(&self) -> RwFlags;

    /// `capable(CAP_SYS_NICE) || capable(CAP_SYS_ADMIN)`, for the real-time
    /// I/O priority class.
    fn capable_sys_nice(&self) -> bool;

    /// `blk_start_plug`: the calling thread begins one `io_submit` batch.
    /// Until [`Host::finish_plug`], a host may hold back work it would
    /// hand to other threads (dispatching it at once at the end) and may
    /// resolve a descriptor named twice in the batch once.
    fn start_plug(&self) {}

    /// `blk_finish_plug`: the batch is over; whatever was held back goes
    /// now. Called on every path out of `io_submit` after `start_plug`.
    fn finish_plug(&self) {}
}

/// Why [`Host::wait`] returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WaitOutcome {
    /// The condition became true.
    Ready,
    /// The deadline passed.
    TimedOut,
    /// A signal is pending.
    Interrupted,
}

/// Memory holding an `aio_ring`: the 32-byte header and the events.
///
/// Shared with user space, which may read events and store `head` without
/// calling into the core, so header words are accessed atomically.
pub trait RingMemory: Send + Sync + 'static {
    /// The user address of the mapping: the `aio_context_t`.
    fn addr(&self) -> u64;
    /// Length of the mapping in bytes.
    fn size(&self) -> u64;
    /// Loads the aligned `u32` at `offset` with acquire ordering.
    fn load_u32(&self, offset: u64) -> u32;
    /// Stores the aligned `u32` at `offset` with release ordering.
    fn store_u32(&self, offset: u64, value: u32);
    /// Copies bytes into the ring at `offset`.
    fn write(&self, offset: u64, src: &[u8]);
    /// Copies bytes out of the ring at `offset`.
    fn read(&self, offset: u64, dst: &mut [u8]);
}

/// An eventfd taken with `IOCB_FLAG_RESFD`.
pub trait EventFd: Send + Sync {
    /// Adds 1 to the counter (`eventfd_signal`).
    fn signal(&self);
}

/// Mode bits and capabilities of an open file (`f_mode`, `f_op`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FileMode {
    /// Open for reading (`FMODE_READ`).
    pub read: bool,
    /// Open for writing (`FMODE_WRITE`).
    pub write: bool,
    /// Has `read_iter` (directories do not: `EINVAL`).
    pub has_read_iter: bool,
    /// Has `write_iter`.
    pub has_write_iter: bool,
    /// Has `fsync` (pipes and sockets do not: `EINVAL`).
    pub has_fsync: bool,
    /// Has `poll`; without it the file is always readable and writable.
    pub has_poll: bool,
    /// `FMODE_NOWAIT`: `RWF_NOWAIT` is allowed.
    pub nowait: bool,
    /// `FMODE_CAN_ATOMIC_WRITE`: `RWF_ATOMIC` is allowed on writes.
    pub atomic_write: bool,
    /// The filesystem supports `RWF_DONTCACHE`.
    pub dontcache: bool,
    /// Opened with `O_APPEND`.
    pub append: bool,
    /// The inode is append-only (`chattr +a`): `RWF_NOAPPEND` is `EPERM`.
    pub append_only: bool,
    /// A regular file.
    pub regular: bool,
}

/// How far a file operation got.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IoStatus {
    /// Finished: `n` bytes moved from the operation's position, and no more
    /// will (a short count is final: end of file, or a stream's read).
    Done(usize),
    /// `n > 0` bytes moved; call again for the rest, now.
    Partial(usize),
    /// `n` bytes moved, then the file would block: call again for the rest
    /// when `poll` reports readiness (the seed patch's retry).
    WouldBlock(usize),
    /// The file took the operation and will report through
    /// [`Completion::finish`], exactly once, possibly before returning.
    Queued,
    /// Failed before moving a byte in this call.
    Error(Errno),
}

/// The segments of a transfer. One buffer (`PREAD`, `PWRITE`, or a vector
/// of one) is kept inline: most requests then allocate no segment list.
#[derive(Clone, Debug)]
pub enum Segments {
    /// A single segment.
    One(IoVec),
    /// Any number of segments.
    Many(Vec<IoVec>),
}

impl Segments {
    /// `segs`, inline if there is exactly one.
    pub fn from_slice(segs: &[IoVec]) -> Segments {
        match segs {
            [one] => Segments::One(*one),
            many => Segments::Many(many.to_vec()),
        }
    }

    /// `n` zeroed segments, to be filled.
    pub fn zeroed(n: usize) -> Segments {
        if n == 1 {
            Segments::One(IoVec::default())
        } else {
            Segments::Many(alloc::vec![IoVec::default(); n])
        }
    }
}

impl core::ops::Deref for Segments {
    type Target = [IoVec];
    fn deref(&self) -> &[IoVec] {
        match self {
            Segments::One(seg) => core::slice::from_ref(seg),
            Segments::Many(segs) => segs,
        }
    }
}

impl core::ops::DerefMut for Segments {
    fn deref_mut(&mut self) -> &mut [IoVec] {
        match self {
            Segments::One(seg) => core::slice::from_mut(seg),
            Segments::Many(segs) => segs,
        }
    }
}

impl PartialEq for Segments {
    fn eq(&self, other: &Segments) -> bool {
        **self == **other
    }
}

impl Eq for Segments {}

impl<'a> IntoIterator for &'a Segments {
    type Item = &'a IoVec;
    type IntoIter = core::slice::Iter<'a, IoVec>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// One read or write call on a file: the rest of a request's transfer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RwOp {
    /// The segments still to transfer, the first one trimmed to where the
    /// request stopped last time.
    pub segs: Segments,
    /// File position of the first byte (ignored by streams and with append).
    pub pos: i64,
    /// `RWF_*` flags after validation (`RWF_HIPRI` cleared).
    pub flags: RwFlags,
}

impl RwOp {
    /// Total bytes the segments hold.
    pub fn len(&self) -> u64 {
        self.segs.iter().map(|s| s.iov_len).sum()
    }

    /// Whether there is nothing to transfer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The file operations the core calls (`struct file_operations`).
pub trait File: Send + Sync {
    /// Mode bits, read once per request at submission.
    fn mode(&self) -> FileMode;

    /// Reads into `op.segs` from `op.pos`. The user buffers are accessed
    /// through the host's user-memory functions (or equivalent validation).
    fn read_iter(&self, op: &RwOp, done: &Completion) -> IoStatus;

    /// Writes `op.segs` at `op.pos`.
    fn write_iter(&self, op: &RwOp, done: &Completion) -> IoStatus;

    /// `vfs_fsync`; `Done(_)` or `Error(_)`, now or through `done`.
    fn fsync(&self, datasync: bool, done: &Completion) -> IoStatus;

    /// Current readiness (before masking). With a waiter and nothing in
    /// `events` ready, the file must call [`PollWaiter::wake`] when its
    /// readiness changes, until `wake` returns true; it then drops the waiter.
    fn poll(&self, events: PollEvents, waiter: Option<&PollWaiter>) -> PollEvents;

    /// The waiter was cancelled; the file may drop it now (it will ignore
    /// further wakes anyway).
    fn poll_cancel(&self, _waiter: &PollWaiter) {}
}

pub(crate) trait Resume: Send + Sync {
    fn resume(self: Arc<Self>, status: IoStatus);
}

pub(crate) trait PollWake: Send + Sync {
    fn wake(self: Arc<Self>, events: PollEvents) -> bool;
    fn is_done(&self) -> bool;
}

/// The completion handle of a queued read, write or fsync (the seed's
/// `aio_readv`/`aio_writev` completion path).
#[derive(Clone)]
pub struct Completion(pub(crate) Arc<dyn Resume>);

impl Completion {
    /// Reports how the queued operation ended. `Partial` and `WouldBlock`
    /// make the core continue the transfer from where it stopped.
    pub fn finish(&self, status: IoStatus) {
        self.0.clone().resume(status);
    }
}

impl core::fmt::Debug for Completion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Completion")
    }
}

/// A one-shot readiness callback registered through [`File::poll`].
#[derive(Clone)]
pub struct PollWaiter(pub(crate) Arc<dyn PollWake>);

impl PollWaiter {
    /// The file's readiness changed to `events` (empty: unknown, re-poll).
    /// Returns true when the waiter is finished and must be dropped.
    pub fn wake(&self, events: PollEvents) -> bool {
        self.0.clone().wake(events)
    }

    /// Whether the waiter has completed or been cancelled.
    pub fn is_done(&self) -> bool {
        self.0.is_done()
    }

    /// Whether two handles are the same waiter.
    pub fn same(&self, other: &PollWaiter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl core::fmt::Debug for PollWaiter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PollWaiter")
    }
}
