//! `aio-tools stress`: long-running checks of the `ltp-aio*` kind, bounded
//! by `--duration` and `--ops`, all verified:
//!
//! - **mixed**: threads × files × depth of vectored writes, read-backs
//!   through other segment layouts, and fsyncs; each thread owns a region
//!   of every file and remembers which generation wrote each block;
//! - **append**: `O_APPEND` writers whose records must each land once, whole,
//!   in order per writer;
//! - **sparse**: a writer fills a sparse file block by block while readers
//!   check that every 8-byte word they see is zero or the written data;
//! - **contexts**: contexts created and dropped (some with requests in
//!   flight) under the load of the others; afterwards no ring of theirs may
//!   still be mapped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use aio::{AlignedBuf, Context, Fdatasync, Fsync, Read, ReadV, WriteV};
use serde_json::json;

use crate::report::{engine_json, engine_line, io_error_text, print_capped, usage_error};
use crate::stats::{parse_duration, parse_size};
use crate::vectest::{Pattern, Rng, Word, split};
use crate::{Exit, Output};

const BLOCK: u64 = 4096;

/// Failures kept for the report (all of them are counted).
const KEPT_FAILURES: usize = 100_000;

/// Set by SIGINT, SIGTERM and SIGHUP: the workers stop, the report is
/// printed, the files are removed, and the exit code is 2.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// The command's arguments.
#[derive(clap::Args, Debug)]
pub struct StressArgs {
    /// Directory for the stress files (default: $AIO_TEST_DIR or the
    /// temporary directory); they are removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop after this long (ms, s, m, h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many operations in all (default: no limit).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Files of the mixed workload.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub files: u32,
    /// Threads of the mixed and append workloads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Requests in flight per thread.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub depth: u32,
    /// Size of each file of the mixed and sparse workloads.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub file_size: u64,
    /// Use O_DIRECT for the mixed workload.
    #[arg(long)]
    pub direct: bool,
    /// Seed of everything random.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// What executes the requests.
    #[arg(long, value_enum, default_value_t = crate::DriverArg::Auto)]
    pub driver: crate::DriverArg,
}

impl StressArgs {
    /// A context of `depth` on the chosen driver.
    fn context(&self, depth: u32) -> std::io::Result<Context> {
        Context::builder()
            .queue_depth(depth)
            .driver(self.driver.into())
            .build()
    }
}

/// Counters shared by the workloads.
#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    mixed: Counters,
    append: Counters,
    sparse: Counters,
    contexts: Counters,
    total_ops: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    /// The failures, for the report: the first [`KEPT_FAILURES`] of them.
    failures: Mutex<Vec<String>>,
    /// Failures beyond [`KEPT_FAILURES`], counted only.
    failures_not_kept: AtomicU64,
    /// Why the run could not go on (no AIO context could be made): the
    /// environment's fault, not a failed check.
    environment: Mutex<Option<String>>,
    /// Append rounds left unverified because one of their appends failed
    /// (which is reported as such): the file then holds a partial record.
    unverified_rounds: AtomicU64,
}

