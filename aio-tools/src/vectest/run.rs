//! Opening the target, the write/read/verify passes, and the summary.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aio::{AlignedBuf, Context, ReadV, Ticket, WriteV};
use aio_abi::MAX_RW_COUNT;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use super::VectestArgs;
use super::lock::{Holder, holder, lock};
use super::pattern::{Mismatch, Pattern, REACH};
use super::plan::{Request, Rng, Shape, plan};
use super::scratch::{RemoveOnDrop, remove_stale, scratch_path};
use super::target::{
    Finding, Refusal, backing_in_use, block_device_size, describe, file_findings, in_dev, in_use,
    logical_block_size, loop_in_use, loops_over, signatures_on,
};
use super::unwritten::Unwritten;
use crate::report::{Calls, engine_json, engine_line, io_error_text, print_capped, usage_error};
use crate::stats::{Latencies, mib_per_s, per_s};
use crate::{Exit, Issuer, Output};

const DEFAULT_SCRATCH_SIZE: u64 = 64 << 20;
const MAX_REPORTED_MISMATCHES: usize = 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A usage or environment problem: printed, exit code 2.
struct Fatal(String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Fatal {
        Fatal(e.to_string())
    }
}

/// What is being tested.
struct Target {
    /// Shared with the requests in flight, which hold it until they complete.
    file: Arc<File>,
    /// What to call it in messages.
    name: String,
    kind: &'static str,
    size: u64,
    direct: bool,
    /// Alignment of lengths, offsets and memory (1 when buffered).
    unit: u64,
    /// The default scratch file, removed when the run ends.
    _scratch: Option<RemoveOnDrop>,
}

/// How a file target came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// The default scratch file, made now and removed at the end.
    Scratch,
    /// A path that did not exist, made now and kept.
    New,
    /// A file that was there; `force`: overwrite what it holds.
    Existing { force: bool },
}

