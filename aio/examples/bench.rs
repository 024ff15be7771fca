//! Per-request cost of the safe API: random 4 KiB reads of a file in the
//! page cache (CPU-bound, so the numbers are the software overhead), in
//! batches of the queue depth, like fio's libaio engine with
//! `iodepth_batch_submit = iodepth_batch_complete_min = iodepth`.
//!
//! `cargo run --release -p aio --example bench -- [FILE] [REQUESTS] [DEPTH] [ring|syscall] [check|nocheck]`
//!
//! `nocheck` turns off the `O_DIRECT` alignment check, which costs one
//! `fcntl` per request whose buffers are not 4 KiB-aligned (these `Vec`s).
//!
//! FILE defaults to a 64 MiB file in /dev/shm, created and removed here.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use aio::{Context, Read, Reap};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next();
    let requests: usize = args.next().map_or(1_000_000, |s| s.parse().unwrap());
    let depth: usize = args.next().map_or(64, |s| s.parse().unwrap());
    let reap = match args.next().as_deref() {
        Some("syscall") => Reap::Syscall,
        _ => Reap::Ring,
    };
    let check = args.next().as_deref() != Some("nocheck");
    let size: u64 = 64 << 20;
    let (file, created) = match &path {
        Some(p) => (std::fs::File::open(p).expect("open FILE"), None),
        None => {
            let p = format!("/dev/shm/aio-bench-{}", std::process::id());
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&p)
                .expect("create bench file");
            let chunk = vec![0x5au8; 1 << 20];
            for i in 0..size >> 20 {
                f.write_all_at(&chunk, i << 20).unwrap();
            }
            (f, Some(p))
        }
    };
    let blocks = file.metadata().unwrap().len() / 4096;
    // Each request holds a share of the file until it completes.
    let file = std::sync::Arc::new(file);
    let ctx = Context::builder()
        .queue_depth(depth as u32)
        .reap(reap)
        .check_direct_alignment(check)
        .build()
        .expect("context");
    let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; 4096]).collect();
    let mut tickets = Vec::with_capacity(depth);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let cpu_start = cpu_time();
    let start = Instant::now();
    let mut done = 0;
    while done < requests {
        let batch = depth.min(requests - done);
        for _ in 0..batch {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let off = (rng % blocks) * 4096;
            tickets.push(ctx.push(Read::new(file.clone(), bufs.pop().unwrap(), off)));
        }
        ctx.submit();
        for t in tickets.drain(..) {
            let (r, buf) = t.wait();
            assert_eq!(r.unwrap(), 4096);
            bufs.push(buf);
        }
        done += batch;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    let stats = ctx.stats();
    println!(
        "{requests} reads of 4 KiB, depth {depth}, {:?} reaping, alignment check {check}: {:.0} ns/request wall, {:.0} ns/request CPU, \
         {:.0} kIOPS (io_submit calls {}, io_getevents calls {}, ring reaps {})",
        reap,
        elapsed.as_nanos() as f64 / requests as f64,
        cpu * 1e9 / requests as f64,
        requests as f64 / elapsed.as_secs_f64() / 1e3,
        stats.submit_calls,
        stats.getevents_calls,
        stats.ring_reaps,
    );
    if let Some(p) = created {
        let _ = std::fs::remove_file(p);
    }
}

/// User plus system CPU seconds of this process, less sensitive than wall
/// time to other processes on a shared machine.
fn cpu_time() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the structure it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    // SAFETY: filled above (zeroed before, in case of failure).
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}
