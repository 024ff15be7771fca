//! Operations as builders: required arguments in `new`, optional ones as
//! chained setters. Push one with [`Context::push`](crate::Context::push)
//! (an owned file handle and owned buffers) or
//! [`Scope::push`](crate::Scope::push) (borrowed ones).
//!
//! # Files
//!
//! Every operation holds the file it names, as any `F: AsFd`, from `new`
//! until its event has been processed: the request's slot keeps `F`, not
//! only its descriptor number. So no close and reopen, by anyone, can make
//! a queued or running request read or write another file. Which `F`
//! fits where is decided by the borrow checker:
//!
//! - [`Context::push`](crate::Context::push) and the tokio front-end take
//!   requests that may outlive the caller's frame (`'static`): `F` owns
//!   the file or a share of it, such as `Arc<File>`, `File`, `OwnedFd`
//!   (or `BorrowedFd<'static>`, stdin's for example);
//! - [`Scope::push`](crate::Scope::push), [`Context::run`](crate::Context::run)
//!   and the scoped `*_at` methods wait before the borrow ends, so `F` may
//!   be `&File`.

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

    /// What the request's slot owns until the event arrives: the file and
    /// the buffers. It consists only of values moved out of `Self`, so it
    /// is `Send` and `'static` whenever `Self` is.
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