fn open_target(args: &VectestArgs, seed: u64) -> Result<Target, Fatal> {
    let Some(path) = &args.target else {
        for (stale, pid) in remove_stale(&std::env::temp_dir()) {
            eprintln!(
                "vectest: removed {}, left by a run (pid {pid}) that ended",
                stale.display()
            );
        }
        let size = args.size.unwrap_or(DEFAULT_SCRATCH_SIZE);
        return open_file(&scratch_path(seed), size, args.direct, Origin::Scratch);
    };
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => open_device(path, m.rdev(), args),
        Ok(m) if m.is_file() => {
            let size = args.size.unwrap_or(if m.len() > 0 {
                m.len()
            } else {
                DEFAULT_SCRATCH_SIZE
            });
            let origin = Origin::Existing { force: args.force };
            open_file(path, size, args.direct, origin)
        }
        Ok(_) => Err(Fatal(format!(
            "{} is neither a regular file nor a block device",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound && in_dev(path) => Err(Fatal(format!(
            "no such device: {}; vectest makes new files only outside /dev (lsblk lists the block devices)",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let size = args.size.unwrap_or(DEFAULT_SCRATCH_SIZE);
            open_file(path, size, args.direct, Origin::New)
        }
        Err(e) => Err(Fatal(format!("cannot use {}: {e}", path.display()))),
    }
}

fn open_file(path: &Path, size: u64, direct: bool, origin: Origin) -> Result<Target, Fatal> {
    // A file made here is removed again on every way out until the run is
    // set up (a new file given by name is kept after that).
    let mut created = None;
    let mut opened = if matches!(origin, Origin::Existing { .. }) {
        None
    } else {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Fatal(format!("cannot create {}: {e}", path.display())))?;
        created = Some(RemoveOnDrop::new(path.to_owned()));
        Some(f)
    };
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let reopen = match &opened {
        // O_DIRECT through the descriptor just made: open(2) creates a
        // file before it checks O_DIRECT, and the same file is reopened.
        Some(f) if direct => opts.open(format!("/proc/self/fd/{}", f.as_raw_fd())),
        Some(_) => Ok(opened.take().expect("the file just made")),
        None => opts.open(path),
    };
    drop(opened);
    let file = reopen.map_err(|e| {
        if direct && e.raw_os_error() == Some(libc::EINVAL) {
            Fatal(format!(
                "the filesystem of {} does not support O_DIRECT (EINVAL); use --buffered",
                path.display()
            ))
        } else {
            Fatal(format!("cannot open {}: {e}", path.display()))
        }
    })?;
    lock(&file).map_err(|holder| using(holder, path))?;
    if let Origin::Existing { force } = origin {
        check_existing(&file, path, force)?;
    }
    let unit = if direct {
        let a = aio::dio_alignment(&file)?;
        a.memory.max(a.offset) as u64
    } else {
        1
    };
    let size = size / unit * unit;
    if size == 0 {
        return Err(Fatal(format!("--size must be at least {unit} bytes here")));
    }
    file.set_len(file.metadata()?.len().max(size))
        .map_err(|e| {
            Fatal(format!(
                "cannot make {} {size} bytes long: {e}",
                path.display()
            ))
        })?;
    let scratch = match created {
        Some(c) if origin != Origin::Scratch => {
            c.keep();
            None
        }
        created => created,
    };
    Ok(Target {
        file: Arc::new(file),
        name: path.display().to_string(),
        kind: "file",
        size,
        direct,
        unit,
        _scratch: scratch,
    })
}

/// Refuses an existing regular file that only `--force` may overwrite (and
/// one mounted through a loop device, even then); says what `--force`
/// overwrites.
fn check_existing(file: &File, path: &Path, force: bool) -> Result<(), Fatal> {
    let refuse = |why: Refusal| Fatal(format!("refusing to write {}: {why}", path.display()));
    let meta = file.metadata()?;
    let loops = loops_over(meta.dev(), meta.ino());
    // Not even with --force: that would corrupt a live filesystem.
    if let Some((via, why)) = loop_in_use(&loops) {
        return Err(refuse(Refusal::ThroughLoop {
            backing: None,
            via,
            why: Box::new(why),
        }));
    }
    let mut findings = Vec::new();
    if !loops.is_empty() {
        findings.push(Finding::BacksLoop(
            loops.into_iter().map(|(name, _)| name).collect(),
        ));
    }
    findings.extend(file_findings(file)?);
    if findings.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(refuse(Refusal::Kept(findings)));
    }
    eprintln!(
        "--force: overwriting {}: {}",
        path.display(),
        describe(&findings)
    );
    Ok(())
}

/// The refusal of a target that another run is using.
fn using(holder: Holder, path: &Path) -> Fatal {
    Fatal(format!(
        "{holder} is using {}; wait for it to end or choose another target",
        path.display()
    ))
}

fn open_device(path: &Path, rdev: u64, args: &VectestArgs) -> Result<Target, Fatal> {
    if args.buffered {
        return Err(Fatal(format!(
            "{} is a block device: vectest uses O_DIRECT on devices; drop --buffered",
            path.display()
        )));
    }
    let refuse = |why: Refusal| Fatal(format!("refusing to write {}: {why}", path.display()));
    if let Some(why) = in_use(rdev).or_else(|| backing_in_use(rdev)) {
        return Err(refuse(why));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_EXCL)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => {
                match (in_use(rdev), std::fs::metadata(path).map(|m| holder(&m))) {
                    (Some(why), _) => refuse(why),
                    (None, Ok(h)) if h.pid.is_some() => using(h, path),
                    (None, _) => refuse(Refusal::Busy),
                }
            }
            Some(libc::EACCES) | Some(libc::EPERM) => Fatal(format!(
                "cannot open {} for writing: {e}; run as root or get write access to the device",
                path.display()
            )),
            _ => Fatal(format!("cannot open {}: {e}", path.display())),
        })?;
    lock(&file).map_err(|holder| using(holder, path))?;
    let sector = logical_block_size(&file)?;
    let sigs = signatures_on(&file, sector)?;
    if !sigs.is_empty() {
        if !args.force {
            return Err(refuse(Refusal::Formatted(sigs)));
        }
        let what: Vec<&str> = sigs.iter().map(|s| s.kind).collect();
        eprintln!(
            "--force: overwriting {} on {}",
            what.join(", "),
            path.display()
        );
    }
    let a = aio::dio_alignment(&file)?;
    let unit = (a.memory.max(a.offset) as u64).max(sector);
    let dev_size = block_device_size(&file)? / unit * unit;
    let size = args
        .size
        .map_or(dev_size, |s| s.min(dev_size) / unit * unit);
    if size == 0 {
        return Err(Fatal(format!(
            "{} is smaller than one block",
            path.display()
        )));
    }
    Ok(Target {
        file: Arc::new(file),
        name: path.display().to_string(),
        kind: "block device",
        size,
        direct: true,
        unit,
        _scratch: None,
    })
}

