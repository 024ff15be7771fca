//! `aio-tools bench`: fio-like throughput and latency of the safe API.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aio::{AlignedBuf, Context, ReadV, Ticket, WriteV};
use serde_json::{Value, json};

use crate::report::{Calls, engine_json, engine_line, print_json, usage_error};
use crate::stats::{Latencies, mib_per_s, parse_duration, parse_nonzero_size, parse_size, per_s};
use crate::vectest::{Rng, block_device_size};
use crate::{Exit, Issuer, Output};

/// Set by SIGINT and SIGTERM: the run stops, reports what it measured,
/// and exits 2.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// The I/O pattern, as fio's `--rw`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Rw {
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random, half reads and half writes.
    Randrw,
}

impl Rw {
    fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }
    fn writes(self) -> bool {
        !matches!(self, Rw::Randread | Rw::Read)
    }
}

/// The command's arguments.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A file (created and laid out if needed) or a block device.
    pub target: PathBuf,
    /// The access pattern.
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Bytes per segment (a request is --segments of them).
    #[arg(long, default_value = "4k", value_parser = parse_nonzero_size)]
    pub bs: u64,
    /// Segments per request: more than 1 uses PREADV/PWRITEV with that many iovecs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub segments: u16,
    /// Requests in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub iodepth: u32,
    /// Completions to wait for before refilling the queue (as fio's
    /// iodepth_batch_complete_min); a refill goes to the kernel in one
    /// io_submit (but see --submit-batch).
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// With N > 0, on a device (where requests complete after io_submit
    /// returns) a refill goes in io_submit calls of N requests or more, as
    /// fio's iodepth_batch_submit=N: a device given a whole depth in one
    /// call may finish it in one burst and idle while the loop refills
    /// (aio's ContextBuilder::submit_batch, for both APIs). 0: one call
    /// per refill.
    #[arg(long, default_value_t = 0)]
    pub submit_batch: u32,
    /// Use O_DIRECT (always on for block devices).
    #[arg(long)]
    pub direct: bool,
    /// How long to run (ms, s, m suffixes).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub runtime: Duration,
    /// Bytes of the target to use (default: the file's size, or 1G for a new
    /// file; the whole device).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Write on a block device even if it holds a filesystem or partition
    /// table.
    #[arg(long)]
    pub force: bool,
    /// Seed of the offsets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// What issues the requests: aio's sync or tokio API, or `tokio-fs`
    /// (tokio's own file I/O, for comparison; no AIO). --batch applies to
    /// sync only: tasks refill as they complete.
    #[arg(long, value_enum, default_value_t = BenchApi::Sync)]
    pub api: BenchApi,
    /// What executes aio's requests (not tokio-fs's).
    #[arg(long, value_enum, default_value_t = crate::DriverArg::Auto)]
    pub driver: crate::DriverArg,
    /// Threads, each with its own context (or runtime) and --iodepth
    /// requests in flight, like fio's numjobs; results are summed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,
}

/// What issues the requests of `aio-tools bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchApi {
    /// `aio::Context` from this thread.
    Sync,
    /// `aio::tokio`: one task per request on a current-thread runtime.
    Tokio,
    /// Not AIO: what `tokio::fs` does, for comparison. One task per request
    /// on a current-thread runtime awaits `tokio::task::spawn_blocking` of a
    /// positional `read_exact_at`/`write_all_at` on the request's own
    /// contiguous buffer (segments are copied in and out of it, as
    /// `tokio::fs::File` copies through its internal buffer and turns a
    /// vectored write into one `write`). `tokio::fs::File` itself has no
    /// positional I/O (N concurrent requests would each need their own
    /// handle and a seek, a second blocking hop) and its internal buffer is
    /// not aligned for `O_DIRECT`; this is the cheapest way through tokio's
    /// blocking pool, i.e. `tokio::fs` at its best.
    TokioFs,
}

