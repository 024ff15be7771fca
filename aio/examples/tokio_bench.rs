//! 4 KiB random `O_DIRECT` reads at 32 in flight, in one process, on the
//! same file, with:
//!
//! - the sync API (`Context`, refilling the requests that completed after
//!   each wait, one `io_submit` per refill);
//! - the tokio API on a current-thread runtime (`FuturesUnordered` of
//!   32 `File::read_at` futures, one replaced as each completes) and on a
//!   multi-thread runtime (32 tasks, each awaiting one read at a time);
//! - what `tokio::fs` does: `spawn_blocking` of a `pread` per request
//!   (`tokio::fs::File` has no positioned read), 32 tasks on a
//!   multi-thread runtime.
//!
//! Phases are interleaved for `ROUNDS` rounds; the medians of IOPS and of
//! CPU time per read (user + system, all threads of this process; less
//! sensitive to other load on a shared machine) and their ratios are
//! printed at the end.
//!
//! `cargo run --release -p aio --features tokio --example tokio_bench -- [FILE] [REQUESTS] [ROUNDS] [sync|ct|mt|fs]`
//!
//! FILE defaults to a 1 GiB file in `$AIO_TEST_DIR` (else the temporary
//! directory), created with `O_DIRECT` and removed at the end; REQUESTS per
//! phase defaults to 100 000, ROUNDS to 3.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aio::tokio::{File, Handle};
use aio::{AlignedBuf, Context, Read, Ticket};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

const DEPTH: usize = 32;
const BS: usize = 4096;

/// A xorshift stream of block offsets, shared by the tasks of a phase.
struct Offsets {
    state: AtomicU64,
    blocks: u64,
}

impl Offsets {
    fn new(seed: u64, blocks: u64) -> Offsets {
        Offsets {
            state: AtomicU64::new(seed | 1),
            blocks,
        }
    }

    fn next(&self) -> u64 {
        let mut x = self.state.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state.store(x, Ordering::Relaxed);
        (x % self.blocks) * BS as u64
    }
}

/// A read that holds a share of the file.
type SharedRead = Read<std::sync::Arc<std::fs::File>, AlignedBuf>;