/// Refuses options beyond what one system call transfers.
fn check_limits(args: &VectestArgs) -> Result<(), Fatal> {
    if let Some(size) = args.size {
        if size > REACH {
            return Err(Fatal(format!(
                "--size {size} is more than the pattern tells apart ({REACH} bytes, 8 TiB); \
                 use --size 8T or less"
            )));
        }
    }
    if let Some(m) = args.max_request {
        if m > MAX_RW_COUNT {
            return Err(Fatal(format!(
                "--max-request {m} is more than Linux transfers in one read or write \
                 (MAX_RW_COUNT, {MAX_RW_COUNT} bytes); use --max-request {MAX_RW_COUNT} or less"
            )));
        }
    }
    Ok(())
}

/// Counters of one run.
#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    latencies: Latencies,
    mismatches: Vec<Mismatch>,
    mismatched_requests: u64,
    errors: Vec<String>,
    /// Write requests that failed or wrote only part of their range.
    failed_writes: u64,
    /// What the current pass failed to write.
    unwritten: Unwritten,
    /// Bytes left out of the verification, over all passes.
    unverified_bytes: u64,
}

/// One request in flight.
enum Pending<'a> {
    Write(
        Ticket<'a, WriteV<Arc<File>, Vec<AlignedBuf>>>,
        Request,
        Instant,
    ),
    Read(
        Ticket<'a, ReadV<Arc<File>, Vec<AlignedBuf>>>,
        Request,
        Instant,
    ),
}

fn segments_for(req: &Request, align: usize) -> Vec<AlignedBuf> {
    req.segments
        .iter()
        .map(|&len| AlignedBuf::new(len, align))
        .collect()
}

/// Runs one phase: every request of `reqs`, `depth` in flight, writing
/// (`write`) or reading and verifying.
#[allow(clippy::too_many_arguments)]
fn phase(
    issuer: &Issuer,
    t: &Target,
    reqs: Vec<Request>,
    write: bool,
    pass: u8,
    pattern: &Pattern,
    depth: usize,
    tally: &mut Tally,
    bar: &ProgressBar,
) {
    match issuer {
        Issuer::Sync(ctx) => phase_sync(ctx, t, reqs, write, pass, pattern, depth, tally, bar),
        Issuer::Tokio(rt, handle) => rt.block_on(phase_tokio(
            handle, t, reqs, write, pass, pattern, depth, tally, bar,
        )),
    }
}

/// The buffers of `req`, filled with the pattern when they are to be written.
fn buffers(
    req: &Request,
    align: usize,
    write: bool,
    pattern: &Pattern,
    pass: u8,
) -> Vec<AlignedBuf> {
    let mut bufs = segments_for(req, align);
    if write {
        let mut off = req.offset;
        for b in &mut bufs {
            pattern.fill(b, off, pass);
            off += b.len() as u64;
        }
    }
    bufs
}