impl BenchApi {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchApi::Sync => "sync",
            BenchApi::Tokio => "tokio",
            BenchApi::TokioFs => "tokio-fs",
        }
    }

    /// The `aio` API behind it, if any.
    fn aio(self) -> Option<crate::Api> {
        match self {
            BenchApi::Sync => Some(crate::Api::Sync),
            BenchApi::Tokio => Some(crate::Api::Tokio),
            BenchApi::TokioFs => None,
        }
    }
}

/// What runs the requests: an `aio` issuer, or a tokio runtime for
/// `--api tokio-fs`.
enum Runner {
    Aio(Issuer),
    TokioFs(tokio::runtime::Runtime),
}

impl Runner {
    fn new(
        api: BenchApi,
        depth: u32,
        driver: aio::Driver,
        submit_batch: usize,
    ) -> io::Result<Runner> {
        match api.aio() {
            Some(api) => Ok(Runner::Aio(Issuer::new(api, depth, driver, submit_batch)?)),
            None => Ok(Runner::TokioFs(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            )),
        }
    }

    fn stats(&self) -> Option<aio::Stats> {
        match self {
            Runner::Aio(i) => Some(i.stats()),
            Runner::TokioFs(_) => None,
        }
    }

    fn kernel_unavailable(&self) -> Option<aio::Error> {
        match self {
            Runner::Aio(i) => i.kernel_unavailable(),
            Runner::TokioFs(_) => None,
        }
    }
}

struct Target {
    /// Shared with the requests in flight, which hold it until they complete.
    file: Arc<File>,
    size: u64,
    align: usize,
    /// O_DIRECT: asked for, or a block device.
    direct: bool,
}

fn open(args: &BenchArgs) -> Result<Target, String> {
    if args.runtime.is_zero() {
        return Err("--runtime 0 measures nothing: give a time such as 10s".into());
    }
    if Instant::now().checked_add(args.runtime).is_none() {
        return Err(format!(
            "--runtime {} s is too long",
            args.runtime.as_secs()
        ));
    }
    if args.batch > args.iodepth {
        // The loop would wait for completions that can never all come.
        return Err(format!(
            "--batch {} waits for {} completions before refilling, but only --iodepth {} requests are in flight: use --batch {} or less",
            args.batch, args.batch, args.iodepth, args.iodepth
        ));
    }
    let meta = std::fs::metadata(&args.target).ok();
    let device = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    let direct = args.direct || device;
    let name = args.target.display();
    let file = open_options(args, device, direct)
        .open(&args.target)
        .map_err(|e| format!("cannot open {name}: {e}"))?;
    if device && args.rw.writes() {
        let sector = crate::vectest::logical_block_size(&file).map_err(|e| e.to_string())?;
        let sigs = crate::vectest::signatures_on(&file, sector).map_err(|e| e.to_string())?;
        if !sigs.is_empty() && !args.force {
            let what: Vec<&str> = sigs.iter().map(|s| s.kind).collect();
            return Err(format!(
                "refusing to write {name}: it holds {}; pass --force to overwrite it",
                what.join(", ")
            ));
        }
    }
    let align = if direct {
        let a = aio::dio_alignment(&file).map_err(|e| e.to_string())?;
        a.memory.max(a.offset)
    } else {
        8
    };
    let have = if device {
        block_device_size(&file).map_err(|e| e.to_string())?
    } else {
        file.metadata().map_err(|e| e.to_string())?.len()
    };
    let size = args.size.unwrap_or(if have > 0 { have } else { 1 << 30 });
    if device && size > have {
        return Err(format!(
            "--size {size} is larger than {name} ({have} bytes)"
        ));
    }
    let req = args.bs * args.segments as u64;
    if size < req {
        return Err(format!(
            "--size {size} is smaller than one request ({req} bytes)"
        ));
    }
    if args.bs % align as u64 != 0 {
        return Err(format!(
            "--bs must be a multiple of {align} bytes for O_DIRECT here"
        ));
    }
    if !device && have < size {
        lay_out(&file, have, size, direct, align)
            .map_err(|e| format!("cannot lay out {name}: {e}"))?;
    }
    Ok(Target {
        file: Arc::new(file),
        size: size / align as u64 * align as u64,
        align,
        direct,
    })
}