fn sync_api(file: &std::fs::File, n: usize, offs: &Offsets) -> f64 {
    let file = std::sync::Arc::new(file.try_clone().unwrap());
    let ctx = Context::builder()
        .queue_depth(DEPTH as u32)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut tickets: Vec<Option<Ticket<'_, SharedRead>>> = (0..DEPTH)
        .map(|_| {
            Some(ctx.push(Read::new(
                file.clone(),
                AlignedBuf::new(BS, BS),
                offs.next(),
            )))
        })
        .collect();
    ctx.submit();
    let (mut issued, mut done) = (DEPTH, 0);
    while done < n {
        ctx.wait();
        for slot in &mut tickets {
            if slot.as_ref().is_some_and(|t| t.is_done()) {
                let (r, buf) = slot.take().unwrap().wait();
                assert_eq!(r.unwrap(), BS);
                done += 1;
                if issued < n {
                    issued += 1;
                    *slot = Some(ctx.push(Read::new(file.clone(), buf, offs.next())));
                }
            }
        }
        ctx.submit();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn tokio_futures_unordered(
    rt: tokio::runtime::Runtime,
    file: &std::fs::File,
    n: usize,
    offs: &Offsets,
) -> f64 {
    rt.block_on(async {
        let handle = Handle::builder().queue_depth(DEPTH as u32).build().unwrap();
        let file = File::from_std_with(file.try_clone().unwrap(), &handle);
        let start = Instant::now();
        let mut reads: FuturesUnordered<_> = (0..DEPTH)
            .map(|_| file.read_at(AlignedBuf::new(BS, BS), offs.next()))
            .collect();
        let (mut issued, mut done) = (DEPTH, 0);
        while let Some((r, buf)) = reads.next().await {
            assert_eq!(r.unwrap(), BS);
            done += 1;
            if issued < n {
                issued += 1;
                reads.push(file.read_at(buf, offs.next()));
            }
        }
        assert_eq!(done, n);
        report_batching(&handle);
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn tokio_tasks(
    rt: tokio::runtime::Runtime,
    file: &std::fs::File,
    n: usize,
    offs: &Arc<Offsets>,
) -> f64 {
    rt.block_on(async {
        let handle = Handle::builder().queue_depth(DEPTH as u32).build().unwrap();
        let file = Arc::new(File::from_std_with(file.try_clone().unwrap(), &handle));
        let start = Instant::now();
        let tasks: Vec<_> = (0..DEPTH)
            .map(|t| {
                let (file, offs) = (file.clone(), offs.clone());
                tokio::spawn(async move {
                    let mut buf = AlignedBuf::new(BS, BS);
                    for _ in (t..n).step_by(DEPTH) {
                        let (r, b) = file.read_at(buf, offs.next()).await;
                        assert_eq!(r.unwrap(), BS);
                        buf = b;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        report_batching(&handle);
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn spawn_blocking_pread(file: &std::fs::File, n: usize, offs: &Arc<Offsets>) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let file = Arc::new(file.try_clone().unwrap());
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..DEPTH)
            .map(|t| {
                let (file, offs) = (file.clone(), offs.clone());
                tokio::spawn(async move {
                    let mut buf = AlignedBuf::new(BS, BS);
                    for _ in (t..n).step_by(DEPTH) {
                        let (file, off) = (file.clone(), offs.next());
                        let (r, b) = tokio::task::spawn_blocking(move || {
                            let r = file.read_at(&mut buf, off);
                            (r, buf)
                        })
                        .await
                        .unwrap();
                        assert_eq!(r.unwrap(), BS);
                        buf = b;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

/// User plus system CPU seconds of this process, all threads.
fn cpu_time() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the structure it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    // SAFETY: filled above (zeroed before, in case of failure).
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Requests per `io_submit`, on stderr, to keep the table readable.
fn report_batching(handle: &Handle) {
    let st = handle.stats();
    eprintln!(
        "  ({} reads in {} io_submit calls: {:.1} per call)",
        st.submitted,
        st.submit_calls,
        st.submitted as f64 / st.submit_calls as f64
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().filter(|p| !p.is_empty());
    let n: usize = args.next().map_or(100_000, |s| s.parse().unwrap());
    let rounds: usize = args.next().map_or(3, |s| s.parse().unwrap());
    // One phase only (sync, ct, mt or fs), for profiling.
    let only = args.next();
    let run = |phase: &str| only.as_deref().is_none_or(|o| o == phase);
    let created = path.is_none();
    let path = path.map_or_else(
        || {
            let dir =
                std::env::var_os("AIO_TEST_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
            dir.join(format!("aio-tokio-bench-{}", std::process::id()))
        },
        PathBuf::from,
    );
    let file = OpenOptions::new()
        .read(true)
        .write(created)
        .create_new(created)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {} with O_DIRECT: {e}", path.display()));
    if created {
        let chunk = AlignedBuf::from_slice(&vec![0x5au8; 1 << 20], BS);
        for i in 0..1024u64 {
            file.write_all_at(&chunk, i << 20).unwrap();
        }
        file.sync_all().unwrap();
    }
    // Seeking to the end also sizes block devices (whose metadata says 0).
    let blocks = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)).unwrap() / BS as u64;
    println!(
        "{} ({} MiB), 4 KiB random O_DIRECT reads, {DEPTH} in flight, {n} per phase, {rounds} rounds",
        path.display(),
        (blocks * BS as u64) >> 20
    );
    const NAMES: [&str; 5] = [
        "sync",
        "tokio current-thread FuturesUnordered",
        "tokio current-thread 32 tasks",
        "tokio multi-thread 32 tasks",
        "spawn_blocking pread",
    ];
    let mut iops: [Vec<f64>; 5] = Default::default();
    let mut cpu: [Vec<f64>; 5] = Default::default();
    for round in 0..rounds {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ round as u64;
        let offs = Arc::new(Offsets::new(seed, blocks));
        let current = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let multi = || {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let phases: [(&str, &dyn Fn() -> f64); 5] = [
            ("sync", &|| sync_api(&file, n, &offs)),
            ("ct", &|| {
                tokio_futures_unordered(current(), &file, n, &offs)
            }),
            ("ctt", &|| tokio_tasks(current(), &file, n, &offs)),
            ("mt", &|| tokio_tasks(multi(), &file, n, &offs)),
            ("fs", &|| spawn_blocking_pread(&file, n, &offs)),
        ];
        let mut line = format!("round {round}:");
        for (i, (tag, phase)) in phases.iter().enumerate() {
            let (rate, us) = if run(tag) {
                let before = cpu_time();
                let rate = phase();
                (rate, (cpu_time() - before) * 1e6 / n as f64)
            } else {
                (f64::NAN, f64::NAN)
            };
            line += &format!(" {} {rate:.0} IOPS {us:.2} us CPU |", NAMES[i]);
            iops[i].push(rate);
            cpu[i].push(us);
        }
        println!("{}", line.trim_end_matches(" |"));
    }
    let iops = iops.map(|mut v| median(&mut v));
    let cpu = cpu.map(|mut v| median(&mut v));
    println!("medians:");
    for i in 0..5 {
        println!(
            "  {:<40} {:>9.0} IOPS {:>6.2} us CPU per read",
            NAMES[i], iops[i], cpu[i]
        );
    }
    for i in 1..4 {
        println!(
            "  {:<40} IOPS x{:.2} of sync, x{:.2} of spawn_blocking; CPU per read x{:.2} of sync",
            NAMES[i],
            iops[i] / iops[0],
            iops[i] / iops[4],
            cpu[i] / cpu[0]
        );
    }
    if created {
        let _ = std::fs::remove_file(&path);
    }
}