/// [`phase`] with one tokio task per request.
#[allow(clippy::too_many_arguments)]
async fn phase_tokio(
    handle: &aio::tokio::Handle,
    t: &Target,
    reqs: Vec<Request>,
    write: bool,
    pass: u8,
    pattern: &Pattern,
    depth: usize,
    tally: &mut Tally,
    bar: &ProgressBar,
) {
    let align = t.unit.max(8) as usize;
    let mut todo = reqs.into_iter();
    let mut set = tokio::task::JoinSet::new();
    loop {
        while set.len() < depth && !INTERRUPTED.load(Ordering::Relaxed) {
            let Some(req) = todo.next() else { break };
            let bufs = buffers(&req, align, write, pattern, pass);
            let start = Instant::now();
            if write {
                let op = handle.run(WriteV::new(t.file.clone(), bufs, req.offset));
                set.spawn(async move {
                    let (res, bufs) = op.await;
                    (req, res, bufs, start)
                });
            } else {
                let op = handle.run(ReadV::new(t.file.clone(), bufs, req.offset));
                set.spawn(async move {
                    let (res, bufs) = op.await;
                    (req, res, bufs, start)
                });
            }
        }
        let Some(done) = set.join_next().await else {
            return;
        };
        let (req, res, bufs, start) = done.expect("a vectest task panicked");
        if finish(tally, &req, res, start, write, t, bar) && !write {
            verify(tally, &req, &bufs, pattern, pass);
        }
    }
}

/// [`phase`] on the sync API: tickets, `wait`, and a scan for the done ones.
#[allow(clippy::too_many_arguments)]
fn phase_sync(
    ctx: &Context,
    t: &Target,
    reqs: Vec<Request>,
    write: bool,
    pass: u8,
    pattern: &Pattern,
    depth: usize,
    tally: &mut Tally,
    bar: &ProgressBar,
) {
    let align = t.unit.max(8) as usize;
    let mut todo = reqs.into_iter();
    let mut pending: Vec<Pending<'_>> = Vec::with_capacity(depth);
    loop {
        while pending.len() < depth && !INTERRUPTED.load(Ordering::Relaxed) {
            let Some(req) = todo.next() else { break };
            let bufs = buffers(&req, align, write, pattern, pass);
            let start = Instant::now();
            if write {
                let op = WriteV::new(t.file.clone(), bufs, req.offset);
                pending.push(Pending::Write(ctx.push(op), req, start));
            } else {
                let op = ReadV::new(t.file.clone(), bufs, req.offset);
                pending.push(Pending::Read(ctx.push(op), req, start));
            }
        }
        if pending.is_empty() {
            return;
        }
        ctx.wait();
        let mut i = 0;
        while i < pending.len() {
            let done = match &pending[i] {
                Pending::Write(tk, ..) => tk.is_done(),
                Pending::Read(tk, ..) => tk.is_done(),
            };
            if !done {
                i += 1;
                continue;
            }
            match pending.swap_remove(i) {
                Pending::Write(tk, req, start) => {
                    let (res, _) = tk.wait();
                    finish(tally, &req, res, start, true, t, bar);
                }
                Pending::Read(tk, req, start) => {
                    let (res, bufs) = tk.wait();
                    let ok = finish(tally, &req, res, start, false, t, bar);
                    if ok {
                        verify(tally, &req, &bufs, pattern, pass);
                    }
                }
            }
        }
    }
}

/// Accounts a completed request; whether it transferred everything. A
/// write that fails leaves its range (or the rest of a short one) out of
/// this pass's verification.
fn finish(
    tally: &mut Tally,
    req: &Request,
    res: io::Result<usize>,
    start: Instant,
    write: bool,
    t: &Target,
    bar: &ProgressBar,
) -> bool {
    tally.latencies.record(start.elapsed());
    tally.requests += 1;
    bar.inc(req.len());
    let end = req.offset + req.len();
    let what = format!(
        "{} of {} bytes in {} segments at bytes {}..{end} of {}",
        if write { "PWRITEV" } else { "PREADV" },
        req.len(),
        req.segments.len(),
        req.offset,
        t.name
    );
    let missed = match res {
        Ok(n) if n as u64 == req.len() => {
            tally.bytes += n as u64;
            return true;
        }
        Ok(n) => {
            tally.bytes += n as u64;
            let from = req.offset + n as u64;
            tally.errors.push(format!(
                "{what} transferred only {n}: a short {}, bytes {from}..{end} not {}",
                if write { "write" } else { "read" },
                if write { "written" } else { "read" },
            ));
            from..end
        }
        Err(e) => {
            tally
                .errors
                .push(format!("{what} failed: {}", io_error_text(&e)));
            req.offset..end
        }
    };
    if write {
        tally.failed_writes += 1;
        tally.unwritten.add(missed);
    }
    false
}

