//! Operations as builders: required arguments in `new`, optional ones as
//! chained setters. Push one with [`Context::push`](crate::Context::push)
//! (owned buffers) or [`Scope::push`](crate::Scope::push) (borrowed ones).

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use aio_abi::{IoVec, Iocb, PollEvents, RwFlags};

use crate::buf::{IoBuf, IoBufMut, IoBufs, IoBufsMut, Single};

mod sealed {
    pub trait Sealed {}
}

/// A request that can be pushed to a [`Context`](crate::Context). Sealed:
/// implemented by the operation types of this module only.
pub trait Operation: sealed::Sealed + Sized {
    /// What waiting for the request returns.
    type Output;

    /// What the request's slot owns until the event arrives (the buffers).
    /// It consists only of values moved out of `Self`, so it is `Send` and
    /// `'static` whenever `Self` is.
    #[doc(hidden)]
    type Keep;

    /// Fills `iovs` with the request's segments (vectored operations) and
    /// returns the iocb (its `aio_buf` set later, for vectored ones, to the
    /// address of `iovs`) and what must be kept alive.
    #[doc(hidden)]
    fn prepare(self, iovs: &mut Vec<IoVec>) -> (Iocb, Self::Keep);

    /// Builds the output from the result and the kept buffers.
    #[doc(hidden)]
    fn complete(result: io::Result<usize>, keep: Self::Keep) -> Self::Output;
}

fn raw(fd: impl AsFd) -> RawFd {
    fd.as_fd().as_raw_fd()
}

/// Options shared by reads and writes.
#[derive(Clone, Copy, Debug, Default)]
struct RwOptions {
    rw_flags: RwFlags,
    ioprio: Option<u16>,
}

impl RwOptions {
    fn apply(self, iocb: Iocb) -> Iocb {
        let iocb = iocb.with_rw_flags(self.rw_flags);
        match self.ioprio {
            Some(p) => iocb.with_ioprio(p),
            None => iocb,
        }
    }
}

macro_rules! rw_setters {
    () => {
        /// `RWF_*` flags, as `preadv2(2)`/`pwritev2(2)` take them
        /// (`RWF_NOWAIT`, `RWF_DSYNC`, …). A flag the file or kernel does not
        /// support fails the request with `EOPNOTSUPP`.
        pub fn rw_flags(mut self, flags: RwFlags) -> Self {
            self.opts.rw_flags = flags;
            self
        }

        /// An I/O priority (`IOCB_FLAG_IOPRIO`), encoded with
        /// [`aio_abi::ioprio::value`]. The real-time class needs
        /// `CAP_SYS_ADMIN` or `CAP_SYS_NICE` (`EPERM`).
        pub fn ioprio(mut self, prio: u16) -> Self {
            self.opts.ioprio = Some(prio);
            self
        }
    };
}

/// A scatter read: `preadv2(fd, bufs, offset, rw_flags)`, as
/// `IOCB_CMD_PREADV` (`IOCB_CMD_PREAD` for one buffer). Fills the buffers
/// in order; returns the bytes read and the buffers.
///
/// ```
/// use aio::{Context, ReadV};
/// use std::io::Write;
///
/// let mut file = tempfile::tempfile().unwrap();
/// file.write_all(b"hello, world").unwrap();
/// let ctx = Context::new(8).unwrap();
/// let (n, bufs) = ctx.run(ReadV::new(&file, vec![vec![0u8; 5], vec![0u8; 7]], 0));
/// assert_eq!(n.unwrap(), 12);
/// assert_eq!((&bufs[0][..], &bufs[1][..]), (&b"hello"[..], &b", world"[..]));
/// ```
#[derive(Debug)]
pub struct ReadV<B> {
    fd: RawFd,
    bufs: B,
    offset: u64,
    opts: RwOptions,
}

impl<B: IoBufsMut> ReadV<B> {
    /// Reads into `bufs` from `offset` of `fd`.
    pub fn new(fd: impl AsFd, bufs: B, offset: u64) -> Self {
        ReadV {
            fd: raw(fd),
            bufs,
            offset,
            opts: RwOptions::default(),
        }
    }

    rw_setters!();
}

impl<B> sealed::Sealed for ReadV<B> {}

impl<B: IoBufsMut> Operation for ReadV<B> {
    type Output = (io::Result<usize>, B);
    type Keep = B;

    fn prepare(mut self, iovs: &mut Vec<IoVec>) -> (Iocb, B) {
        self.bufs.iovecs_mut(iovs);
        let iocb = Iocb::preadv(self.fd, 0, iovs.len() as u64, self.offset as i64);
        (self.opts.apply(iocb), self.bufs)
    }

    fn complete(result: io::Result<usize>, keep: B) -> Self::Output {
        (result, keep)
    }
}

