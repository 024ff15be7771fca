//! A file whose reads and writes are AIO requests with owned buffers.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use aio_abi::PollEvents;

use super::{Handle, Op};
use crate::buf::{IoBuf, IoBufMut, IoBufs, IoBufsMut};
use crate::op::{Fdatasync, Fsync, Poll, Read, ReadV, Write, WriteV};

/// Options for opening a [`File`], as [`std::fs::OpenOptions`] plus
/// [`direct`](OpenOptions::direct) and the driver to use.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    std: fs::OpenOptions,
    flags: i32,
    handle: Option<Handle>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions::new()
    }
}

impl OpenOptions {
    /// Nothing set: choose at least `read` or `write`.
    pub fn new() -> OpenOptions {
        OpenOptions {
            std: fs::OpenOptions::new(),
            flags: 0,
            handle: None,
        }
    }

    /// Open for reading.
    pub fn read(&mut self, yes: bool) -> &mut Self {
        self.std.read(yes);
        self
    }

    /// Open for writing.
    pub fn write(&mut self, yes: bool) -> &mut Self {
        self.std.write(yes);
        self
    }

    /// Create the file if it does not exist (needs `write`).
    pub fn create(&mut self, yes: bool) -> &mut Self {
        self.std.create(yes);
        self
    }

    /// Create the file, failing if it exists.
    pub fn create_new(&mut self, yes: bool) -> &mut Self {
        self.std.create_new(yes);
        self
    }

    /// Truncate the file to length 0 (needs `write`).
    pub fn truncate(&mut self, yes: bool) -> &mut Self {
        self.std.truncate(yes);
        self
    }

    /// `O_DIRECT`: bypass the page cache, which makes reads and writes
    /// truly asynchronous (buffered ones complete inside `io_submit`).
    /// Buffers, offsets and lengths must then respect
    /// [`dio_alignment`](crate::dio_alignment); [`AlignedBuf`](crate::AlignedBuf)
    /// provides aligned memory.
    pub fn direct(&mut self, yes: bool) -> &mut Self {
        if yes {
            self.flags |= libc::O_DIRECT;
        } else {
            self.flags &= !libc::O_DIRECT;
        }
        self
    }

    /// Permission bits of a created file (default `0o666` less the umask).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.std.mode(mode);
        self
    }

    /// Other `open(2)` flags, added to those above.
    pub fn custom_flags(&mut self, flags: i32) -> &mut Self {
        self.flags = (self.flags & libc::O_DIRECT) | flags;
        self
    }

    /// The driver for the file's requests (default [`Handle::current`]).
    pub fn handle(&mut self, handle: &Handle) -> &mut Self {
        self.handle = Some(handle.clone());
        self
    }

    /// Opens `path` (on the blocking thread pool, as `tokio::fs` does).
    pub async fn open(&self, path: impl AsRef<Path>) -> io::Result<File> {
        let handle = match &self.handle {
            Some(h) => h.clone(),
            None => Handle::current()?,
        };
        let mut opts = self.std.clone();
        opts.custom_flags(self.flags);
        let path = path.as_ref().to_owned();
        let file = ::tokio::task::spawn_blocking(move || opts.open(path))
            .await
            .map_err(io::Error::other)??;
        Ok(File {
            file: Arc::new(file),
            handle,
        })
    }
}

/// A file for asynchronous positioned I/O through AIO, in the style of
/// `tokio-uring`: methods take owned buffers and return them with the
/// result, `(io::Result<usize>, B)`.
///
/// Reads and writes name a file offset and do not move a cursor. Each
/// request holds a share of the open file until its event has been
/// processed, so dropping the `File` (or a future) while requests run
/// never lets them reach another file; the descriptor closes when the
/// last of them is done.
pub struct File {
    file: Arc<fs::File>,
    handle: Handle,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File").field("fd", &self.file).finish()
    }
}

impl File {
    /// Opens `path` read-only.
    pub async fn open(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new().read(true).open(path).await
    }

