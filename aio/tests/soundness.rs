//! What a hostile caller of the safe API can do, and why it is harmless:
//! files closed and their numbers reused while requests wait, futures
//! forgotten, fork children, shutdown with stream reads pending, scopes
//! that panic. Each test makes its event happen rather than waiting for it.

mod common;

use std::fs::{self, File};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use aio::{Driver, Read, Write};
use common::{DRIVERS, context_on, pipe, scratch_dir, scratch_in};

/// How long a step that must finish may take before the test calls it a
/// hang: generous, since the machine may be busy; it bounds a failure,
/// it measures nothing.
const HANG: Duration = Duration::from_secs(120);

/// Runs `f` on a thread of its own and returns its result, or fails the
/// test if it has not returned after [`HANG`] (the thread is left behind).
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what} did not return (hang)"))
}

/// Waits for a ticket, failing the test after [`HANG`].
fn wait_bounded<O: aio::Operation>(mut ticket: aio::Ticket<'_, O>) -> O::Output {
    let start = std::time::Instant::now();
    loop {
        match ticket.try_wait() {
            Ok(out) => return out,
            Err(t) => ticket = t,
        }
        assert!(start.elapsed() < HANG, "the request never completed (hang)");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A new file in the scratch directory, and its path.
fn new_file(tag: &str) -> (File, std::path::PathBuf) {
    let s = scratch_in(&scratch_dir(), false);
    let path = s.path.with_extension(tag);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    (file, path)
}

#[test]
fn a_queued_write_whose_file_was_dropped_lands_in_that_file() {
    for driver in DRIVERS {
        let (a, path_a) = new_file("a");
        let number = a.as_raw_fd();
        let ctx = context_on(driver, 8);
        let a = Arc::new(a);
        let ticket = ctx.push(Write::new(a.clone(), b"hello world".to_vec(), 0));
        // Every handle of the caller's is gone; the request still holds
        // the file, so the next open cannot get its number.
        drop(a);
        let (b, path_b) = new_file("b");
        assert_ne!(b.as_raw_fd(), number, "{driver:?}: the number was freed");
        assert_eq!(ticket.wait().0.unwrap(), 11, "{driver:?}");
        assert_eq!(fs::read(&path_a).unwrap(), b"hello world", "{driver:?}");
        assert_eq!(fs::read(&path_b).unwrap(), b"", "{driver:?}");
        let _ = fs::remove_file(path_a);
        let _ = fs::remove_file(path_b);
    }
}

/// `Auto` sends a buffered read to the kernel with `RWF_NOWAIT`; the
/// kernel's short answer (the file ends) is continued on the engine, on
/// the same open file, whatever was opened meanwhile.
#[test]
fn an_auto_read_continued_on_the_engine_reads_the_file_it_named() {
    let (a, path_a) = new_file("a");
    a.write_all_at(&[b'A'; 100], 0).unwrap();
    a.sync_all().unwrap();
    let ctx = context_on(Driver::Auto, 8);
    let a = Arc::new(a);
    let ticket = ctx.push(Read::new(a.clone(), vec![0u8; 4096], 0));
    assert_eq!(ctx.submit(), 1);
    drop(a);
    let (b, path_b) = new_file("b");
    b.write_all_at(&[b'B'; 8192], 0).unwrap();
    let (n, buf) = ticket.wait();
    assert_eq!(n.unwrap(), 100, "the read of a 100-byte file ends at 100");
    assert_eq!(&buf[..100], &[b'A'; 100][..]);
    assert!(buf[100..].iter().all(|&b| b == 0), "bytes of another file");
    drop(b);
    let _ = fs::remove_file(path_a);
    let _ = fs::remove_file(path_b);
}

mod tokio_front {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    /// Polls `f` once, from the calling task.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    /// An `Op` polled once (its request queued) and then forgotten: the
    /// request is submitted later, after its `File` was dropped and
    /// another file opened; it still writes into the file it named.
    #[test]
    fn a_forgotten_op_still_writes_into_its_own_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, path_a) = new_file("a");
            let number = a.as_raw_fd();
            let handle = aio::tokio::Handle::new().unwrap();
            let file = aio::tokio::File::from_std_with(a, &handle);
            let mut op = file.write_at(b"forgotten".to_vec(), 0);
            assert!(poll_once(&mut op).await.is_pending());
            std::mem::forget(op);
            drop(file);
            let (b, path_b) = new_file("b");
            assert_ne!(b.as_raw_fd(), number);
            // Another request on the driver submits the queue.
            let other = aio::tokio::File::from_std_with(b.try_clone().unwrap(), &handle);
            let (n, _) = other.read_at(vec![0u8; 4], 0).await;
            assert_eq!(n.unwrap(), 0);
            while handle.in_flight() + handle.queued() > 0 {
                tokio::task::yield_now().await;
            }
            assert_eq!(fs::read(&path_a).unwrap(), b"forgotten");
            assert_eq!(fs::read(&path_b).unwrap(), b"");
            let _ = fs::remove_file(path_a);
            let _ = fs::remove_file(path_b);
        });
    }

    /// A read of a pipe whose writer stays open times out and is dropped;
    /// then the runtime is dropped. Shutdown must cancel the read (on the
    /// engine, where `Auto` sends pipes) instead of waiting for data that
    /// never comes, and hand every buffer back.
    #[test]
    fn dropping_the_runtime_with_a_pipe_read_pending_returns() {
        for driver in [Driver::Auto, Driver::Engine] {
            let (r, w) = pipe();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let handle = aio::tokio::Builder::new().driver(driver).build().unwrap();
                let file = aio::tokio::File::from_std_with(r, &handle);
                let read = file.read_at(vec![0u8; 8], 0);
                // Whatever the timeout, the read cannot complete: nothing
                // is ever written.
                let late = tokio::time::timeout(Duration::from_millis(1), read).await;
                assert!(
                    late.is_err(),
                    "{driver:?}: a read of an empty pipe completed"
                );
            });
            finishes("dropping the runtime", move || drop(rt));
            drop(w);
        }
    }
}