/// A gather write: `pwritev2(fd, bufs, offset, rw_flags)`, as
/// `IOCB_CMD_PWRITEV` (`IOCB_CMD_PWRITE` for one buffer). Returns the bytes
/// written and the buffers.
///
/// ```
/// use aio::{Context, WriteV};
///
/// let file = tempfile::tempfile().unwrap();
/// let ctx = Context::new(8).unwrap();
/// let (n, _bufs) = ctx.run(WriteV::new(&file, vec![b"abc".to_vec(), b"de".to_vec()], 0));
/// assert_eq!(n.unwrap(), 5);
/// assert_eq!(std::fs::read(format!("/proc/self/fd/{}", {
///     use std::os::fd::AsRawFd; file.as_raw_fd()
/// })).unwrap(), b"abcde");
/// ```
#[derive(Debug)]
pub struct WriteV<B> {
    fd: RawFd,
    bufs: B,
    offset: u64,
    opts: RwOptions,
}

impl<B: IoBufs> WriteV<B> {
    /// Writes `bufs` at `offset` of `fd`.
    pub fn new(fd: impl AsFd, bufs: B, offset: u64) -> Self {
        WriteV {
            fd: raw(fd),
            bufs,
            offset,
            opts: RwOptions::default(),
        }
    }

    rw_setters!();
}

impl<B> sealed::Sealed for WriteV<B> {}

impl<B: IoBufs> Operation for WriteV<B> {
    type Output = (io::Result<usize>, B);
    type Keep = B;

    fn prepare(self, iovs: &mut Vec<IoVec>) -> (Iocb, B) {
        self.bufs.iovecs(iovs);
        let iocb = Iocb::pwritev(self.fd, 0, iovs.len() as u64, self.offset as i64);
        (self.opts.apply(iocb), self.bufs)
    }

    fn complete(result: io::Result<usize>, keep: B) -> Self::Output {
        (result, keep)
    }
}

/// A read: `pread(fd, buf, len, offset)` (`preadv2` with `rw_flags`).
///
/// The one-segment case of [`ReadV`], submitted (like any one-segment
/// `ReadV`) as `IOCB_CMD_PREAD`, which Linux handles as a one-segment
/// `IOCB_CMD_PREADV` without copying an iovec array.
///
/// ```
/// use aio::{Context, Read};
/// use std::io::Write;
///
/// let mut file = tempfile::tempfile().unwrap();
/// file.write_all(b"data").unwrap();
/// let ctx = Context::new(8).unwrap();
/// let (n, buf) = ctx.run(Read::new(&file, vec![0u8; 16], 0));
/// assert_eq!(&buf[..n.unwrap()], b"data");
/// ```
#[derive(Debug)]
pub struct Read<B> {
    inner: ReadV<Single<B>>,
}

impl<B: IoBufMut> Read<B> {
    /// Reads up to `buf.bytes_len()` bytes from `offset` of `fd`.
    pub fn new(fd: impl AsFd, buf: B, offset: u64) -> Self {
        Read {
            inner: ReadV::new(fd, Single(buf), offset),
        }
    }

    /// See [`ReadV::rw_flags`].
    pub fn rw_flags(self, flags: RwFlags) -> Self {
        Read {
            inner: self.inner.rw_flags(flags),
        }
    }

    /// See [`ReadV::ioprio`].
    pub fn ioprio(self, prio: u16) -> Self {
        Read {
            inner: self.inner.ioprio(prio),
        }
    }
}

impl<B> sealed::Sealed for Read<B> {}

impl<B: IoBufMut> Operation for Read<B> {
    type Output = (io::Result<usize>, B);
    type Keep = Single<B>;

    fn prepare(self, iovs: &mut Vec<IoVec>) -> (Iocb, Single<B>) {
        self.inner.prepare(iovs)
    }

    fn complete(result: io::Result<usize>, keep: Single<B>) -> Self::Output {
        let (result, Single(buf)) = ReadV::complete(result, keep);
        (result, buf)
    }
}

/// A write: `pwrite(fd, buf, len, offset)` (`pwritev2` with `rw_flags`).
///
/// The one-segment case of [`WriteV`], submitted (like any one-segment
/// `WriteV`) as `IOCB_CMD_PWRITE`.
///
/// ```
/// use aio::{Context, Write};
///
/// let file = tempfile::tempfile().unwrap();
/// let ctx = Context::new(8).unwrap();
/// let (n, buf) = ctx.run(Write::new(&file, b"abc".to_vec(), 0));
/// assert_eq!((n.unwrap(), buf), (3, b"abc".to_vec()));
/// ```
#[derive(Debug)]
pub struct Write<B> {
    inner: WriteV<Single<B>>,
}

impl<B: IoBuf> Write<B> {
    /// Writes `buf` at `offset` of `fd`.
    pub fn new(fd: impl AsFd, buf: B, offset: u64) -> Self {
        Write {
            inner: WriteV::new(fd, Single(buf), offset),
        }
    }

    /// See [`WriteV::rw_flags`].
    pub fn rw_flags(self, flags: RwFlags) -> Self {
        Write {
            inner: self.inner.rw_flags(flags),
        }
    }

    /// See [`WriteV::ioprio`].
    pub fn ioprio(self, prio: u16) -> Self {
        Write {
            inner: self.inner.ioprio(prio),
        }
    }
}