/// Checks what a read returned, except the ranges this pass failed to write.
fn verify(tally: &mut Tally, req: &Request, bufs: &[AlignedBuf], pattern: &Pattern, pass: u8) {
    let mut off = req.offset;
    let mut first: Option<Mismatch> = None;
    let mut bad_bytes = 0;
    for b in bufs {
        for part in tally.unwritten.written_parts(off..off + b.len() as u64) {
            let bytes = &b[(part.start - off) as usize..(part.end - off) as usize];
            if let Some(m) = pattern.verify(bytes, part.start, pass) {
                bad_bytes += m.bad_bytes;
                first.get_or_insert(m);
            }
        }
        off += b.len() as u64;
    }
    if let Some(m) = first {
        tally.mismatched_requests += 1;
        if tally.mismatches.len() < MAX_REPORTED_MISMATCHES {
            tally.mismatches.push(Mismatch { bad_bytes, ..m });
        }
    }
}

/// The test hook: 4 KiB at `at` replaced, through a second descriptor, by
/// what the current pass wrote 4 KiB further on.
fn inject_misplaced_block(t: &Target, at: u64, pattern: &Pattern, pass: u8) -> io::Result<()> {
    let at = at / 4096 * 4096;
    let source = if at + 8192 <= t.size {
        at + 4096
    } else {
        at.saturating_sub(4096)
    };
    let mut block = vec![0u8; 4096];
    pattern.fill(&mut block, source, pass);
    let path = format!("/proc/self/fd/{}", t.file.as_raw_fd());
    let other = OpenOptions::new().write(true).open(path)?;
    other.write_all_at(&block, at)?;
    other.sync_data()
}

