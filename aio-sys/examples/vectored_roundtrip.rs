//! Writes a file with one vectored AIO request (`IOCB_CMD_PWRITEV`), reads
//! it back through a different segment layout (`IOCB_CMD_PREADV`), reaps
//! both completions from the ring, and verifies every byte.
//!
//! `cargo run --release -p aio-sys --example vectored_roundtrip [DIR]`

use std::os::fd::AsRawFd;
use std::time::Duration;

use aio_sys::abi::{IoEvent, IoVec, Iocb};
use aio_sys::{RingView, io_destroy, io_setup, io_submit};

fn iovecs(bufs: &mut [Vec<u8>]) -> Vec<IoVec> {
    bufs.iter_mut()
        .map(|b| IoVec {
            iov_base: b.as_mut_ptr() as u64,
            iov_len: b.len() as u64,
        })
        .collect()
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let path = dir.join(format!("aio-vectored-roundtrip-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_or_else(|e| {
            eprintln!("cannot create {}: {e}", path.display());
            std::process::exit(2)
        });
    std::fs::remove_file(&path).ok();

    let ctx = io_setup(8).unwrap_or_else(|e| {
        eprintln!("io_setup failed: {e}; run `aio_sys::probe` for the reason");
        std::process::exit(2)
    });
    // SAFETY: `ctx` stays alive until io_destroy at the end, after the last use of `ring`.
    let mut ring = unsafe { RingView::new(ctx) };

    // Write 1 MiB in 7 segments of unequal lengths, each byte its own offset mod 251.
    let lens = [1, 4095, 4096, 65_537, 200_000, 300_000, 1_048_576 - 573_729];
    let mut offset = 0usize;
    let mut wbufs: Vec<Vec<u8>> = lens
        .iter()
        .map(|&len| {
            let b = (offset..offset + len).map(|i| (i % 251) as u8).collect();
            offset += len;
            b
        })
        .collect();
    let total = offset;
    let wiov = iovecs(&mut wbufs);
    let mut write =
        Iocb::pwritev(file.as_raw_fd(), wiov.as_ptr() as u64, wiov.len() as u64, 0).with_data(1);
    // SAFETY: the iocb, the iovec array and the buffers live until the event is reaped below.
    unsafe { io_submit(ctx, &[&mut write as *mut Iocb]) }.expect("io_submit(PWRITEV)");
    let mut ev = [IoEvent::default()];
    ring.get_events(1, &mut ev, Some(Duration::from_secs(30)))
        .expect("reap PWRITEV");
    assert_eq!(ev[0].res, total as i64, "short vectored write");

    // Read back through 3 segments laid out differently.
    let mut rbufs = vec![
        vec![0u8; 12_345],
        vec![0u8; 500_000],
        vec![0u8; total - 512_345],
    ];
    let riov = iovecs(&mut rbufs);
    let mut read =
        Iocb::preadv(file.as_raw_fd(), riov.as_ptr() as u64, riov.len() as u64, 0).with_data(2);
    // SAFETY: as above.
    unsafe { io_submit(ctx, &[&mut read as *mut Iocb]) }.expect("io_submit(PREADV)");
    let reaped_from_ring = ring.ready();
    ring.get_events(1, &mut ev, Some(Duration::from_secs(30)))
        .expect("reap PREADV");
    assert_eq!((ev[0].data, ev[0].res), (2, total as i64));

    let read_back: Vec<u8> = rbufs.concat();
    let bad = read_back
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != (i % 251) as u8);
    let mapped = ring.is_mapped();
    // SAFETY: every request was reaped and `ring` is not used again.
    unsafe { io_destroy(ctx) }.expect("io_destroy");
    match bad {
        None => println!(
            "ok: wrote {total} bytes in {} segments with PWRITEV, read them back in {} segments \
             with PREADV, all bytes match (ring reaping: {}, event waiting in ring: {})",
            lens.len(),
            rbufs.len(),
            if mapped { "yes" } else { "no" },
            reaped_from_ring
        ),
        Some((i, b)) => {
            eprintln!("MISMATCH at offset {i}: expected {}, found {b}", i % 251);
            std::process::exit(1)
        }
    }
}