impl Shared {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && !SIGNALLED.load(Ordering::Relaxed)
            && self.total_ops.load(Ordering::Relaxed) < self.limit
            && self.deadline.is_none_or(|d| Instant::now() < d)
    }

    fn op(&self, c: &Counters, n: u64) {
        c.ops.fetch_add(n, Ordering::Relaxed);
        self.total_ops.fetch_add(n, Ordering::Relaxed);
    }

    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap();
        if f.len() < KEPT_FAILURES {
            f.push(what);
        } else {
            self.failures_not_kept.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops the run: the environment cannot run it (`why`).
    fn environment(&self, why: String) {
        self.environment.lock().unwrap().get_or_insert(why);
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What went wrong with `verb` (`writing`, `reading`) `len` bytes at
/// `offset` of `path`, which returned `r`; `None` if every byte moved.
fn transfer_failure(
    verb: &str,
    path: &str,
    offset: u64,
    len: u64,
    r: &io::Result<usize>,
) -> Option<String> {
    let range = format!("bytes {offset}..{} of {path}", offset + len);
    match r {
        Ok(n) if *n as u64 == len => None,
        Ok(n) => Some(format!("{verb} {range} stopped after {n} of {len} bytes")),
        Err(e) => Some(format!("{verb} {range} failed: {}", io_error_text(e))),
    }
}

fn open_rw(path: &Path, extra: i32) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(extra)
        .open(path)
}

/// Buffers for a range, split into 1..=64 segments at random.
fn segments(len: u64, align: usize, rng: &mut Rng) -> Vec<AlignedBuf> {
    let unit = if align > 8 { align as u64 } else { 512 };
    let units = len / unit;
    let n = rng.range(1, units.min(64)) as usize;
    split(units, n, unit, rng)
        .into_iter()
        .map(|l| AlignedBuf::new(l, align))
        .collect()
}

/// `gens` value of a block whose last write failed: its content is
/// unknown, and it is not verified until written again.
const UNKNOWN: u8 = u8::MAX;

fn mixed_worker(
    sh: &Shared,
    args: &StressArgs,
    files: &[Arc<File>],
    names: &[String],
    me: u64,
    patterns: &[Pattern],
) {
    let c = &sh.mixed;
    let align = if args.direct { 4096 } else { 8 };
    let blocks = args.file_size / BLOCK;
    let region = blocks / args.threads as u64;
    let (lo, hi) = (me * region, (me + 1) * region);
    // gens[file][block - lo]: the generation that last wrote the block
    // (0: never; UNKNOWN: its last write failed).
    let mut gens = vec![vec![0u8; region as usize]; files.len()];
    let mut rng = Rng::new(args.seed ^ (me + 1).wrapping_mul(0x9e37));
    let ctx = match args.context(args.depth) {
        Ok(ctx) => ctx,
        Err(e) => return sh.environment(format!("cannot create an AIO context: {e}")),
    };
    let mut generation = 0u8;
    while sh.running() {
        // 1..UNKNOWN, round and round.
        generation = generation % (UNKNOWN - 1) + 1;
        // Writes to disjoint ranges: one per region slice, so none overlap.
        let n = args.depth as u64;
        let slice = (region / n).max(1);
        let mut tickets = Vec::new();
        for k in 0..n.min(region) {
            let f = rng.range(0, files.len() as u64 - 1) as usize;
            let start = lo + k * slice + rng.range(0, slice.saturating_sub(1));
            let len_blocks = rng
                .range(1, 16)
                .min(lo + (k + 1) * slice - start)
                .min(hi - start)
                .max(1);
            let mut bufs = segments(len_blocks * BLOCK, align, &mut rng);
            let mut off = start * BLOCK;
            for b in &mut bufs {
                patterns[f].fill(b, off, generation);
                off += b.len() as u64;
            }
            for blk in start..start + len_blocks {
                gens[f][(blk - lo) as usize] = generation;
            }
            let t = ctx.push(WriteV::new(files[f].clone(), bufs, start * BLOCK));
            tickets.push((t, f, start, len_blocks));
        }
        for (t, f, start, len) in tickets {
            let (r, _) = t.wait();
            sh.op(c, 1);
            if let Some(why) =
                transfer_failure("writing", &names[f], start * BLOCK, len * BLOCK, &r)
            {
                sh.fail(&c.errors, format!("mixed: {why}"));
                // Reported once, here; not verified until written again.
                for blk in start..start + len {
                    gens[f][(blk - lo) as usize] = UNKNOWN;
                }
            }
        }
        // Read-backs through other layouts, anywhere in the region.
        let mut tickets = Vec::new();
        for _ in 0..n {
            let f = rng.range(0, files.len() as u64 - 1) as usize;
            let start = rng.range(lo, hi - 1);
            let len = rng.range(1, 16).min(hi - start);
            let bufs = segments(len * BLOCK, align, &mut rng);
            tickets.push((
                ctx.push(ReadV::new(files[f].clone(), bufs, start * BLOCK)),
                f,
                start,
                len,
            ));
        }
        for (t, f, start, len) in tickets {
            let (r, bufs) = t.wait();
            sh.op(c, 1);
            if let Some(why) =
                transfer_failure("reading", &names[f], start * BLOCK, len * BLOCK, &r)
            {
                sh.fail(&c.errors, format!("mixed: {why}"));
                continue;
            }
            let data: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            for (i, chunk) in data.chunks(BLOCK as usize).enumerate() {
                let blk = start + i as u64;
                let g = gens[f][(blk - lo) as usize];
                let bad = if g == UNKNOWN {
                    None
                } else if g == 0 {
                    chunk
                        .iter()
                        .any(|&b| b != 0)
                        .then(|| "non-zero data in a block never written".to_string())
                } else {
                    patterns[f]
                        .verify(chunk, blk * BLOCK, g)
                        .map(|m| m.to_string())
                };
                if let Some(why) = bad {
                    sh.fail(
                        &c.mismatches,
                        format!(
                            "mixed: bytes {}..{} of {}: {why}",
                            blk * BLOCK,
                            (blk + 1) * BLOCK,
                            names[f]
                        ),
                    );
                }
            }
        }
        if rng.range(0, 3) == 0 {
            let f = rng.range(0, files.len() as u64 - 1) as usize;
            let r = if rng.range(0, 1) == 0 {
                ctx.run(Fsync::new(&files[f]))
            } else {
                ctx.run(Fdatasync::new(&files[f]))
            };
            sh.op(c, 1);
            if let Err(e) = r {
                sh.fail(
                    &c.errors,
                    format!("mixed: syncing {} failed: {}", names[f], io_error_text(&e)),
                );
            }
        }
    }
}

const RECORD_MAGIC: u32 = 0xa10a_7ec0;
const HEADER: usize = 16;

fn record_payload(writer: u16, seq: u64, len: usize) -> Vec<u8> {
    let p = Pattern::new(((writer as u64) << 48) ^ seq);
    let mut v = vec![0u8; len];
    p.fill(&mut v, 0, 1);
    v
}

/// The append workload goes in rounds, so its file stays small: each
/// writer appends its share, then the first writer checks the round's file
/// and starts the next.
struct AppendRounds {
    barrier: std::sync::Barrier,
    go_on: AtomicBool,
    written: AtomicU64,
    /// Appends of this round that failed.
    failed: AtomicU64,
    round: AtomicU64,
    dir: PathBuf,
}

impl AppendRounds {
    fn path(&self) -> PathBuf {
        self.dir
            .join(format!("append-{}", self.round.load(Ordering::Acquire)))
    }
}

/// Bytes one round's file holds at most (in all writers).
const APPEND_ROUND_BYTES: u64 = 16 << 20;

fn append_worker(sh: &Shared, args: &StressArgs, rounds: &AppendRounds, me: u16) {
    let c = &sh.append;
    let ctx = args.context(args.depth);
    if let Err(e) = &ctx {
        sh.environment(format!("cannot create an AIO context: {e}"));
    }
    let mut rng = Rng::new(args.seed ^ 0xa99 ^ me as u64);
    let share = APPEND_ROUND_BYTES / args.threads as u64;
    loop {
        let file = OpenOptions::new()
            .append(true)
            .open(rounds.path())
            .map(Arc::new);
        match (&ctx, file) {
            (Ok(ctx), Ok(file)) => {
                let (mut seq, mut bytes) = (0u64, 0u64);
                while bytes < share && sh.running() {
                    let mut tickets = Vec::new();
                    for _ in 0..args.depth {
                        let len = rng.range(1, 3000) as usize;
                        let mut header = vec![0u8; HEADER];
                        header[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
                        header[4..6].copy_from_slice(&me.to_le_bytes());
                        header[6..8].copy_from_slice(&(len as u16).to_le_bytes());
                        header[8..16].copy_from_slice(&seq.to_le_bytes());
                        let bufs = vec![header, record_payload(me, seq, len)];
                        // With O_APPEND the offset is ignored: each record goes to the end.
                        tickets.push((ctx.push(WriteV::new(file.clone(), bufs, 0)), HEADER + len));
                        seq += 1;
                    }
                    for (t, len) in tickets {
                        let (r, _) = t.wait();
                        sh.op(c, 1);
                        bytes += len as u64;
                        let failure = match r {
                            Ok(n) if n == len => {
                                rounds.written.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Ok(n) => format!("stopped after {n} of {len} bytes"),
                            Err(e) => format!("failed: {}", io_error_text(&e)),
                        };
                        rounds.failed.fetch_add(1, Ordering::Relaxed);
                        sh.fail(
                            &c.errors,
                            format!(
                                "append: writer {me}: appending a {len}-byte record to {} {failure}",
                                rounds.path().display()
                            ),
                        );
                    }
                }
            }
            // Reported above.
            (Err(_), _) => {}
            (_, Err(e)) => sh.fail(
                &c.errors,
                format!(
                    "append: opening {} failed: {}",
                    rounds.path().display(),
                    io_error_text(&e)
                ),
            ),
        }
        if rounds.barrier.wait().is_leader() {
            let path = rounds.path();
            let written = rounds.written.swap(0, Ordering::Relaxed);
            if rounds.failed.swap(0, Ordering::Relaxed) > 0 {
                // A failed append may have left part of a record.
                sh.unverified_rounds.fetch_add(1, Ordering::Relaxed);
            } else {
                check_appends(sh, &path, args.threads as u16, written);
            }
            let _ = std::fs::remove_file(&path);
            rounds.round.fetch_add(1, Ordering::AcqRel);
            let go_on = sh.running() && ctx.is_ok() && File::create(rounds.path()).is_ok();
            rounds.go_on.store(go_on, Ordering::Release);
        }
        rounds.barrier.wait();
        if !rounds.go_on.load(Ordering::Acquire) {
            return;
        }
    }
}

/// Parses the append file: every record whole, once, in order per writer.
fn check_appends(sh: &Shared, path: &Path, writers: u16, expected: u64) {
    let c = &sh.append;
    let name = path.display();
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            return sh.fail(
                &c.errors,
                format!("append: reading {name} back failed: {}", io_error_text(&e)),
            );
        }
    };
    let mut next = vec![0u64; writers as usize];
    let mut pos = 0;
    let mut records = 0;
    while pos < data.len() {
        let h = &data[pos..(pos + HEADER).min(data.len())];
        if h.len() < HEADER || u32::from_le_bytes(h[0..4].try_into().unwrap()) != RECORD_MAGIC {
            return sh.fail(
                &c.mismatches,
                format!("append: no record header at byte {pos} of {name}"),
            );
        }
        let w = u16::from_le_bytes(h[4..6].try_into().unwrap());
        let len = u16::from_le_bytes(h[6..8].try_into().unwrap()) as usize;
        let seq = u64::from_le_bytes(h[8..16].try_into().unwrap());
        if w >= writers || pos + HEADER + len > data.len() {
            return sh.fail(
                &c.mismatches,
                format!("append: bad record at byte {pos} of {name}"),
            );
        }
        if seq != next[w as usize] {
            sh.fail(
                &c.mismatches,
                format!(
                    "append: writer {w} record {seq} at byte {pos} of {name}, expected record {}",
                    next[w as usize]
                ),
            );
        }
        next[w as usize] = seq + 1;
        if data[pos + HEADER..pos + HEADER + len] != record_payload(w, seq, len)[..] {
            sh.fail(
                &c.mismatches,
                format!("append: writer {w} record {seq} at byte {pos} of {name}: payload corrupt"),
            );
        }
        pos += HEADER + len;
        records += 1;
    }
    if records != expected {
        sh.fail(
            &c.mismatches,
            format!("append: {records} records in {name}, {expected} written"),
        );
    }
}

/// Fills the sparse file block by block in random order, then punches it
/// empty again and starts over (a new pass), for as long as the run lasts.
fn sparse_writer(sh: &Shared, args: &StressArgs, file: &Arc<File>, name: &str, pattern: &Pattern) {
    let c = &sh.sparse;
    let ctx = match args.context(args.depth) {
        Ok(ctx) => ctx,
        Err(e) => return sh.environment(format!("cannot create an AIO context: {e}")),
    };
    let mut order: Vec<u64> = (0..args.file_size / BLOCK).collect();
    let mut rng = Rng::new(args.seed ^ 0x5ba);
    let mut pass = 0u8;
    while sh.running() {
        pass = pass.wrapping_add(1).max(1);
        rng.shuffle(&mut order);
        for chunk in order.chunks(args.depth as usize) {
            if !sh.running() {
                return;
            }
            let tickets: Vec<_> = chunk
                .iter()
                .map(|&blk| {
                    let mut buf = AlignedBuf::new(BLOCK as usize, 8);
                    pattern.fill(&mut buf, blk * BLOCK, pass);
                    (
                        ctx.push(WriteV::new(file.clone(), vec![buf], blk * BLOCK)),
                        blk,
                    )
                })
                .collect();
            for (t, blk) in tickets {
                let (r, _) = t.wait();
                sh.op(c, 1);
                if let Some(why) = transfer_failure("writing", name, blk * BLOCK, BLOCK, &r) {
                    sh.fail(&c.errors, format!("sparse: {why}"));
                }
            }
        }
        // SAFETY: fallocate on our own descriptor; no memory is involved.
        let punched = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                args.file_size as libc::off_t,
            )
        };
        if punched != 0 {
            // Without hole punching (EOPNOTSUPP) one filling is all there is.
            return;
        }
    }
}