impl<B> sealed::Sealed for Write<B> {}

impl<B: IoBuf> Operation for Write<B> {
    type Output = (io::Result<usize>, B);
    type Keep = Single<B>;

    fn prepare(self, iovs: &mut Vec<IoVec>) -> (Iocb, Single<B>) {
        self.inner.prepare(iovs)
    }

    fn complete(result: io::Result<usize>, keep: Single<B>) -> Self::Output {
        let (result, Single(buf)) = WriteV::complete(result, keep);
        (result, buf)
    }
}

/// `fsync(fd)`, as `IOCB_CMD_FSYNC` (Linux 4.18+; runs on a kernel
/// workqueue, so it does not block the submitter).
///
/// ```
/// use aio::{Context, Fsync};
///
/// let file = tempfile::tempfile().unwrap();
/// let ctx = Context::new(8).unwrap();
/// ctx.run(Fsync::new(&file)).unwrap();
/// ```
#[derive(Debug)]
pub struct Fsync {
    fd: RawFd,
}

impl Fsync {
    /// Flushes data and metadata of `fd`.
    pub fn new(fd: impl AsFd) -> Self {
        Fsync { fd: raw(fd) }
    }
}

impl sealed::Sealed for Fsync {}

impl Operation for Fsync {
    type Output = io::Result<()>;
    type Keep = ();

    fn prepare(self, _iovs: &mut Vec<IoVec>) -> (Iocb, ()) {
        (Iocb::fsync(self.fd), ())
    }

    fn complete(result: io::Result<usize>, _keep: ()) -> io::Result<()> {
        result.map(drop)
    }
}

/// `fdatasync(fd)`, as `IOCB_CMD_FDSYNC` (Linux 4.18+).
///
/// ```
/// use aio::{Context, Fdatasync};
///
/// let file = tempfile::tempfile().unwrap();
/// let ctx = Context::new(8).unwrap();
/// ctx.run(Fdatasync::new(&file)).unwrap();
/// ```
#[derive(Debug)]
pub struct Fdatasync {
    fd: RawFd,
}

impl Fdatasync {
    /// Flushes the data (and the metadata needed to read it) of `fd`.
    pub fn new(fd: impl AsFd) -> Self {
        Fdatasync { fd: raw(fd) }
    }
}

impl sealed::Sealed for Fdatasync {}

impl Operation for Fdatasync {
    type Output = io::Result<()>;
    type Keep = ();

    fn prepare(self, _iovs: &mut Vec<IoVec>) -> (Iocb, ()) {
        (Iocb::fdsync(self.fd), ())
    }

    fn complete(result: io::Result<usize>, _keep: ()) -> io::Result<()> {
        result.map(drop)
    }
}

/// A one-shot `poll(2)` of one descriptor, as `IOCB_CMD_POLL` (Linux
/// 4.18+): completes with the ready events intersected with `events`
/// (`POLLERR` and `POLLHUP` are always reported).
///
/// ```
/// use aio::{Context, Poll, PollEvents};
/// use std::os::unix::net::UnixStream;
///
/// let (a, _b) = UnixStream::pair().unwrap();
/// let ctx = Context::new(8).unwrap();
/// let ready = ctx.run(Poll::new(&a, PollEvents::OUT)).unwrap();
/// assert!(ready.contains(PollEvents::OUT));
/// ```
#[derive(Debug)]
pub struct Poll {
    fd: RawFd,
    events: PollEvents,
}

impl Poll {
    /// Waits until `fd` is ready for one of `events`.
    pub fn new(fd: impl AsFd, events: PollEvents) -> Self {
        Poll {
            fd: raw(fd),
            events,
        }
    }
}

impl sealed::Sealed for Poll {}

impl Operation for Poll {
    type Output = io::Result<PollEvents>;
    type Keep = ();

    fn prepare(self, _iovs: &mut Vec<IoVec>) -> (Iocb, ()) {
        (Iocb::poll(self.fd, self.events), ())
    }

    fn complete(result: io::Result<usize>, _keep: ()) -> io::Result<PollEvents> {
        result.map(|mask| PollEvents(mask as u32))
    }
}

/// The operation behind [`Scope::read_at`](crate::Scope::read_at),
/// [`Scope::readv_at`](crate::Scope::readv_at) and their write
/// counterparts, whose segments are borrowed for the scope. Not
/// constructible: it only names the type of their tickets.
#[derive(Debug)]
pub struct ScopedIo {
    never: Never,
}

#[derive(Debug)]
enum Never {}

impl sealed::Sealed for ScopedIo {}

impl Operation for ScopedIo {
    type Output = io::Result<usize>;
    type Keep = ();

    fn prepare(self, _iovs: &mut Vec<IoVec>) -> (Iocb, ()) {
        // A value of this type cannot exist: `Never` has no values.
        match self.never {}
    }

    fn complete(result: io::Result<usize>, _keep: ()) -> io::Result<usize> {
        result
    }
}