/// The descriptor number of `fd`, read once when the request is prepared.
/// The request keeps `fd` itself (not the number) in its slot until its
/// event has been processed, so the number names the same open file for
/// as long as the kernel or the engine may use it.
fn raw<F: AsFd>(fd: &F) -> RawFd {
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
pub struct ReadV<F, B> {
    fd: F,
    bufs: B,
    offset: u64,
    opts: RwOptions,
}

impl<F: AsFd, B: IoBufsMut> ReadV<F, B> {
    /// Reads into `bufs` from `offset` of `fd`, which the request holds
    /// until it completes.
    pub fn new(fd: F, bufs: B, offset: u64) -> Self {
        ReadV {
            fd,
            bufs,
            offset,
            opts: RwOptions::default(),
        }
    }

    rw_setters!();
}

impl<F, B> sealed::Sealed for ReadV<F, B> {}

impl<F: AsFd, B: IoBufsMut> Operation for ReadV<F, B> {
    type Output = (io::Result<usize>, B);
    type Keep = (F, B);

    fn prepare(mut self, iovs: &mut Vec<IoVec>) -> (Iocb, (F, B)) {
        self.bufs.iovecs_mut(iovs);
        let iocb = Iocb::preadv(raw(&self.fd), 0, iovs.len() as u64, self.offset as i64);
        (self.opts.apply(iocb), (self.fd, self.bufs))
    }

    fn complete(result: io::Result<usize>, (_, bufs): (F, B)) -> Self::Output {
        (result, bufs)
    }
}

/// A gather write: `pwritev2(fd, bufs, offset, rw_flags)`, as
/// `IOCB_CMD_PWRITEV` (`IOCB_CMD_PWRITE` for one buffer). Returns the bytes
/// written and the buffers.
///
/// ```
/// use aio::{Context, WriteV};
/// use std::io::Read;
///
/// let mut file = tempfile::tempfile().unwrap();
/// let ctx = Context::new(8).unwrap();
/// let (n, _bufs) = ctx.run(WriteV::new(&file, vec![b"abc".to_vec(), b"de".to_vec()], 0));
/// assert_eq!(n.unwrap(), 5);
/// let mut back = String::new();
/// file.read_to_string(&mut back).unwrap();
/// assert_eq!(back, "abcde");
/// ```
#[derive(Debug)]
pub struct WriteV<F, B> {
    fd: F,
    bufs: B,
    offset: u64,
    opts: RwOptions,
}

impl<F: AsFd, B: IoBufs> WriteV<F, B> {
    /// Writes `bufs` at `offset` of `fd`, which the request holds until it
    /// completes.
    pub fn new(fd: F, bufs: B, offset: u64) -> Self {
        WriteV {
            fd,
            bufs,
            offset,
            opts: RwOptions::default(),
        }
    }

    rw_setters!();
}

impl<F, B> sealed::Sealed for WriteV<F, B> {}

impl<F: AsFd, B: IoBufs> Operation for WriteV<F, B> {
    type Output = (io::Result<usize>, B);
    type Keep = (F, B);

    fn prepare(self, iovs: &mut Vec<IoVec>) -> (Iocb, (F, B)) {
        self.bufs.iovecs(iovs);
        let iocb = Iocb::pwritev(raw(&self.fd), 0, iovs.len() as u64, self.offset as i64);
        (self.opts.apply(iocb), (self.fd, self.bufs))
    }

    fn complete(result: io::Result<usize>, (_, bufs): (F, B)) -> Self::Output {
        (result, bufs)
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
/// use std::sync::Arc;
///
/// let mut file = tempfile::tempfile().unwrap();
/// file.write_all(b"data").unwrap();
/// let ctx = Context::new(8).unwrap();
/// // A borrowed file: `run` waits before the borrow ends.
/// let (n, buf) = ctx.run(Read::new(&file, vec![0u8; 16], 0));
/// assert_eq!(&buf[..n.unwrap()], b"data");
/// // A pushed request outlives the call: it holds a share of the file.
/// let file = Arc::new(file);
/// let ticket = ctx.push(Read::new(file.clone(), vec![0u8; 2], 2));
/// assert_eq!(ticket.wait().1, b"ta");
/// ```
#[derive(Debug)]
pub struct Read<F, B> {
    inner: ReadV<F, Single<B>>,
}

impl<F: AsFd, B: IoBufMut> Read<F, B> {
    /// Reads up to `buf.bytes_len()` bytes from `offset` of `fd`, which the
    /// request holds until it completes.
    pub fn new(fd: F, buf: B, offset: u64) -> Self {
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

impl<F, B> sealed::Sealed for Read<F, B> {}

impl<F: AsFd, B: IoBufMut> Operation for Read<F, B> {
    type Output = (io::Result<usize>, B);
    type Keep = (F, Single<B>);

    fn prepare(self, iovs: &mut Vec<IoVec>) -> (Iocb, Self::Keep) {
        self.inner.prepare(iovs)
    }

    fn complete(result: io::Result<usize>, keep: Self::Keep) -> Self::Output {
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
pub struct Write<F, B> {
    inner: WriteV<F, Single<B>>,
}

impl<F: AsFd, B: IoBuf> Write<F, B> {
    /// Writes `buf` at `offset` of `fd`, which the request holds until it
    /// completes.
    pub fn new(fd: F, buf: B, offset: u64) -> Self {
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

impl<F, B> sealed::Sealed for Write<F, B> {}

impl<F: AsFd, B: IoBuf> Operation for Write<F, B> {
    type Output = (io::Result<usize>, B);
    type Keep = (F, Single<B>);

    fn prepare(self, iovs: &mut Vec<IoVec>) -> (Iocb, Self::Keep) {
        self.inner.prepare(iovs)
    }

    fn complete(result: io::Result<usize>, keep: Self::Keep) -> Self::Output {
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
pub struct Fsync<F> {
    fd: F,
}

impl<F: AsFd> Fsync<F> {
    /// Flushes data and metadata of `fd`, which the request holds until it
    /// completes.
    pub fn new(fd: F) -> Self {
        Fsync { fd }
    }
}

impl<F> sealed::Sealed for Fsync<F> {}

impl<F: AsFd> Operation for Fsync<F> {
    type Output = io::Result<()>;
    type Keep = F;

    fn prepare(self, _iovs: &mut Vec<IoVec>) -> (Iocb, F) {
        (Iocb::fsync(raw(&self.fd)), self.fd)
    }

    fn complete(result: io::Result<usize>, _keep: F) -> io::Result<()> {
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
pub struct Fdatasync<F> {
    fd: F,
}

impl<F: AsFd> Fdatasync<F> {
    /// Flushes the data (and the metadata needed to read it) of `fd`,
    /// which the request holds until it completes.
    pub fn new(fd: F) -> Self {
        Fdatasync { fd }
    }
}

impl<F> sealed::Sealed for Fdatasync<F> {}

impl<F: AsFd> Operation for Fdatasync<F> {
    type Output = io::Result<()>;
    type Keep = F;

    fn prepare(self, _iovs: &mut Vec<IoVec>) -> (Iocb, F) {
        (Iocb::fdsync(raw(&self.fd)), self.fd)
    }

    fn complete(result: io::Result<usize>, _keep: F) -> io::Result<()> {
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
pub struct Poll<F> {
    fd: F,
    events: PollEvents,
}

impl<F: AsFd> Poll<F> {
    /// Waits until `fd` is ready for one of `events`; the request holds
    /// `fd` until it completes.
    pub fn new(fd: F, events: PollEvents) -> Self {
        Poll { fd, events }
    }
}

impl<F> sealed::Sealed for Poll<F> {}

impl<F: AsFd> Operation for Poll<F> {
    type Output = io::Result<PollEvents>;
    type Keep = F;

    fn prepare(self, _iovs: &mut Vec<IoVec>) -> (Iocb, F) {
        (Iocb::poll(raw(&self.fd), self.events), self.fd)
    }

    fn complete(result: io::Result<usize>, _keep: F) -> io::Result<PollEvents> {
        result.map(|mask| PollEvents(mask as u32))
    }
}
