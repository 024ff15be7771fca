//! Vectored asynchronous I/O on Linux native AIO (`io_setup`, `io_submit`,
//! `io_getevents`, `IOCB_CMD_PREADV`/`PWRITEV`), safe to use from safe code.
//!
//! ```
//! use aio::{Context, Read, ReadV, Write};
//!
//! let file = tempfile::tempfile().unwrap();
//! let ctx = Context::new(64).unwrap();
//! // Buffers move into the requests and come back with the results.
//! let (n, _) = ctx.run(Write::new(&file, b"hello world".to_vec(), 0));
//! assert_eq!(n.unwrap(), 11);
//! // Requests queued together are submitted together (one io_submit per
//! // driver) and, as always with AIO, complete in any order.
//! let both = ctx.push(ReadV::new(&file, vec![vec![0u8; 6], vec![0u8; 5]], 0));
//! let tail = ctx.push(Read::new(&file, vec![0u8; 5], 6));
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
//! # Threading
//!
//! A [`Context`] is `Send` and not `Sync`: one thread at a time submits and
//! reaps, and [`Ticket`]s and [`Scope`]s borrow the context, so they stay on
//! that thread. Move the context to hand both roles to another thread; use
//! one context per thread for parallel submission (contexts are cheap, but
//! each counts against `fs.aio-max-nr`).
//!
//! A context belongs to the process that created it: do not use it in a
//! `fork` child (the kernel refuses the child's calls; the ring is shared).
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
//! let file = tempfile::tempfile().unwrap();
//! let ctx = aio::Context::new(8).unwrap();
//! let mut buf = vec![0u8; 8];
//! let t = ctx.push(aio::Read::new(&file, &mut buf[..], 0));
//! drop(buf);
//! t.wait();
//! ```
//!
//! A buffer lent to a scope cannot be touched until the scope has waited:
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
pub use op::{Fdatasync, Fsync, Operation, Poll, Read, ReadV, ScopedIo, Write, WriteV};