fn progress(total: u64, out: Output) -> ProgressBar {
    if out == Output::Json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Runs vectest.
pub fn run(args: &VectestArgs, out: Output) -> Exit {
    let seed = args.seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        super::plan::mix(now.as_nanos() as u64 ^ std::process::id() as u64)
    });
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed));
    if let Err(Fatal(msg)) = check_limits(args) {
        eprintln!("aio-tools vectest: {msg}");
        return Exit::Usage;
    }
    let t = match open_target(args, seed) {
        Ok(t) => t,
        Err(Fatal(msg)) => return usage_error("vectest", out, &msg),
    };
    let issuer = match Issuer::new(args.api, args.iodepth, args.driver.into(), 0) {
        Ok(c) => c,
        Err(e) => {
            return usage_error(
                "vectest",
                out,
                &format!("cannot create an AIO context: {e}"),
            );
        }
    };
    let engine = issuer.kernel_unavailable();
    let max_request = args.max_request.unwrap_or_else(|| {
        let for_segments = args.max_segments as u64 * t.unit;
        (1u64 << 20).max(if t.direct { for_segments } else { 0 })
    });
    let max_request = (max_request / t.unit * t.unit).max(t.unit);
    let shape = Shape {
        unit: t.unit,
        max_request,
        max_segments: args.max_segments as usize,
    };
    let pattern = Pattern::new(seed);
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    if out == Output::Human {
        eprintln!(
            "vectest: {} {} ({} bytes, {}), {} passes, iodepth {}, up to {} segments and {} bytes per request, {} API, {} driver, seed {seed}",
            t.kind,
            t.name,
            t.size,
            if t.direct {
                format!("O_DIRECT, {}-byte units", t.unit)
            } else {
                "buffered".into()
            },
            args.passes,
            args.iodepth,
            args.max_segments,
            max_request,
            args.api.name(),
            aio::Driver::from(args.driver).name(),
        );
        if let Some(line) = engine_line(engine.as_ref()) {
            eprintln!("{line}");
        }
    }
    let started = Instant::now();
    for pass in 1..=args.passes {
        for write in [true, false] {
            if write {
                tally.unwritten.clear();
            }
            let reqs = plan(t.size, shape, &mut rng);
            let bar = progress(t.size, out);
            bar.set_prefix(format!(
                "pass {pass} {}",
                if write { "write" } else { "verify" }
            ));
            phase(
                &issuer,
                &t,
                reqs,
                write,
                pass,
                &pattern,
                args.iodepth as usize,
                &mut tally,
                &bar,
            );
            bar.finish_and_clear();
            if write {
                tally.unverified_bytes += tally.unwritten.bytes();
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                eprintln!(
                    "aio-tools vectest: interrupted; {} requests completed",
                    tally.requests
                );
                if out == Output::Json {
                    crate::report::print_json(&json!({
                        "result": "interrupted",
                        "requests": tally.requests,
                        "errors": tally.errors,
                        "mismatched_requests": tally.mismatched_requests,
                    }));
                }
                return Exit::Usage;
            }
            if write && pass == 1 {
                if let Some(at) = args.inject_misplaced_block {
                    if let Err(e) = inject_misplaced_block(&t, at, &pattern, pass) {
                        return usage_error(
                            "vectest",
                            out,
                            &format!("cannot inject the misplaced block: {e}"),
                        );
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let stats = issuer.stats();
    drop(issuer);
    report(&t, args, seed, &tally, elapsed, stats, engine.as_ref(), out);
    if tally.mismatches.is_empty() && tally.errors.is_empty() {
        Exit::Pass
    } else {
        Exit::CheckFailed
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    t: &Target,
    args: &VectestArgs,
    seed: u64,
    tally: &Tally,
    elapsed: Duration,
    stats: aio::Stats,
    engine: Option<&aio::Error>,
    out: Output,
) {
    let lat = tally.latencies.summary_us();
    let calls = Calls::of(&stats);
    let verdict = if tally.mismatches.is_empty() && tally.errors.is_empty() {
        "PASS"
    } else {
        "FAIL"
    };
    match out {
        Output::Json => {
            let v = json!({
                "result": verdict.to_lowercase(),
                "target": t.name,
                "kind": t.kind,
                "size": t.size,
                "direct": t.direct,
                "unit": t.unit,
                "seed": seed,
                "passes": args.passes,
                "iodepth": args.iodepth,
                "api": args.api.name(),
                "driver": aio::Driver::from(args.driver).name(),
                "kernel_unavailable": engine_json(engine),
                "max_segments": args.max_segments,
                "requests": tally.requests,
                "bytes": tally.bytes,
                "elapsed_s": elapsed.as_secs_f64(),
                "iops": per_s(tally.requests, elapsed),
                "mib_per_s": mib_per_s(tally.bytes, elapsed),
                "latency_us": lat.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "mismatched_requests": tally.mismatched_requests,
                "mismatches": tally.mismatches.iter().map(|m| json!({
                    "offset": m.offset,
                    "message": m.to_string(),
                })).collect::<Vec<_>>(),
                "errors": tally.errors,
                "failed_writes": tally.failed_writes,
                "unverified_bytes": tally.unverified_bytes,
                // System calls to the kernel; the engine's submissions are
                // function calls, counted apart.
                "syscalls": {
                    "io_submit": calls.io_submit,
                    "io_getevents": calls.io_getevents,
                    "ring_reaps": stats.ring_reaps,
                    "engine_requests": calls.engine_requests,
                    "engine_submit_calls": calls.engine_submits,
                    "nowait_retries": stats.nowait_retries,
                },
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&v).expect("JSON of plain values")
            );
        }
        Output::Human => {
            print_capped("error", &tally.errors, tally.errors.len() as u64);
            for m in &tally.mismatches {
                println!("MISMATCH {m}");
            }
            if tally.unverified_bytes > 0 {
                println!(
                    "not verified: {} bytes that {} failed write requests left unwritten",
                    tally.unverified_bytes, tally.failed_writes
                );
            }
            println!(
                "{verdict}: {} requests, {} bytes in {:.2}s: {:.0} IOPS, {:.1} MiB/s; latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us; {} mismatched requests, {} errors (seed {seed})",
                tally.requests,
                tally.bytes,
                elapsed.as_secs_f64(),
                per_s(tally.requests, elapsed),
                mib_per_s(tally.bytes, elapsed),
                lat[0].1,
                lat[1].1,
                lat[2].1,
                tally.mismatched_requests,
                tally.errors.len(),
            );
            println!("{}", calls.text(&stats));
        }
    }
}