    /// Opens `path` for writing, creating or truncating it.
    pub async fn create(path: impl AsRef<Path>) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .await
    }

    /// Options for opening a file.
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// Wraps an open file, with the current runtime's driver.
    pub fn from_std(file: fs::File) -> io::Result<File> {
        Ok(File::from_std_with(file, &Handle::current()?))
    }

    /// Wraps an open file, with `handle`'s driver.
    pub fn from_std_with(file: fs::File, handle: &Handle) -> File {
        File {
            file: Arc::new(file),
            handle: handle.clone(),
        }
    }

    /// The standard file, if no request (of a dropped future) still holds
    /// it; otherwise the `File` back, as `tokio::fs::File::try_into_std`.
    pub fn try_into_std(self) -> Result<fs::File, File> {
        Arc::try_unwrap(self.file).map_err(|file| File {
            file,
            handle: self.handle,
        })
    }

    /// The driver of this file's requests.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// `pread`: reads up to `buf.bytes_len()` bytes at `pos`; returns the
    /// count (0 at end of file) and the buffer.
    pub fn read_at<B: IoBufMut + Send + 'static>(
        &self,
        buf: B,
        pos: u64,
    ) -> Op<Read<Arc<fs::File>, B>> {
        Op::new(self.handle.clone(), Read::new(self.file.clone(), buf, pos))
    }

    /// `pwrite`: writes `buf` at `pos`; returns the count and the buffer.
    pub fn write_at<B: IoBuf + Send + 'static>(
        &self,
        buf: B,
        pos: u64,
    ) -> Op<Write<Arc<fs::File>, B>> {
        Op::new(self.handle.clone(), Write::new(self.file.clone(), buf, pos))
    }

    /// `preadv`: fills `bufs` in order from `pos`.
    pub fn readv_at<B: IoBufsMut + Send + 'static>(
        &self,
        bufs: B,
        pos: u64,
    ) -> Op<ReadV<Arc<fs::File>, B>> {
        Op::new(
            self.handle.clone(),
            ReadV::new(self.file.clone(), bufs, pos),
        )
    }

    /// `pwritev`: writes `bufs` in order at `pos`.
    pub fn writev_at<B: IoBufs + Send + 'static>(
        &self,
        bufs: B,
        pos: u64,
    ) -> Op<WriteV<Arc<fs::File>, B>> {
        Op::new(
            self.handle.clone(),
            WriteV::new(self.file.clone(), bufs, pos),
        )
    }

    /// Fills all of `buf` from `pos`, reading again after short reads;
    /// `UnexpectedEof` if the file ends first (the buffer then holds what
    /// was read).
    pub async fn read_exact_at<B: IoBufMut + Send + 'static>(
        &self,
        buf: B,
        pos: u64,
    ) -> (io::Result<()>, B) {
        let mut rest = Tail { buf, start: 0 };
        while rest.start < rest.buf.bytes_len() {
            let at = pos + rest.start as u64;
            let (r, back) = self.read_at(rest, at).await;
            rest = back;
            match r {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "end of file");
                    return (Err(e), rest.buf);
                }
                Ok(n) => rest.start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), rest.buf),
            }
        }
        (Ok(()), rest.buf)
    }

    /// Writes all of `buf` at `pos`, writing again after short writes;
    /// `WriteZero` if the kernel accepts nothing.
    pub async fn write_all_at<B: IoBuf + Send + 'static>(
        &self,
        buf: B,
        pos: u64,
    ) -> (io::Result<()>, B) {
        let mut rest = Tail { buf, start: 0 };
        while rest.start < rest.buf.bytes_len() {
            let at = pos + rest.start as u64;
            let (r, back) = self.write_at(rest, at).await;
            rest = back;
            match r {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes");
                    return (Err(e), rest.buf);
                }
                Ok(n) => rest.start += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), rest.buf),
            }
        }
        (Ok(()), rest.buf)
    }

    /// `fsync` (`IOCB_CMD_FSYNC`).
    pub fn sync_all(&self) -> Op<Fsync<Arc<fs::File>>> {
        Op::new(self.handle.clone(), Fsync::new(self.file.clone()))
    }

    /// `fdatasync` (`IOCB_CMD_FDSYNC`).
    pub fn sync_data(&self) -> Op<Fdatasync<Arc<fs::File>>> {
        Op::new(self.handle.clone(), Fdatasync::new(self.file.clone()))
    }

    /// Waits until the file is ready for one of `events`
    /// (`IOCB_CMD_POLL`); regular files always are.
    pub fn poll(&self, events: PollEvents) -> Op<Poll<Arc<fs::File>>> {
        Op::new(self.handle.clone(), Poll::new(self.file.clone(), events))
    }
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The bytes of `buf` from `start` on: what is left after a short
/// transfer.
struct Tail<B> {
    buf: B,
    start: usize,
}

// SAFETY: a suffix of a buffer that satisfies the contract: same stable
// bytes, from an offset that does not change while the request runs.
unsafe impl<B: IoBuf> IoBuf for Tail<B> {
    fn stable_ptr(&self) -> *const u8 {
        self.buf.stable_ptr().wrapping_add(self.start)
    }
    fn bytes_len(&self) -> usize {
        self.buf.bytes_len() - self.start
    }
}

// SAFETY: as above, for writing.
unsafe impl<B: IoBufMut> IoBufMut for Tail<B> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.buf.stable_mut_ptr().wrapping_add(self.start)
    }
}
