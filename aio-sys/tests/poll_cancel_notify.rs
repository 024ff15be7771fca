//! IOCB_CMD_POLL, io_cancel, eventfd notification and io_pgetevents with a
//! signal mask, against the running kernel.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aio_sys::abi::{Errno, IoEvent, Iocb, PollEvents};
use aio_sys::{io_cancel, io_getevents, io_pgetevents};
use common::*;

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: room for two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

fn no_event_within(ctx: &Ctx, d: Duration) -> bool {
    let mut ev = [IoEvent::default()];
    // SAFETY: no ring view of the context exists.
    unsafe { io_getevents(ctx.0, 1, &mut ev, Some(d)) == Ok(0) }
}

#[test]
fn poll_on_a_pipe_completes_when_data_is_written() {
    let ctx = Ctx::new(4);
    let (mut rd, mut wr) = pipe();
    let mut iocb = Iocb::poll(rd.as_raw_fd(), PollEvents::IN).with_data(11);
    assert_eq!(ctx.submit(std::slice::from_mut(&mut iocb)), Ok(1));
    assert!(
        no_event_within(&ctx, Duration::from_millis(100)),
        "empty pipe is not readable"
    );
    wr.write_all(b"x").unwrap();
    let ev = ctx.wait(1)[0];
    assert_eq!(ev.data, 11);
    assert_eq!(ev.obj, &iocb as *const Iocb as u64);
    assert_eq!(ev.res as u32 & PollEvents::IN.0, PollEvents::IN.0);
    // Then the read itself.
    let mut buf = [0u8; 4];
    let ev = ctx
        .run(Iocb::pread(rd.as_raw_fd(), buf.as_mut_ptr() as u64, 4, 0))
        .unwrap();
    assert_eq!((ev.res, buf[0]), (1, b'x'));
    // One-shot: the consumed poll never fires again.
    wr.write_all(b"y").unwrap();
    assert!(no_event_within(&ctx, Duration::from_millis(50)));
    let mut b = [0u8; 1];
    rd.read_exact(&mut b).unwrap();
}

#[test]
fn poll_ready_at_once_reports_the_ready_subset() {
    let ctx = Ctx::new(4);
    let (a, _b) = UnixStream::pair().unwrap();
    let ev = ctx
        .run(Iocb::poll(a.as_raw_fd(), PollEvents::IN | PollEvents::OUT))
        .unwrap();
    assert_eq!(
        ev.res as u32,
        PollEvents::OUT.0,
        "a fresh socket is writable, not readable"
    );
}

#[test]
fn poll_sees_hangup_even_when_not_asked() {
    let ctx = Ctx::new(4);
    let (rd, wr) = pipe();
    let mut iocb = Iocb::poll(rd.as_raw_fd(), PollEvents::IN);
    ctx.submit(std::slice::from_mut(&mut iocb)).unwrap();
    drop(wr);
    let ev = ctx.wait(1)[0];
    assert!(
        ev.res as u32 & PollEvents::HUP.0 != 0,
        "POLLHUP is always reported: {:#x}",
        ev.res
    );
}

#[test]
fn poll_rejects_masks_and_fields_linux_refuses() {
    let ctx = Ctx::new(4);
    let (rd, _wr) = pipe();
    let fd = rd.as_raw_fd();
    let mut too_wide = Iocb {
        aio_buf: 0x1_0000,
        ..Iocb::poll(fd, PollEvents::IN)
    };
    let mut with_offset = Iocb {
        aio_offset: 1,
        ..Iocb::poll(fd, PollEvents::IN)
    };
    let mut with_len = Iocb {
        aio_nbytes: 1,
        ..Iocb::poll(fd, PollEvents::IN)
    };
    for iocb in [&mut too_wide, &mut with_offset, &mut with_len] {
        assert_eq!(ctx.submit(std::slice::from_mut(iocb)), Err(Errno::EINVAL));
    }
}

#[test]
fn cancelling_a_waiting_poll_gives_einprogress_and_res_zero() {
    let ctx = Ctx::new(4);
    let (rd, _wr) = pipe();
    let mut iocb = Iocb::poll(rd.as_raw_fd(), PollEvents::IN).with_data(21);
    ctx.submit(std::slice::from_mut(&mut iocb)).unwrap();
    // SAFETY: a live iocb.
    let r = unsafe { io_cancel(ctx.0, &mut iocb) };
    assert_eq!(r, Err(Errno::EINPROGRESS));
    let ev = ctx.wait(1)[0];
    assert_eq!((ev.data, ev.res), (21, 0));
    // Cancelled already: a second cancel finds nothing.
    // SAFETY: a live iocb.
    assert_eq!(unsafe { io_cancel(ctx.0, &mut iocb) }, Err(Errno::EINVAL));
}