fn sparse_reader(
    sh: &Shared,
    args: &StressArgs,
    file: &Arc<File>,
    name: &str,
    pattern: &Pattern,
    me: u64,
) {
    let c = &sh.sparse;
    let ctx = match args.context(args.depth) {
        Ok(ctx) => ctx,
        Err(e) => return sh.environment(format!("cannot create an AIO context: {e}")),
    };
    let mut rng = Rng::new(args.seed ^ 0x5bad ^ me);
    let blocks = args.file_size / BLOCK;
    while sh.running() {
        let tickets: Vec<_> = (0..args.depth)
            .map(|_| {
                let blk = rng.range(0, blocks - 1);
                (
                    ctx.push(Read::new(
                        file.clone(),
                        vec![0u8; BLOCK as usize],
                        blk * BLOCK,
                    )),
                    blk,
                )
            })
            .collect();
        for (t, blk) in tickets {
            let (r, buf) = t.wait();
            sh.op(c, 1);
            if let Some(why) = transfer_failure("reading", name, blk * BLOCK, BLOCK, &r) {
                sh.fail(&c.errors, format!("sparse: {why}"));
                continue;
            }
            for (i, w) in buf.chunks_exact(8).enumerate() {
                let off = blk * BLOCK + 8 * i as u64;
                let word = u64::from_le_bytes(w.try_into().unwrap());
                // Zero (a hole) or data written for exactly this offset, by any pass.
                let ok = word == 0
                    || matches!(pattern.decode(word), Word::Ours { offset, .. } if offset == off);
                if !ok {
                    sh.fail(
                        &c.mismatches,
                        format!(
                            "sparse: bytes {off}..{} of {name} hold {word:#018x}, \
                             neither zeros nor their own data",
                            off + 8
                        ),
                    );
                    break;
                }
            }
        }
    }
}

