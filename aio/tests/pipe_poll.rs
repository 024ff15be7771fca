//! `Poll` then `Read` on a pipe, and `Write` to a pipe.

mod common;

use common::pipe;
use std::io::Write as _;

use aio::{Context, Poll, PollEvents, Read, Write};

#[test]
fn poll_waits_for_data_then_read_gets_it() {
    let (rd, mut wr) = pipe();
    let ctx = Context::new(8).unwrap();
    let poll = ctx.push(Poll::new(rd.try_clone().unwrap(), PollEvents::IN));
    ctx.submit();
    // Nothing written yet: the poll is waiting in the kernel.
    let poll = poll
        .try_wait()
        .expect_err("poll completed on an empty pipe");
    assert_eq!(ctx.in_flight(), 1);
    wr.write_all(b"ping").unwrap();
    let ready = poll.wait().unwrap();
    assert!(ready.contains(PollEvents::IN), "{ready:?}");
    // Readable now, so the read does not block inside io_submit.
    let (n, buf) = ctx.run(Read::new(&rd, vec![0u8; 16], 0));
    assert_eq!(&buf[..n.unwrap()], b"ping");
}

#[test]
fn write_to_a_pipe_then_poll_and_read() {
    let (rd, wr) = pipe();
    let ctx = Context::new(8).unwrap();
    let (n, _) = ctx.run(Write::new(&wr, b"through aio".to_vec(), 0));
    assert_eq!(n.unwrap(), 11);
    assert!(
        ctx.run(Poll::new(&rd, PollEvents::IN))
            .unwrap()
            .contains(PollEvents::IN)
    );
    let (n, buf) = ctx.run(Read::new(&rd, vec![0u8; 11], 0));
    assert_eq!((n.unwrap(), &buf[..]), (11, &b"through aio"[..]));
}

#[test]
fn pending_poll_does_not_hang_context_drop() {
    // io_destroy cancels waiting polls; the drop must return.
    let (rd, _wr) = pipe();
    let ctx = Context::new(8).unwrap();
    drop(ctx.push(Poll::new(rd, PollEvents::IN)));
    ctx.submit();
    assert_eq!(ctx.in_flight(), 1);
    drop(ctx);
}

#[test]
fn hangup_is_reported() {
    let (rd, wr) = pipe();
    drop(wr);
    let ctx = Context::new(8).unwrap();
    let ready = ctx.run(Poll::new(&rd, PollEvents::IN)).unwrap();
    assert!(ready.contains(PollEvents::HUP), "{ready:?}");
}

#[test]
fn queued_pipe_read_does_not_block_context_drop() {
    // Submitting a read of an empty pipe would block inside io_submit; a
    // context dropped with it still queued drops it instead.
    let (rd, _wr) = pipe();
    let ctx = Context::new(8).unwrap();
    drop(ctx.push(Read::new(rd, vec![0u8; 8], 0)));
    assert_eq!(ctx.queued(), 1);
    drop(ctx);
}