#[test]
fn cancelling_file_io_in_flight_is_einval() {
    let file = match scratch_file_in(&scratch_dir(), true) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "skipping: O_DIRECT refused in {}: {e}",
                scratch_dir().display()
            );
            return;
        }
    };
    const LEN: usize = 16 << 20;
    let mut buf = Aligned::new(LEN, 4096);
    let ctx = Ctx::new(4);
    let addr = buf.as_mut_slice().as_mut_ptr() as u64;
    let written = ctx
        .run(Iocb::pwrite(file.as_raw_fd(), addr, LEN as u64, 0))
        .unwrap();
    assert_eq!(written.res, LEN as i64);
    let mut iocb = Iocb::pread(file.as_raw_fd(), addr, LEN as u64, 0);
    ctx.submit(std::slice::from_mut(&mut iocb)).unwrap();
    // Whether it is still in flight or done, file I/O is never cancellable.
    // SAFETY: a live iocb.
    assert_eq!(unsafe { io_cancel(ctx.0, &mut iocb) }, Err(Errno::EINVAL));
    assert_eq!(ctx.wait(1)[0].res, LEN as i64, "the read still completes");
}

#[test]
fn resfd_eventfd_counts_completions() {
    // SAFETY: plain eventfd creation.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    // SAFETY: fresh fd.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let ctx = Ctx::new(32);
    let file = scratch_file();
    let data = [1u8; 16];
    let mut iocbs: Vec<Iocb> = (0..10)
        .map(|i| {
            Iocb::pwrite(file.as_raw_fd(), data.as_ptr() as u64, 16, i * 16)
                .with_eventfd(efd.as_raw_fd())
        })
        .collect();
    // Two without the flag: they must not count.
    iocbs.push(Iocb::fsync(file.as_raw_fd()));
    iocbs.push(Iocb::fdsync(file.as_raw_fd()));
    assert_eq!(ctx.submit(&mut iocbs), Ok(12));
    let evs = ctx.wait(12);
    assert!(evs.iter().all(|e| e.res >= 0));
    let mut count = 0u64;
    // SAFETY: reading 8 bytes into a u64 from our eventfd.
    let n = unsafe { libc::read(efd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    assert_eq!((n, count), (8, 10));
    // A RESFD that is not an eventfd is refused.
    let mut bad = Iocb::fsync(file.as_raw_fd()).with_eventfd(file.as_raw_fd());
    assert_eq!(
        ctx.submit(std::slice::from_mut(&mut bad)),
        Err(Errno::EINVAL)
    );
    let mut closed = Iocb::fsync(file.as_raw_fd()).with_eventfd(4001);
    assert_eq!(
        ctx.submit(std::slice::from_mut(&mut closed)),
        Err(Errno::EBADF)
    );
}

#[test]
fn fsync_and_fdsync_complete_with_zero() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    assert_eq!(ctx.run(Iocb::fsync(file.as_raw_fd())).unwrap().res, 0);
    assert_eq!(ctx.run(Iocb::fdsync(file.as_raw_fd())).unwrap().res, 0);
}

static HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn io_pgetevents_with_a_sigmask_returns_eintr_on_a_signal() {
    // SAFETY: installs a handler that only touches an atomic; sigaction
    // struct zero-initialised then filled.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    let ctx = Ctx::new(4);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        // Block SIGUSR1 in this thread; the wait mask unblocks it.
        // SAFETY: sigset manipulation on locals and this thread's mask.
        let wait_mask = unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, libc::SIGUSR1);
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &block, std::ptr::null_mut()),
                0
            );
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            empty
        };
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        let mut ev = [IoEvent::default()];
        let start = Instant::now();
        // SAFETY: no ring view of the context exists.
        let r = unsafe {
            io_pgetevents(
                ctx.0,
                1,
                &mut ev,
                Some(Duration::from_secs(10)),
                Some(&wait_mask),
            )
        };
        (r, start.elapsed())
    });
    let tid = rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: the thread is alive until it returns from io_pgetevents,
    // which needs this signal (or 10 s).
    assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR1) }, 0);
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r, Err(Errno::EINTR));
    assert!(
        took < Duration::from_secs(5),
        "woken by the signal, not the timeout"
    );
    assert!(HANDLED.load(Ordering::SeqCst) >= 1, "the handler ran");
}