fn open_options(args: &BenchArgs, device: bool, direct: bool) -> OpenOptions {
    let mut opts = OpenOptions::new();
    opts.read(true).write(args.rw.writes() || !device);
    if !device {
        opts.create(true);
    }
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    opts
}

impl Target {
    /// The same target through a descriptor (and open file) of its own, as
    /// each of fio's jobs opens the file: jobs sharing one open file share
    /// its reference count, which every system call on it takes in a
    /// threaded process, and its cache line went back and forth between
    /// the jobs' CPUs (perf: `fdget`/`fput` 6.5% of an engine x2 run).
    fn reopen(&self, args: &BenchArgs) -> Result<Target, String> {
        let device = self
            .file
            .metadata()
            .is_ok_and(|m| m.file_type().is_block_device());
        let file = open_options(args, device, self.direct)
            .open(&args.target)
            .map_err(|e| format!("cannot open {}: {e}", args.target.display()))?;
        Ok(Target {
            file: Arc::new(file),
            size: self.size,
            align: self.align,
            direct: self.direct,
        })
    }
}

/// Fills a new file with data up to `size`, so reads read real blocks.
fn lay_out(file: &File, from: u64, size: u64, direct: bool, align: usize) -> io::Result<()> {
    let chunk = 1 << 20;
    let mut buf = AlignedBuf::new(chunk, align.max(4096));
    let mut rng = Rng::new(0x1a1d);
    for b in buf.chunks_mut(8) {
        b.copy_from_slice(&rng.next_u64().to_le_bytes()[..b.len()]);
    }
    let mut off = from / chunk as u64 * chunk as u64;
    while off < size {
        let n = chunk.min((size - off) as usize);
        let n = if direct { n.div_ceil(align) * align } else { n };
        file.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    file.sync_all()
}

enum Pending<'a> {
    Idle(Vec<AlignedBuf>),
    Read(Ticket<'a, ReadV<Arc<File>, Vec<AlignedBuf>>>, Instant),
    Write(Ticket<'a, WriteV<Arc<File>, Vec<AlignedBuf>>>, Instant),
}

/// What a run measured.
struct Measured {
    requests: u64,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latencies: Latencies,
    cpu_user: Duration,
    cpu_sys: Duration,
    /// The context's counters over the run (none for tokio-fs).
    stats: Option<aio::Stats>,
    /// Time spent in each `Context::submit` (sync API only): what a
    /// caller that must not block pays.
    submits: Latencies,
    /// Why the auto driver ran everything on the engine, if it did.
    engine: Option<aio::Error>,
}

impl Measured {
    /// Another job's run added to this one.
    fn merge(&mut self, other: Measured) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed = self.elapsed.max(other.elapsed);
        self.latencies.merge(&other.latencies);
        self.submits.merge(&other.submits);
        self.stats = match (self.stats, other.stats) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.engine = self.engine.take().or(other.engine);
    }
}

fn cpu_times() -> (Duration, Duration) {
    // SAFETY: getrusage fills the struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Where the next request goes: random or sequential request-sized slots.
struct Offsets {
    rng: Rng,
    next_seq: u64,
    slots: u64,
    req_len: u64,
    random: bool,
}

impl Offsets {
    fn new(args: &BenchArgs, t: &Target, seed: u64) -> Offsets {
        let req_len = args.bs * args.segments as u64;
        Offsets {
            rng: Rng::new(seed),
            next_seq: 0,
            slots: t.size / req_len,
            req_len,
            random: args.rw.random(),
        }
    }

    /// The offset of the next request, and whether it writes.
    fn next(&mut self, rw: Rw) -> (u64, bool) {
        let slot = if self.random {
            self.rng.range(0, self.slots - 1)
        } else {
            let s = self.next_seq;
            self.next_seq = (self.next_seq + 1) % self.slots;
            s
        };
        let write = match rw {
            Rw::Randrw => self.rng.next_u64() & 1 == 1,
            rw => rw.writes(),
        };
        (slot * self.req_len, write)
    }
}

impl Measured {
    fn record(&mut self, res: io::Result<usize>, latency: Duration) {
        self.requests += 1;
        self.latencies.record(latency);
        match res {
            Ok(n) => self.bytes += n as u64,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// One job's run; `job` varies the offsets and the data.
fn measure(args: &BenchArgs, t: &Target, runner: &Runner, job: u32) -> Measured {
    let mut m = Measured {
        requests: 0,
        bytes: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies: Latencies::default(),
        cpu_user: Duration::ZERO,
        cpu_sys: Duration::ZERO,
        stats: None,
        submits: Latencies::default(),
        engine: runner.kernel_unavailable(),
    };
    let before = runner.stats();
    // Writes write incompressible data, as fio's do: zram stores a page of
    // zeros (or of one repeated word) without compressing it.
    let seed = args.seed ^ u64::from(job).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let rng = std::cell::RefCell::new(Rng::new(seed ^ 0x5eed_b0f5));
    let buffers = || -> Vec<AlignedBuf> {
        let mut rng = rng.borrow_mut();
        (0..args.segments)
            .map(|_| {
                // Page-aligned, as fio's buffers are: the O_DIRECT check
                // of an unaligned buffered request costs an fcntl per batch.
                let mut b = AlignedBuf::new(args.bs as usize, t.align.max(4096));
                for w in b.chunks_mut(8) {
                    w.copy_from_slice(&rng.next_u64().to_le_bytes()[..w.len()]);
                }
                b
            })
            .collect()
    };
    let mut offsets = Offsets::new(args, t, seed);
    let start = Instant::now();
    let deadline = start + args.runtime;
    match runner {
        Runner::Aio(Issuer::Sync(ctx)) => {
            run_sync(args, t, ctx, &mut offsets, buffers, deadline, &mut m)
        }
        Runner::Aio(Issuer::Tokio(rt, handle)) => rt.block_on(run_tokio(
            args,
            t,
            handle,
            &mut offsets,
            buffers,
            deadline,
            &mut m,
        )),
        Runner::TokioFs(rt) => rt.block_on(run_tokio_fs(
            args,
            t,
            &mut offsets,
            buffers,
            deadline,
            &mut m,
        )),
    }
    m.elapsed = start.elapsed();
    m.stats = before.zip(runner.stats()).map(|(b, a)| a - b);
    m
}

/// `--jobs` threads, each with its own runner and open file, measured
/// together.
fn measure_jobs(args: &BenchArgs, t: &Target) -> Result<Measured, String> {
    let (u0, s0) = cpu_times();
    let runs: Vec<Result<Measured, String>> = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..args.jobs)
            .map(|job| {
                s.spawn(move || {
                    let own = if job == 0 {
                        None
                    } else {
                        Some(t.reopen(args)?)
                    };
                    let runner = Runner::new(
                        args.api,
                        args.iodepth,
                        args.driver.into(),
                        args.submit_batch as usize,
                    )
                    .map_err(|e| format!("cannot create an AIO context: {e}"))?;
                    Ok(measure(args, own.as_ref().unwrap_or(t), &runner, job))
                })
            })
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("a bench job panicked"))
            .collect()
    });
    let (u1, s1) = cpu_times();
    let mut total: Option<Measured> = None;
    for run in runs {
        let run = run?;
        match &mut total {
            None => total = Some(run),
            Some(m) => m.merge(run),
        }
    }
    let mut m = total.expect("at least one job");
    m.cpu_user = u1 - u0;
    m.cpu_sys = s1 - s0;
    Ok(m)
}

/// The sync API: tickets in a fixed array, refilled after `--batch`
/// completions, in one `io_submit` (or, on a device, in calls of at least
/// `--submit-batch`).
fn run_sync(
    args: &BenchArgs,
    t: &Target,
    ctx: &Context,
    offsets: &mut Offsets,
    buffers: impl Fn() -> Vec<AlignedBuf>,
    deadline: Instant,
    m: &mut Measured,
) {
    let mut pending: Vec<Pending<'_>> = (0..args.iodepth)
        .map(|_| Pending::Idle(buffers()))
        .collect();
    let mut in_flight = 0usize;
    let mut done_since_refill = usize::MAX;
    loop {
        let now = Instant::now();
        if now < deadline && !interrupted() && done_since_refill >= args.batch as usize {
            // One submit per refill; on a device the context splits it in
            // calls of --submit-batch (ContextBuilder::submit_batch).
            for p in pending.iter_mut() {
                if let Pending::Idle(_) = p {
                    let Pending::Idle(bufs) = std::mem::replace(p, Pending::Idle(Vec::new()))
                    else {
                        unreachable!()
                    };
                    let (off, write) = offsets.next(args.rw);
                    *p = if write {
                        Pending::Write(ctx.push(WriteV::new(t.file.clone(), bufs, off)), now)
                    } else {
                        Pending::Read(ctx.push(ReadV::new(t.file.clone(), bufs, off)), now)
                    };
                    in_flight += 1;
                }
            }
            done_since_refill = 0;
            let t0 = Instant::now();
            if ctx.submit() > 0 {
                m.submits.record(t0.elapsed());
            }
        }
        if in_flight == 0 {
            return;
        }
        ctx.wait();
        let now = Instant::now();
        for p in pending.iter_mut() {
            let done = match p {
                Pending::Idle(_) => continue,
                Pending::Read(tk, _) => tk.is_done(),
                Pending::Write(tk, _) => tk.is_done(),
            };
            if !done {
                continue;
            }
            let (res, bufs, started) = match std::mem::replace(p, Pending::Idle(Vec::new())) {
                Pending::Read(tk, s) => {
                    let (r, b) = tk.wait();
                    (r, b, s)
                }
                Pending::Write(tk, s) => {
                    let (r, b) = tk.wait();
                    (r, b, s)
                }
                Pending::Idle(_) => unreachable!(),
            };
            *p = Pending::Idle(bufs);
            in_flight -= 1;
            done_since_refill += 1;
            m.record(res, now - started);
        }
    }
}

/// The tokio API on a current-thread runtime: --iodepth loops in one task,
/// each issuing one request at a time and reusing its buffers, as an
/// application's readers would. (A fresh future per request in a
/// `FuturesUnordered` costs an allocation and a move of the future per
/// request: the harness's cost, not the API's.)
async fn run_tokio(
    args: &BenchArgs,
    t: &Target,
    handle: &aio::tokio::Handle,
    offsets: &mut Offsets,
    buffers: impl Fn() -> Vec<AlignedBuf>,
    deadline: Instant,
    m: &mut Measured,
) {
    use std::cell::RefCell;
    let offsets = RefCell::new(offsets);
    let m = RefCell::new(m);
    let t0 = Instant::now();
    let slot = |mut bufs: Vec<AlignedBuf>| {
        let (offsets, m) = (&offsets, &m);
        async move {
            // One clock read per request, as the sync loop: a request
            // starts when its predecessor's completion was taken.
            let mut started = t0;
            loop {
                let (off, write) = offsets.borrow_mut().next(args.rw);
                let (res, b) = if write {
                    handle.run(WriteV::new(t.file.clone(), bufs, off)).await
                } else {
                    handle.run(ReadV::new(t.file.clone(), bufs, off)).await
                };
                bufs = b;
                let now = Instant::now();
                m.borrow_mut().record(res, now - started);
                if now >= deadline || interrupted() {
                    return;
                }
                started = now;
            }
        }
    };
    futures_util::future::join_all((0..args.iodepth).map(|_| slot(buffers()))).await;
}

/// `--api tokio-fs`: see [`BenchApi::TokioFs`]. One task per request in
/// flight; each awaits one `spawn_blocking` that does the whole request.
async fn run_tokio_fs(
    args: &BenchArgs,
    t: &Target,
    offsets: &mut Offsets,
    buffers: impl Fn() -> Vec<AlignedBuf>,
    deadline: Instant,
    m: &mut Measured,
) {
    let file = match t.file.try_clone() {
        Ok(f) => Arc::new(f),
        Err(e) => {
            m.record(Err(e), Duration::ZERO);
            return;
        }
    };
    let req_len = (args.bs * args.segments as u64) as usize;
    // A request's buffers: its segments and the contiguous buffer that
    // the blocking call reads into or writes from.
    type Bufs = (Vec<AlignedBuf>, AlignedBuf);
    let mut set = tokio::task::JoinSet::new();
    let mut spawn = |set: &mut tokio::task::JoinSet<_>, (mut segs, mut flat): Bufs| {
        let (off, write) = offsets.next(args.rw);
        let started = Instant::now();
        let file = Arc::clone(&file);
        set.spawn(async move {
            let blocking = tokio::task::spawn_blocking(move || {
                let r = if write {
                    let mut at = 0;
                    for s in &segs {
                        flat[at..at + s.len()].copy_from_slice(s);
                        at += s.len();
                    }
                    file.write_all_at(&flat, off)
                } else {
                    file.read_exact_at(&mut flat, off).map(|()| {
                        let mut at = 0;
                        for s in segs.iter_mut() {
                            let n = s.len();
                            s.copy_from_slice(&flat[at..at + n]);
                            at += n;
                        }
                    })
                };
                (r.map(|()| flat.len()), (segs, flat))
            });
            let (r, bufs) = blocking.await.expect("a blocking bench call panicked");
            (r, bufs, started)
        });
    };
    for _ in 0..args.iodepth {
        spawn(&mut set, (buffers(), AlignedBuf::new(req_len, t.align)));
    }
    while let Some(done) = set.join_next().await {
        let (res, bufs, started) = done.expect("a bench task panicked");
        m.record(res, started.elapsed());
        if Instant::now() < deadline && !interrupted() {
            spawn(&mut set, bufs);
        }
    }
}

/// Runs the benchmark and prints it.
pub fn run(args: &BenchArgs, out: Output) -> Exit {
    let fail = |msg: &str| usage_error("bench", out, msg);
    if let Err(e) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed)) {
        return fail(&format!("cannot handle SIGINT and SIGTERM: {e}"));
    }
    let t = match open(args) {
        Ok(t) => t,
        Err(msg) => return fail(&msg),
    };
    let m = match measure_jobs(args, &t) {
        Ok(m) => m,
        Err(e) => return fail(&e),
    };
    let stopped = interrupted();
    let submits = (!m.submits.is_empty()).then(|| {
        let [p50, p99, _] = m.submits.summary_us();
        (p50.1, p99.1, m.submits.max().as_nanos() as f64 / 1000.0)
    });
    let lat = (m.requests > 0).then(|| m.latencies.summary_us());
    let cpu = m.cpu_user + m.cpu_sys;
    let cpu_per_req_us =
        (m.requests > 0).then(|| cpu.as_nanos() as f64 / 1000.0 / m.requests as f64);
    let stats = m.stats.unwrap_or_default();
    let calls = Calls::of(&stats);
    let driver = aio::Driver::from(args.driver).name();
    let verdict = if stopped {
        "interrupted"
    } else if m.errors == 0 {
        "pass"
    } else {
        "fail"
    };
    match out {
        Output::Json => {
            let v = json!({
                "result": verdict,
                "target": args.target.display().to_string(),
                "rw": format!("{:?}", args.rw).to_lowercase(),
                "bs": args.bs,
                "segments": args.segments,
                "iodepth": args.iodepth,
                "batch": args.batch,
                "submit_batch": args.submit_batch,
                "direct": t.direct,
                "size": t.size,
                "api": args.api.name(),
                "driver": if m.stats.is_some() { json!(driver) } else { Value::Null },
                "kernel_unavailable": engine_json(m.engine.as_ref()),
                "jobs": args.jobs,
                // Time inside each Context::submit (sync API).
                "submit_us": submits.map(|(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max})),
                "requests": m.requests,
                "bytes": m.bytes,
                "errors": m.errors,
                "first_error": m.first_error,
                "elapsed_s": m.elapsed.as_secs_f64(),
                "iops": per_s(m.requests, m.elapsed),
                "mib_per_s": mib_per_s(m.bytes, m.elapsed),
                // Null when no request completed.
                "latency_us": lat.map(|lat| lat.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()),
                "cpu": {
                    "user_s": m.cpu_user.as_secs_f64(),
                    "system_s": m.cpu_sys.as_secs_f64(),
                    "per_request_us": cpu_per_req_us,
                },
                // System calls to the kernel; the engine's submissions are
                // function calls, counted apart.
                "syscalls": m.stats.map(|s| json!({
                    "io_submit": calls.io_submit,
                    "io_getevents": calls.io_getevents,
                    "ring_reaps": s.ring_reaps,
                    "requests_per_submit": calls.per_io_submit(),
                    "engine_requests": calls.engine_requests,
                    "engine_submit_calls": calls.engine_submits,
                })),
                // aio's Context::stats() over the run, as counted by the
                // context (none for tokio-fs).
                "stats": m.stats.map(|s| json!({
                    "requests": s.requests,
                    "submitted": s.submitted,
                    "submit_calls": s.submit_calls,
                    "getevents_calls": s.getevents_calls,
                    "ring_reaps": s.ring_reaps,
                    "completions": s.completions,
                    "engine_submitted": s.engine_submitted,
                    "engine_submit_calls": s.engine_submit_calls,
                    "engine_getevents_calls": s.engine_getevents_calls,
                    "nowait_retries": s.nowait_retries,
                    "eventfd_waits": s.eventfd_waits,
                    "quiet_submitted": s.quiet_submitted,
                    "quiet_polls": s.quiet_polls,
                })),
            });
            print_json(&v);
        }
        Output::Human => {
            println!(
                "{:?} bs={}x{} iodepth={} jobs={} {} {} API{}: {} requests in {:.2}s{}",
                args.rw,
                args.bs,
                args.segments,
                args.iodepth,
                args.jobs,
                if t.direct { "direct" } else { "buffered" },
                args.api.name(),
                if m.stats.is_some() {
                    format!(", {driver} driver")
                } else {
                    String::new()
                },
                m.requests,
                m.elapsed.as_secs_f64(),
                if stopped {
                    " (INTERRUPTED by a signal)"
                } else {
                    ""
                }
            );
            if let Some(line) = engine_line(m.engine.as_ref()) {
                println!("  {line}");
            }
            match (lat, cpu_per_req_us) {
                (Some(lat), Some(per_req)) => {
                    println!(
                        "  {:.0} IOPS, {:.1} MiB/s; latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
                        per_s(m.requests, m.elapsed),
                        mib_per_s(m.bytes, m.elapsed),
                        lat[0].1,
                        lat[1].1,
                        lat[2].1
                    );
                    println!(
                        "  cpu: user {:.2}s, system {:.2}s, {:.2} us per request",
                        m.cpu_user.as_secs_f64(),
                        m.cpu_sys.as_secs_f64(),
                        per_req
                    );
                }
                _ => println!("  no request completed: nothing to measure"),
            }
            if m.stats.is_some() {
                println!("  {}", calls.text(&stats));
                if stats.quiet_submitted > 0 {
                    println!(
                        "  {} requests without an eventfd signal (expected to complete inside io_submit), {} driver polls for those that did not",
                        stats.quiet_submitted, stats.quiet_polls
                    );
                }
            }
            if let Some((p50, p99, max)) = submits {
                println!("  time in submit: p50 {p50:.1} us, p99 {p99:.1} us, max {max:.1} us");
            }
            if let Some(e) = &m.first_error {
                println!("  {} errors, the first: {e}", m.errors);
            }
        }
    }
    match verdict {
        "pass" => Exit::Pass,
        "interrupted" => Exit::Usage,
        _ => Exit::CheckFailed,
    }
}