fn contexts_worker(sh: &Shared, args: &StressArgs, file: &Arc<File>, name: &str) {
    let c = &sh.contexts;
    let mut rng = Rng::new(args.seed ^ 0xc7);
    while sh.running() {
        let depth = rng.range(1, 64) as u32;
        let ctx = match args.context(depth) {
            Ok(ctx) => ctx,
            // Not retried: the cause does not go away by itself.
            Err(e) => return sh.environment(format!("cannot create an AIO context: {e}")),
        };
        let n = rng.range(0, depth as u64);
        let tickets: Vec<_> = (0..n)
            .map(|i| {
                ctx.push(Read::new(
                    file.clone(),
                    AlignedBuf::new(4096, 4096),
                    (i % 64) * 4096,
                ))
            })
            .collect();
        ctx.submit();
        if rng.range(0, 1) == 0 {
            for (i, t) in tickets.into_iter().enumerate() {
                if let (Err(e), _) = t.wait() {
                    let at = (i as u64 % 64) * 4096;
                    sh.fail(
                        &c.errors,
                        format!(
                            "contexts: reading bytes {at}..{} of {name} failed: {}",
                            at + 4096,
                            io_error_text(&e)
                        ),
                    );
                }
            }
        } else {
            // Dropped with requests in flight: the context waits for them.
            drop(tickets);
        }
        drop(ctx);
        sh.op(c, 1);
    }
}

