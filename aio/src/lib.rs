//! Vectored asynchronous I/O on Linux native AIO (`io_setup`, `io_submit`,
//! `io_getevents`, `IOCB_CMD_PREADV`/`PWRITEV`), safe to use from safe code.
//!
//! ```
//! use aio::{Context, Read, ReadV, Write};
//! use std::sync::Arc;
//!
//! let file = tempfile::tempfile().unwrap();
//! let ctx = Context::new(64).unwrap();
//! // Buffers move into the requests and come back with the results.
//! let (n, _) = ctx.run(Write::new(&file, b"hello world".to_vec(), 0));
//! assert_eq!(n.unwrap(), 11);
//! // Requests queued together are submitted together (one io_submit per
//! // driver) and, as always with AIO, complete in any order. A pushed
//! // request holds its file until it completes: here a share of it.
//! let file = Arc::new(file);
//! let both = ctx.push(ReadV::new(file.clone(), vec![vec![0u8; 6], vec![0u8; 5]], 0));
//! let tail = ctx.push(Read::new(file, vec![0u8; 5], 6));
//! let (n, bufs) = both.wait();
//! assert_eq!(n.unwrap(), 11);
//! assert_eq!((&bufs[0][..], &bufs[1][..]), (&b"hello "[..], &b"world"[..]));
//! let (n, buf) = tail.wait();
//! assert_eq!((n.unwrap(), &buf[..]), (5, &b"world"[..]));
//! ```
//!
//! # Ownership: why the kernel never writes freed memory
//!
//! Linux cannot cancel file I/O (spec §6): once `io_submit` accepted a
//! request, its buffers must live until its event is reaped, whatever the
//! program does meanwhile. This crate guarantees it without relying on any
//! destructor running:
//!
//! - **Owned buffers** ([`IoBuf`], [`IoBufMut`]: `Vec<u8>`, `Box<[u8]>`,
//!   [`AlignedBuf`], collections of them) move into the context's slot for
//!   the request at [`Context::push`]. The slot, not the [`Ticket`], owns
//!   them: dropping a ticket only marks the slot so that the buffers are
//!   dropped when the event arrives; forgetting a ticket leaves them in the
//!   slot until the context goes. The buffer types keep their bytes at a
//!   stable heap address, so moving them into the slot moves no byte the
//!   kernel was given.
//! - **Dropping a [`Context`]** `io_destroy`s the kernel context, which
//!   returns only when every submitted request has completed; only then are
//!   the slots' buffers dropped (with those of requests never submitted). If `io_destroy`
//!   failed, the buffers are leaked instead. Leaking the context leaks them.
//! - **Borrowed buffers** go through [`Context::scope`], which, like
//!   `std::thread::scope`, runs a closure and then waits in its own frame
//!   for every request the scope issued — also when the closure panics —
//!   before the borrows end. If the wait itself cannot proceed (an
//!   `io_getevents` error other than `EINTR`), the process aborts rather
//!   than return.
//! - **Panics during submission** cannot strand a request: the buffers'
//!   code (the `unsafe` traits' methods) runs before a slot is taken, and the
//!   kernel sees a request only once its slot owns everything it points at.
//! - The iovec array of a vectored request lives in its slot until the
//!   event arrives, though the kernel copies it during `io_submit`.
//!
//! # Files: why a request never reaches another file
//!
//! A request holds the file it names, not only its descriptor number,
//! until its event has been processed: operations take any `F: AsFd` and
//! the slot keeps `F` with the buffers. [`Context::push`] and the tokio
//! front-end need `F: 'static` — a share of the file such as `Arc<File>`,
//! or an owned `File`/`OwnedFd` — so dropping every other handle, closing,
//! and opening another file that gets the same number cannot redirect a
//! queued request, nor the rest of a read that [`Driver::Auto`] continues
//! on the engine (which uses the same, still open, descriptor). Borrowed
//! files (`&File`) go through [`Context::scope`] and [`Context::run`],
//! whose borrow lasts until the request is done. `docs/soundness.md` in
//! the repository lists each misuse and the test that shows it harmless.
//!
//! # Threading
//!
//! A [`Context`] is `Send` and not `Sync`: one thread at a time submits and
//! reaps, and [`Ticket`]s and [`Scope`]s borrow the context, so they stay on
//! that thread. Move the context to hand both roles to another thread; use
//! one context per thread for parallel submission (contexts are cheap, but
//! each counts against `fs.aio-max-nr`).
//!
//! A context belongs to the process that created it. In a `fork` child
//! every request of it fails with an error that says so, and the child
//! never touches the parent's contexts or ring (which Linux shares with
//! the parent): create a new context in the child.
//!
//! # Async: the `tokio` feature
//!
//! `aio::tokio` (feature `tokio`) runs the same requests from
//! futures: an `aio::tokio::File` with owned-buffer
//! `read_at`/`write_at`/`readv_at`/`writev_at`/`read_exact_at`/
//! `write_all_at`/`sync_all`/`sync_data`, readiness of any descriptor
//! through `IOCB_CMD_POLL`, one driver per runtime. Its context is shared
//! between worker threads behind a mutex, so its futures are `Send`; the
//! blocking [`Context`] keeps its single-threaded `RefCell`. Buffered I/O
//! blocks the polling worker inside `io_submit` (see the module docs).
//!
//! # Misuse that does not compile
//!
//! An owned request cannot borrow its buffer:
//!
//! ```compile_fail
//! let file = std::sync::Arc::new(tempfile::tempfile().unwrap());
//! let ctx = aio::Context::new(8).unwrap();
//! let mut buf = vec![0u8; 8];
//! let t = ctx.push(aio::Read::new(file, &mut buf[..], 0));
//! drop(buf);
//! t.wait();
//! ```
//!
//! Nor its file: a pushed request outlives the caller's borrow, so the
//! file could be closed and its number reused while the request waits:
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let t = ctx.push(aio::Write::new(&file, b"data".to_vec(), 0));
//! drop(file);
//! t.wait();
//! ```
//!
//! A scope lends its file for the whole scope:
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let mut buf = [0u8; 8];
//! ctx.scope(|s| {
//!     s.read_at(&file, &mut buf, 0);
//!     drop(file);
//! });
//! ```
//!
//! The tokio front-end needs owned files too (an `Op` may be forgotten
//! after its first poll, with its request still queued):
//!
//! ```compile_fail
//! # #[cfg(feature = "tokio")]
//! async fn f(handle: aio::tokio::Handle, file: std::fs::File) {
//!     let op = handle.run(aio::Read::new(&file, vec![0u8; 8], 0));
//!     drop(file);
//!     op.await;
//! }
//! # #[cfg(not(feature = "tokio"))]
//! # compile_error!("needs the tokio feature");
//! ```
//!
//! A buffer lent to a scope cannot be touched until the scope has waited,
//! through any of its entry points:
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let mut buf = [0u8; 8];
//! ctx.scope(|s| {
//!     s.read_at(&file, &mut buf, 0);
//!     buf[0] = 1;
//! });
//! ```
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let buf = [0u8; 8];
//! let mut other = buf;
//! ctx.scope(|s| {
//!     s.write_at(&file, &other, 0);
//!     other[0] = 1;
//! });
//! ```
//!
//! The segments of a scoped vectored request are consumed: a caller cannot
//! keep a `&mut` to one of them (or reborrow it) while the request writes
//! into it:
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
//! ctx.scope(|s| {
//!     let mut list = [&mut a[..], &mut b[..]];
//!     s.readv_at(&file, list, 0);
//!     list[0][0] = 1;
//! });
//! ```
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
//! ctx.scope(|s| {
//!     let first: &mut [u8] = &mut a;
//!     s.readv_at(&file, [&mut *first, &mut b[..]], 0);
//!     first[0] = 1;
//! });
//! ```
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let (mut a, b) = ([0u8; 4], [0u8; 4]);
//! ctx.scope(|s| {
//!     let list = vec![&a[..], &b[..]];
//!     s.writev_at(&file, list, 0);
//!     a[0] = list[0][0];
//! });
//! ```
//!
//! The same holds for any operation pushed through a scope:
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let mut buf = vec![0u8; 8];
//! ctx.scope(|s| {
//!     s.push(aio::ReadV::new(&file, vec![&mut buf[..4]], 0));
//!     buf[0] = 1;
//! });
//! ```
//!
//! A buffer local to the scope's closure cannot be lent (it would die
//! before the scope waits):
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! ctx.scope(|s| {
//!     let mut buf = [0u8; 8];
//!     s.read_at(&file, &mut buf, 0);
//! });
//! ```
//!
//! A scoped ticket cannot leave its scope:
//!
//! ```compile_fail
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let mut buf = [0u8; 8];
//! let t = ctx.scope(|s| s.read_at(&file, &mut buf, 0));
//! ```
//!
//! A context is not shared between threads (and tickets, which borrow it,
//! stay on its thread):
//!
//! ```compile_fail
//! fn shared<T: Sync>() {}
//! shared::<aio::Context>();
//! ```
//!
//! # Batching and the hot path
//!
//! Requests pushed before a [`Context::submit`], [`Context::wait`] or
//! [`Ticket::wait`] reach the kernel in one `io_submit`, split only when
//! the ring is full; `EAGAIN` or a short count is back-pressure (reap, then
//! submit the rest). Completions are read from the shared ring without a
//! system call whenever they are there; `io_getevents` is used only to
//! sleep ([`Reap`]). Note that Linux completes buffered file I/O inside
//! `io_submit`, and a read of an empty pipe blocks there: only `O_DIRECT`
//! on block devices and most filesystems is truly asynchronous (poll a pipe
//! first with [`Poll`]). Slots (iocb, iovec storage, buffer storage) are reused,
//! so a steady stream of requests allocates nothing: buffer values of up
//! to four machine words (a `Vec`, a `Box<[u8]>`, an [`AlignedBuf`], a `Vec`
//! of buffers) are stored inline in the slot; larger ones, such as arrays
//! of several `Vec`s, take one allocation per request. [`Context::stats`]
//! counts requests, `io_submit` and `io_getevents` calls and ring reaps.
//!
//! # `O_DIRECT`
//!
//! [`AlignedBuf`] provides aligned memory and [`dio_alignment`] the
//! alignment a file needs. A misaligned read or write on an `O_DIRECT`
//! descriptor is refused before submission with an error naming the
//! required alignment, instead of the kernel's bare `EINVAL`.
//!
//! # Errors
//!
//! Results are [`std::io::Error`]s with the errno (see [`errno`]); where the
//! cause is known they explain it ([`Error`]): `aio-max-nr` exhausted, AIO
//! blocked by seccomp, unsupported `RWF_*` flags, a file without AIO fsync,
//! `O_DIRECT` alignment.

mod align;
mod buf;
mod context;
mod core;
mod driver;
mod erased;
mod error;
mod op;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use aio_abi::{Errno, PollEvents, RwFlags, ioprio};
/// What native AIO can do on this kernel and in this process (re-exported
/// from `aio-sys` for diagnostics such as `aio-tools probe`).
pub use aio_sys::probe;

pub use align::{AlignmentSource, DioAlignment, dio_alignment, is_direct};
pub use buf::{AlignedBuf, IoBuf, IoBufMut, IoBufs, IoBufsMut, Single};
pub use context::{Context, ContextBuilder, Reap, Scope, Ticket};
pub use core::Stats;
pub use driver::Driver;
pub use error::{Error, errno};
pub use op::{Fdatasync, Fsync, Operation, Poll, Read, ReadV, Write, WriteV};