/// A scope whose closure panics while a socket read it issued is pending:
/// the scope cancels the read and returns (resuming the panic).
#[test]
fn a_scope_that_panics_with_a_socket_read_pending_returns() {
    for driver in [Driver::Auto, Driver::Engine] {
        let outcome = finishes("the scope", move || {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let ctx = context_on(driver, 8);
            let mut buf = [0u8; 16];
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.scope(|s| {
                    let _pending = s.read_at(&a, &mut buf, 0);
                    s.submit();
                    panic!("the scope's closure fails");
                })
            }));
            drop(b);
            r.is_err()
        });
        assert!(outcome, "{driver:?}: the panic was not resumed");
    }
}

/// A fork child that uses its parent's context gets an error for every
/// request and never reaps the parent's completions from the shared ring:
/// the parent's request, in flight across the fork, completes for the
/// parent.
#[test]
fn a_fork_child_cannot_use_its_parents_context() {
    for driver in DRIVERS {
        let (r, mut w) = pipe();
        let ctx = context_on(driver, 8);
        let poll = ctx.push(aio::Poll::new(r, aio::PollEvents::IN));
        assert_eq!(ctx.submit(), 1);
        let s = scratch_in(&scratch_dir(), false);
        // The child's verdict: 0 right, 1 a request ran, 2 a wrong error.
        // SAFETY: the child only uses the context (the allocator and the
        // stdlib are fork-safe in glibc) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // The child has no use for the parent's ticket.
            std::mem::forget(poll);
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (n, _) = ctx.run(Write::new(&s.file, b"child".to_vec(), 0));
                let e = match n {
                    Ok(_) => return 1,
                    Err(e) => e,
                };
                if !e.to_string().contains("fork child") {
                    return 2;
                }
                // The parent's poll is in flight: waiting for it here
                // must neither steal its event nor hang.
                ctx.wait();
                if ctx.reap() != 0 || ctx.in_flight() != 0 {
                    return 3;
                }
                drop(ctx);
                0
            }))
            .unwrap_or(4);
            // SAFETY: ends the child without running the parent's exit
            // handlers or destructors.
            unsafe { libc::_exit(verdict) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "{driver:?}: the child crashed");
        assert_eq!(libc::WEXITSTATUS(status), 0, "{driver:?}: child verdict");
        w.write_all(b"x").unwrap();
        // Had the child taken the event from the shared ring, the parent
        // would wait forever.
        let ready = wait_bounded(poll);
        assert!(ready.unwrap().contains(aio::PollEvents::IN), "{driver:?}");
        assert_eq!(s.file.metadata().unwrap().len(), 0, "the child wrote");
    }
}

/// `Auto` may try a buffered write in the kernel with `RWF_NOWAIT`; when
/// the kernel's event says no (ext4 refuses such writes), the engine must
/// run it. The caller submitted the write and dropped its ticket: it must
/// land before the context is gone, even if its event was never
/// processed before the drop.
#[test]
fn a_submitted_write_lands_before_its_context_goes() {
    for driver in DRIVERS {
        let (a, path) = new_file("a");
        let ctx = context_on(driver, 8);
        let ticket = ctx.push(Write::new(Arc::new(a), b"submitted".to_vec(), 0));
        assert_eq!(ctx.submit(), 1);
        drop(ticket);
        drop(ctx);
        let back = fs::read(&path).unwrap();
        let _ = fs::remove_file(path);
        assert_eq!(back, b"submitted", "{driver:?}");
    }
}