/// Runs the stress workloads and prints the report.
pub fn run(args: &StressArgs, out: Output) -> Exit {
    let fail = |msg: &str| usage_error("stress", out, msg);
    // First: from here on a signal stops the run instead of the process,
    // so the files are removed.
    if let Err(e) = ctrlc::set_handler(|| SIGNALLED.store(true, Ordering::Relaxed)) {
        return fail(&format!("cannot handle SIGINT and SIGTERM: {e}"));
    }
    if Instant::now().checked_add(args.duration).is_none() {
        return fail(&format!(
            "--duration {} s is too long",
            args.duration.as_secs()
        ));
    }
    let base = args
        .dir
        .clone()
        .or_else(|| std::env::var_os("AIO_TEST_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    if args.file_size < BLOCK * args.threads as u64 * args.depth as u64 {
        return fail(&format!(
            "--file-size must be at least {} bytes for {} threads at depth {}",
            BLOCK * args.threads as u64 * args.depth as u64,
            args.threads,
            args.depth
        ));
    }
    // An environment that cannot make a context cannot run the check.
    let engine = match args.context(args.depth) {
        Ok(ctx) => ctx.kernel_unavailable(),
        Err(e) => return fail(&format!("cannot create an AIO context: {e}")),
    };
    let dir = match tempfile::Builder::new()
        .prefix("aio-stress-")
        .tempdir_in(&base)
    {
        Ok(d) => d,
        Err(e) => {
            return fail(&format!(
                "cannot create a directory in {}: {e}",
                base.display()
            ));
        }
    };
    let extra = if args.direct { libc::O_DIRECT } else { 0 };
    let path = |name: &str| dir.path().join(name);
    let names: Vec<String> = (0..args.files)
        .map(|i| path(&format!("mixed-{i}")).display().to_string())
        .collect();
    let sparse_name = path("sparse").display().to_string();
    let files: Result<Vec<File>, _> = names.iter().map(|n| open_rw(Path::new(n), extra)).collect();
    let (files, sparse) = match (files, open_rw(Path::new(&sparse_name), 0)) {
        (Ok(f), Ok(s)) => (f.into_iter().map(Arc::new).collect::<Vec<_>>(), Arc::new(s)),
        (Err(e), _) | (_, Err(e)) => {
            return fail(&format!(
                "cannot create the stress files in {}: {e}",
                base.display()
            ));
        }
    };
    for f in files.iter().chain([&sparse]) {
        if let Err(e) = f.set_len(args.file_size) {
            return fail(&format!("cannot size the stress files: {e}"));
        }
    }
    let rounds = AppendRounds {
        barrier: std::sync::Barrier::new(args.threads as usize),
        go_on: AtomicBool::new(true),
        written: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        round: AtomicU64::new(0),
        dir: dir.path().to_path_buf(),
    };
    if let Err(e) = File::create(rounds.path()) {
        return fail(&format!("cannot create {}: {e}", rounds.path().display()));
    }
    if out == Output::Human {
        eprintln!(
            "stress: {} files of {} bytes in {}, {} threads at depth {}{}, {} driver, for {} s{}, seed {}",
            args.files,
            args.file_size,
            dir.path().display(),
            args.threads,
            args.depth,
            if args.direct { ", O_DIRECT" } else { "" },
            aio::Driver::from(args.driver).name(),
            args.duration.as_secs_f64(),
            args.ops
                .map_or(String::new(), |n| format!(" or {n} operations")),
            args.seed
        );
        if let Some(line) = engine_line(engine.as_ref()) {
            eprintln!("{line}");
        }
    }
    let rings_before = aio_rings_mapped();
    let sh = Shared {
        limit: args.ops.unwrap_or(u64::MAX),
        deadline: Instant::now().checked_add(args.duration),
        ..Default::default()
    };
    let patterns: Vec<Pattern> = (0..args.files as u64)
        .map(|i| Pattern::new(args.seed ^ (i << 32)))
        .collect();
    let sparse_pattern = Pattern::new(args.seed ^ 0x5a);
    let bar = if out == Output::Human {
        let b =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {pos} operations")
                .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    thread::scope(|s| {
        for t in 0..args.threads as u64 {
            let (sh, files, names, patterns) = (&sh, &files, &names, &patterns);
            s.spawn(move || mixed_worker(sh, args, files, names, t, patterns));
        }
        for w in 0..args.threads as u16 {
            let (sh, rounds) = (&sh, &rounds);
            s.spawn(move || append_worker(sh, args, rounds, w));
        }
        {
            let (sh, sparse, name, p) = (&sh, &sparse, &sparse_name, &sparse_pattern);
            s.spawn(move || sparse_writer(sh, args, sparse, name, p));
            for r in 0..2 {
                s.spawn(move || sparse_reader(sh, args, sparse, name, p, r));
            }
        }
        {
            let (sh, f, name) = (&sh, &files[0], &names[0]);
            s.spawn(move || contexts_worker(sh, args, f, name));
        }
        while sh.running() {
            bar.set_position(sh.total_ops.load(Ordering::Relaxed));
            thread::sleep(Duration::from_millis(100));
        }
        sh.stop.store(true, Ordering::Relaxed);
    });
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if let Some(why) = sh.environment.lock().unwrap().take() {
        return fail(&why);
    }
    // Every context of this process maps its ring as "[aio]"; once all
    // workers' contexts are dropped, none of theirs may remain.
    let rings_after = aio_rings_mapped();
    if rings_after > rings_before {
        sh.fail(
            &sh.contexts.errors,
            format!("contexts: {rings_before} AIO rings mapped before, {rings_after} after: a context leaked"),
        );
    }
    let interrupted = SIGNALLED.load(Ordering::Relaxed);
    report(&sh, args, engine.as_ref(), elapsed, interrupted, out)
}

/// How many AIO rings this process has mapped (one per live context).
fn aio_rings_mapped() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| {
            m.lines()
                .filter(|l| l.ends_with("/[aio] (deleted)"))
                .count()
        })
        .unwrap_or(0)
}

fn report(
    sh: &Shared,
    args: &StressArgs,
    engine: Option<&aio::Error>,
    elapsed: Duration,
    interrupted: bool,
    out: Output,
) -> Exit {
    let rows = [
        ("mixed", &sh.mixed),
        ("append", &sh.append),
        ("sparse", &sh.sparse),
        ("contexts", &sh.contexts),
    ];
    let get = |c: &Counters| {
        (
            c.ops.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed),
            c.mismatches.load(Ordering::Relaxed),
        )
    };
    let (mut ops, mut errors, mut mismatches) = (0, 0, 0);
    for (_, c) in &rows {
        let (o, e, m) = get(c);
        ops += o;
        errors += e;
        mismatches += m;
    }
    let failures = sh.failures.lock().unwrap();
    let not_kept = sh.failures_not_kept.load(Ordering::Relaxed);
    let unverified = sh.unverified_rounds.load(Ordering::Relaxed);
    let verdict = if interrupted {
        "INTERRUPTED"
    } else if errors == 0 && mismatches == 0 && ops > 0 {
        "PASS"
    } else {
        "FAIL"
    };
    match out {
        Output::Json => {
            let v = json!({
                "result": verdict.to_lowercase(),
                "driver": aio::Driver::from(args.driver).name(),
                "kernel_unavailable": engine_json(engine),
                "elapsed_s": elapsed.as_secs_f64(),
                "operations": ops,
                "errors": errors,
                "mismatches": mismatches,
                "workloads": rows.iter().map(|(name, c)| {
                    let (o, e, m) = get(c);
                    (name.to_string(), json!({"operations": o, "errors": e, "mismatches": m}))
                }).collect::<serde_json::Map<_, _>>(),
                "append_rounds_not_verified": unverified,
                "failures": *failures,
                "failures_not_listed": not_kept,
            });
            crate::report::print_json(&v);
        }
        Output::Human => {
            print_capped("failure", &failures, failures.len() as u64 + not_kept);
            for (name, c) in &rows {
                let (o, e, m) = get(c);
                println!("  {name:<9} {o:>10} operations {e:>4} errors {m:>4} mismatches");
            }
            if unverified > 0 {
                println!(
                    "  {unverified} append rounds not verified: one of their appends failed (listed above)"
                );
            }
            println!(
                "{verdict}: {ops} operations in {:.1}s, {errors} errors, {mismatches} mismatches{}",
                elapsed.as_secs_f64(),
                if interrupted {
                    " (stopped by a signal)"
                } else {
                    ""
                }
            );
        }
    }
    match verdict {
        "PASS" => Exit::Pass,
        "INTERRUPTED" => Exit::Usage,
        _ => Exit::CheckFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_count_sees_a_context_come_and_go() {
        // No other test of this binary creates contexts.
        let before = aio_rings_mapped();
        let ctx = Context::new(4).unwrap();
        assert_eq!(aio_rings_mapped(), before + 1);
        drop(ctx);
        assert_eq!(aio_rings_mapped(), before);
    }

    #[test]
    fn append_records_check_out_and_a_lost_one_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("append");
        let mut data = Vec::new();
        for (w, seq) in [(0u16, 0u64), (1, 0), (0, 1), (1, 1)] {
            let payload = record_payload(w, seq, 100);
            data.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
            data.extend_from_slice(&w.to_le_bytes());
            data.extend_from_slice(&100u16.to_le_bytes());
            data.extend_from_slice(&seq.to_le_bytes());
            data.extend_from_slice(&payload);
        }
        std::fs::write(&path, &data).unwrap();
        let sh = Shared::default();
        check_appends(&sh, &path, 2, 4);
        assert_eq!(sh.append.mismatches.load(Ordering::Relaxed), 0);
        // Drop writer 0's first record: its second is then out of order,
        // and one record is missing.
        std::fs::write(&path, &data[HEADER + 100..]).unwrap();
        check_appends(&sh, &path, 2, 4);
        assert_eq!(sh.append.mismatches.load(Ordering::Relaxed), 2);
    }
}
