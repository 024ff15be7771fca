//! `cargo xtask bench`: this project and fio on the same targets, in one
//! run, interleaved, as ratios.
//!
//! Targets: the raw `zram0` RAM block device (per-request overhead), an
//! `O_DIRECT` file on the root filesystem (the device), and a page-cached
//! file (buffered). Every cell (target × workload × contender) runs
//! `--repeats` times, contenders interleaved inside each repeat so that
//! drift of the machine hits all of them alike; the median is reported.
//!
//! The page-cached target must stay cached for every contender: fio runs
//! with `--invalidate=0` (its default, 1, drops the file's pages with
//! `POSIX_FADV_DONTNEED` before each job, which turned the cached target
//! into a disk benchmark at ~2k IOPS), the file is read through before
//! every cell, and how much of it is resident after each cell is checked
//! with `fincore` (a warning names every run that left less than 99%).
//! File targets are also flushed (`fdatasync`) before every cell, so that
//! one contender's writeback does not land in the next one's cell.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::Outcome;
use crate::proc;

/// Options of `cargo xtask bench`.
pub struct Options {
    /// Seconds per cell.
    pub runtime: u64,
    /// Repeats per cell (the median is reported).
    pub repeats: usize,
    /// Only these targets.
    pub only: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TargetKind {
    Zram,
    Direct,
    Cached,
}

struct Target {
    name: &'static str,
    kind: TargetKind,
    path: PathBuf,
    direct: bool,
}

/// One access pattern.
#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    rw: &'static str,
    depth: u32,
    /// Segments of 4 KiB per request (ours: one vectored request; fio: one
    /// request of the same total size).
    segments: u32,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "randread-4k-qd1",
        rw: "randread",
        depth: 1,
        segments: 1,
    },
    Workload {
        name: "randread-4k-qd32",
        rw: "randread",
        depth: 32,
        segments: 1,
    },
    Workload {
        name: "randread-4k-qd128",
        rw: "randread",
        depth: 128,
        segments: 1,
    },
    Workload {
        name: "randwrite-4k-qd32",
        rw: "randwrite",
        depth: 32,
        segments: 1,
    },
    Workload {
        name: "write-64x4k-qd32",
        rw: "randwrite",
        depth: 32,
        segments: 64,
    },
];

/// Who runs a cell.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    FioLibaioDefault,
    FioLibaioBest,
    FioIoUring,
    FioPsync2,
    /// `aio-tools bench --api sync` (kernel driver).
    AioSyncKernel,
    /// `aio-tools bench --api tokio` (kernel driver).
    AioTokioKernel,
    /// `aio-tools bench --api tokio-fs`: tokio's blocking-pool file I/O,
    /// no AIO (see `BenchApi::TokioFs` in aio-tools/src/bench.rs).
    TokioFs,
    /// `aio-tools bench --api sync --driver auto --jobs 2`: aio's default
    /// driver with two workers, as fio psync x2 has.
    AioSyncAutoX2,
    /// `aio-tools bench --api sync --driver engine --jobs 2`: the
    /// userspace engine alone, two workers.
    AioSyncEngineX2,
}

// aio's default driver is `Driver::Auto`: the "/kernel" contenders pass
// `--driver kernel` to be what their names say.
const CONTENDERS: &[Contender] = &[
    Contender::FioLibaioDefault,
    Contender::FioLibaioBest,
    Contender::FioIoUring,
    Contender::FioPsync2,
    Contender::AioSyncKernel,
    Contender::AioTokioKernel,
    Contender::AioSyncAutoX2,
    Contender::AioSyncEngineX2,
    Contender::TokioFs,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::FioLibaioDefault => "fio libaio (defaults)",
            Contender::FioLibaioBest => "fio libaio (best)",
            Contender::FioIoUring => "fio io_uring",
            Contender::FioPsync2 => "fio psync x2",
            Contender::AioSyncKernel => "aio sync/kernel",
            Contender::AioTokioKernel => "aio tokio/kernel",
            Contender::TokioFs => "tokio::fs",
            Contender::AioSyncAutoX2 => "aio sync/auto x2",
            Contender::AioSyncEngineX2 => "aio sync/engine x2",
        }
    }

    /// The arguments of `aio-tools bench` that make this contender; `None`
    /// for fio.
    fn bench_args(self) -> Option<&'static [&'static str]> {
        match self {
            Contender::FioLibaioDefault
            | Contender::FioLibaioBest
            | Contender::FioIoUring
            | Contender::FioPsync2 => None,
            Contender::AioSyncKernel => Some(&["--api", "sync", "--driver", "kernel"]),
            Contender::AioTokioKernel => Some(&["--api", "tokio", "--driver", "kernel"]),
            Contender::TokioFs => Some(&["--api", "tokio-fs"]),
            Contender::AioSyncAutoX2 => Some(&["--api", "sync", "--driver", "auto", "--jobs", "2"]),
            Contender::AioSyncEngineX2 => {
                Some(&["--api", "sync", "--driver", "engine", "--jobs", "2"])
            }
        }
    }

    /// Runs through `aio-tools bench` (ours, or tokio::fs for comparison).
    fn is_tool(self) -> bool {
        self.bench_args().is_some()
    }

    /// Uses the `aio` sync API (the syscall targets apply to these).
    fn is_sync_api(self) -> bool {
        self.bench_args()
            .is_some_and(|a| a.windows(2).any(|w| w == ["--api", "sync"]))
    }
}

/// The `aio::Context::stats()` counters of one run of ours.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct AioStats {
    requests: f64,
    submit_calls: f64,
    getevents_calls: f64,
    ring_reaps: f64,
    completions: f64,
}

impl AioStats {
    fn submits_per_request(&self) -> f64 {
        self.submit_calls / self.requests.max(1.0)
    }
    fn getevents_per_request(&self) -> f64 {
        self.getevents_calls / self.requests.max(1.0)
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    iops: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    /// Ours (aio contenders) only.
    stats: Option<AioStats>,
    /// Cached target only: the fraction of the file in the page cache
    /// after the run (from `fincore`).
    resident_after: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn run_capture(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            proc::describe(&out.status),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn fio(t: &Target, w: &Workload, c: Contender, runtime: u64) -> Result<Sample, String> {
    let bs = 4096 * w.segments;
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=cell",
        "--output-format=json",
        "--time_based",
        "--randrepeat=0",
        "--norandommap",
        &format!("--filename={}", t.path.display()),
        &format!("--rw={}", w.rw),
        &format!("--bs={bs}"),
        &format!("--runtime={runtime}"),
        &format!("--direct={}", t.direct as u8),
        // fio's default (1) drops the file's page cache before the job:
        // the cached target would be read from disk. Ours never drops it;
        // O_DIRECT targets do not use the cache.
        "--invalidate=0",
        // Percentiles of the total latency (submission to completion), as
        // ours measures from push to reap; fio's default, completion
        // latency, leaves out the time spent in io_submit, which is the
        // whole read for buffered I/O.
        "--lat_percentiles=1",
    ]);
    if t.kind != TargetKind::Zram {
        cmd.arg(format!("--size={}", target_size(t.kind)));
    }
    match c {
        Contender::FioLibaioDefault => {
            cmd.args(["--ioengine=libaio", &format!("--iodepth={}", w.depth)]);
        }
        Contender::FioLibaioBest => {
            cmd.args([
                "--ioengine=libaio",
                &format!("--iodepth={}", w.depth),
                &format!("--iodepth_batch_submit={}", 16.min(w.depth)),
                &format!("--iodepth_batch_complete_max={}", 32.min(w.depth)),
                "--userspace_reap=1",
            ]);
        }
        Contender::FioIoUring => {
            cmd.args(["--ioengine=io_uring", &format!("--iodepth={}", w.depth)]);
        }
        Contender::FioPsync2 => {
            cmd.args(["--ioengine=psync", "--numjobs=2", "--group_reporting"]);
        }
        _ => unreachable!("{c:?} is not fio"),
    }
    let out = run_capture(&mut cmd)?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("fio's JSON: {e}"))?;
    let job = &v["jobs"][0];
    let dir = if w.rw.contains("read") {
        &job["read"]
    } else {
        &job["write"]
    };
    let iops = dir["iops"].as_f64().unwrap_or(0.0);
    let ios = dir["total_ios"].as_f64().unwrap_or(0.0).max(1.0);
    let p99_ns = dir["lat_ns"]["percentile"]["99.000000"]
        .as_f64()
        .unwrap_or(0.0);
    // With --group_reporting (psync x2) job_runtime is the sum over the
    // jobs and usr_cpu/sys_cpu are per cent of that sum, so this is the
    // CPU time of all jobs together, as total_ios counts all their I/O.
    let runtime_s = job["job_runtime"].as_f64().unwrap_or(0.0) / 1000.0;
    let cpu_s = (job["usr_cpu"].as_f64().unwrap_or(0.0) + job["sys_cpu"].as_f64().unwrap_or(0.0))
        / 100.0
        * runtime_s;
    Ok(Sample {
        iops,
        p99_us: p99_ns / 1000.0,
        cpu_us_per_req: cpu_s * 1e6 / ios,
        ..Sample::default()
    })
}

fn ours(
    tools: &Path,
    t: &Target,
    w: &Workload,
    c: Contender,
    runtime: u64,
) -> Result<Sample, String> {
    let mut cmd = Command::new(tools);
    cmd.args([
        "bench",
        "--json",
        "--force",
        &t.path.display().to_string(),
        "--rw",
        w.rw,
        "--bs",
        "4k",
        "--segments",
        &w.segments.to_string(),
        "--iodepth",
        &w.depth.to_string(),
        "--runtime",
        &format!("{runtime}s"),
    ]);
    cmd.args(c.bench_args().expect("a contender of aio-tools bench"));
    if w.depth >= 32 {
        // Refill after 8 completions (fio's iodepth_batch_complete_min=8):
        // where completions trickle in (large writes on a disk), a refill
        // per completion would be an io_submit per request. On a device,
        // refill in calls of 8 or more (fio's iodepth_batch_submit): the
        // virtual disk finished a whole depth given in one call in one
        // burst, and idled while the loop refilled.
        cmd.args(["--batch", "8", "--submit-batch", "8"]);
    }
    if t.direct {
        cmd.arg("--direct");
    }
    if t.kind != TargetKind::Zram {
        cmd.args(["--size", &target_size(t.kind).to_string()]);
    }
    let out = run_capture(&mut cmd)?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("aio-tools bench JSON: {e}"))?;
    Ok(parse_tool_json(&v))
}

/// A [`Sample`] from the JSON of `aio-tools bench`.
fn parse_tool_json(v: &Value) -> Sample {
    let st = &v["stats"];
    let stats = st.is_object().then(|| {
        let f = |k: &str| st[k].as_f64().unwrap_or(0.0);
        AioStats {
            requests: f("requests"),
            submit_calls: f("submit_calls"),
            getevents_calls: f("getevents_calls"),
            ring_reaps: f("ring_reaps"),
            completions: f("completions"),
        }
    });
    Sample {
        iops: v["iops"].as_f64().unwrap_or(0.0),
        p99_us: v["latency_us"]["p99"].as_f64().unwrap_or(0.0),
        cpu_us_per_req: v["cpu"]["per_request_us"].as_f64().unwrap_or(0.0),
        stats,
        resident_after: None,
    }
}

fn target_size(kind: TargetKind) -> u64 {
    match kind {
        TargetKind::Zram | TargetKind::Direct => 1 << 30,
        TargetKind::Cached => 256 << 20,
    }
}

/// Fills `path` (a file or the zram device) with incompressible data.
fn fill(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < size {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf)?;
        written += buf.len() as u64;
    }
    f.sync_all()
}

/// Reads `path` through, so that all of it is in the page cache.
fn warm(path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while std::io::Read::read(&mut f, &mut buf)? > 0 {}
    Ok(())
}

/// Flushes a file target's dirty pages and, for the cached target, reads
/// it through.
fn settle(t: &Target) -> std::io::Result<()> {
    if t.kind == TargetKind::Zram {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t.path)?
        .sync_data()?;
    if t.kind == TargetKind::Cached {
        warm(&t.path)?;
    }
    Ok(())
}

/// The fraction of `path` in the page cache, from util-linux's `fincore`.
fn resident(path: &Path) -> Result<f64, String> {
    let out = run_capture(
        Command::new("fincore")
            .args(["--bytes", "--noheadings", "--raw", "--output", "RES,SIZE"])
            .arg(path),
    )?;
    let mut it = out.split_whitespace().map(|x| x.parse::<f64>());
    match (it.next(), it.next()) {
        (Some(Ok(res)), Some(Ok(size))) if size > 0.0 => Ok(res / size),
        _ => Err(format!("cannot parse fincore's output: {out:?}")),
    }
}

fn write_sysfs(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

/// Holds zram0 for the run: the fs matrix's lock (it resets and sizes
/// zram0 too), released after zram0 is reset on drop.
struct ZramGuard {
    _lock: crate::sys::Lock,
}

/// Takes the lock that `cargo xtask fs-matrix` holds while it uses zram0
/// (the same file as fsmatrix.rs's `lock()`), waiting for a matrix run.
fn zram_lock() -> Result<crate::sys::Lock, String> {
    let dir = if Path::new("/run/lock").is_dir() {
        PathBuf::from("/run/lock")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join("aio-xtask-fs-matrix.lock");
    let mut said = false;
    loop {
        match crate::sys::Lock::try_take(&path) {
            Ok(Some(lock)) => return Ok(lock),
            Ok(None) if !said => {
                println!(
                    "waiting for an fs-matrix run to finish with zram0 ({})",
                    path.display()
                );
                said = true;
            }
            Ok(None) => {}
            Err(e) => return Err(format!("locking {}: {e}", path.display())),
        }
        if proc::interrupted() {
            return Err("interrupted while waiting for zram0".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

impl Drop for ZramGuard {
    fn drop(&mut self) {
        let _ = write_sysfs("/sys/block/zram0/reset", "1");
    }
}

fn prepare(only: &[String], dir: &Path) -> Result<(Vec<Target>, Option<ZramGuard>), String> {
    let want = |n: &str| only.is_empty() || only.iter().any(|o| o == n);
    let mut targets = Vec::new();
    let mut guard = None;
    if want("zram0") {
        if !Path::new("/sys/block/zram0").exists() {
            let _ = Command::new("modprobe").arg("zram").status();
        }
        let lock = zram_lock()?;
        // A sized zram0 belongs to someone else (swap, a mount, another
        // tool, or a killed run of this one): not ours to reset.
        let size = std::fs::read_to_string("/sys/block/zram0/disksize").unwrap_or_default();
        if size.trim() != "0" {
            return Err(format!(
                "/dev/zram0 is in use (disksize {}); if it is a leftover, free it with \
                 `echo 1 > /sys/block/zram0/reset`, or leave zram0 out with --only direct,cached",
                size.trim()
            ));
        }
        write_sysfs("/sys/block/zram0/reset", "1")
            .and_then(|_| write_sysfs("/sys/block/zram0/disksize", "1G"))
            .map_err(|e| {
                format!("cannot set up /dev/zram0 (needs root and the zram module): {e}")
            })?;
        guard = Some(ZramGuard { _lock: lock });
        fill(Path::new("/dev/zram0"), 1 << 30).map_err(|e| format!("filling /dev/zram0: {e}"))?;
        targets.push(Target {
            name: "zram0",
            kind: TargetKind::Zram,
            path: "/dev/zram0".into(),
            direct: true,
        });
    }
    for (name, kind, direct) in [
        ("direct", TargetKind::Direct, true),
        ("cached", TargetKind::Cached, false),
    ] {
        if !want(name) {
            continue;
        }
        let path = dir.join(format!("{name}.dat"));
        let size = target_size(kind);
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < size {
            fill(&path, size).map_err(|e| format!("laying out {}: {e}", path.display()))?;
        }
        if kind == TargetKind::Cached {
            warm(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let r = resident(&path)?;
            if r < 0.99 {
                return Err(format!(
                    "{} is only {:.0}% in the page cache after reading it through (too little free memory?)",
                    path.display(),
                    r * 100.0
                ));
            }
        }
        targets.push(Target {
            name,
            kind,
            path,
            direct,
        });
    }
    Ok((targets, guard))
}

fn build_tools(root: &Path) -> Result<PathBuf, String> {
    let status = Command::new(proc::cargo())
        .current_dir(root)
        .args(["build", "--release", "-p", "aio-tools"])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("cargo build --release -p aio-tools failed".into());
    }
    Ok(crate::fsmatrix::cargo_target_dir(root)?.join("release/aio-tools"))
}

type Cells = Vec<(&'static str, &'static str, Contender, Vec<Sample>)>;

/// One run of the cold-cache submission check.
#[derive(Clone, Copy, Debug, Default)]
struct ColdRun {
    iops: f64,
    /// Time inside one `Context::submit` call, in microseconds.
    submit_p50: f64,
    submit_p99: f64,
    submit_max: f64,
    /// Requests per `io_submit`-level submission (kernel and engine calls).
    per_call: f64,
}

/// The drivers the cold-cache check compares.
const COLD_DRIVERS: [&str; 2] = ["auto", "kernel"];

/// Issue 6: with the page cache dropped (`drop_caches`), 4 KiB random
/// reads at depth 32 of a 2 GiB file on the root filesystem through the
/// sync API: the time a caller spends inside `Context::submit` with
/// `Auto` (cache misses go to the engine) and with the kernel driver
/// (Linux reads inside `io_submit`). Runs interleaved, `repeats` each.
fn cold_submission(
    tools: &Path,
    dir: &Path,
    runtime: u64,
    repeats: usize,
) -> Result<Vec<(&'static str, Vec<ColdRun>)>, String> {
    let path = dir.join("cold.dat");
    let size: u64 = 2 << 30;
    if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < size {
        fill(&path, size).map_err(|e| format!("laying out {}: {e}", path.display()))?;
    }
    let mut runs: Vec<(&'static str, Vec<ColdRun>)> =
        COLD_DRIVERS.iter().map(|&d| (d, Vec::new())).collect();
    for rep in 0..repeats {
        for (driver, list) in runs.iter_mut() {
            if proc::interrupted() {
                return Err("interrupted".into());
            }
            print!("\r[cold {}/{repeats}] {driver:<8}", rep + 1);
            let _ = std::io::stdout().flush();
            // SAFETY: sync takes no arguments.
            unsafe { libc::sync() };
            write_sysfs("/proc/sys/vm/drop_caches", "3")
                .map_err(|e| format!("drop_caches: {e}"))?;
            let out = run_capture(Command::new(tools).args([
                "bench",
                "--json",
                &path.display().to_string(),
                "--rw",
                "randread",
                "--iodepth",
                "32",
                "--runtime",
                &format!("{runtime}s"),
                "--size",
                &size.to_string(),
                "--driver",
                driver,
            ]))?;
            let v: Value =
                serde_json::from_str(&out).map_err(|e| format!("aio-tools bench JSON: {e}"))?;
            let f = |x: &Value| x.as_f64().unwrap_or(0.0);
            list.push(ColdRun {
                iops: f(&v["iops"]),
                submit_p50: f(&v["submit_us"]["p50"]),
                submit_p99: f(&v["submit_us"]["p99"]),
                submit_max: f(&v["submit_us"]["max"]),
                per_call: f(&v["stats"]["submitted"]) / f(&v["stats"]["submit_calls"]).max(1.0),
            });
        }
    }
    println!();
    Ok(runs)
}

fn cold_medians(runs: &[ColdRun]) -> ColdRun {
    let m = |f: fn(&ColdRun) -> f64| median(runs.iter().map(f).collect());
    ColdRun {
        iops: m(|r| r.iops),
        submit_p50: m(|r| r.submit_p50),
        submit_p99: m(|r| r.submit_p99),
        submit_max: m(|r| r.submit_max),
        per_call: m(|r| r.per_call),
    }
}

fn render_cold(runs: &[(&'static str, Vec<ColdRun>)]) -> String {
    let mut s = String::from(
        "cold page cache (2 GiB file on the root filesystem, drop_caches before each run), 4 KiB random reads, depth 32, sync API:\n",
    );
    let _ = writeln!(
        s,
        "  {:<8} {:>10} {:>16} {:>16} {:>16} {:>14}",
        "driver", "IOPS", "submit p50 us", "submit p99 us", "submit max us", "requests/call"
    );
    for (driver, list) in runs {
        let m = cold_medians(list);
        let _ = writeln!(
            s,
            "  {driver:<8} {:>10.0} {:>16.1} {:>16.1} {:>16.1} {:>14.1}",
            m.iops, m.submit_p50, m.submit_p99, m.submit_max, m.per_call
        );
    }
    s
}

fn cold_json(runs: &[(&'static str, Vec<ColdRun>)]) -> Value {
    let one = |r: &ColdRun| {
        json!({
            "iops": r.iops,
            "submit_us": {"p50": r.submit_p50, "p99": r.submit_p99, "max": r.submit_max},
            "requests_per_call": r.per_call,
        })
    };
    runs.iter()
        .map(|(d, list)| {
            json!({
                "driver": d,
                "runs": list.iter().map(one).collect::<Vec<_>>(),
                "median": one(&cold_medians(list)),
            })
        })
        .collect()
}

/// Runs the benchmark.
pub fn run(opts: &Options) -> Outcome {
    if !proc::is_root() {
        return Outcome::Skipped("cargo xtask bench needs root (zram0, drop_caches)".into());
    }
    if proc::which("fio").is_none() {
        if let Err(e) = crate::apt::install(&["fio"]) {
            return Outcome::Failed(format!("fio is missing and cannot be installed: {e}"));
        }
    }
    // Before building: what else runs here (the 1-minute average lags).
    let load_at_start = loadavg();
    let busy = load_at_start
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        .filter(|&l| l > 0.5);
    if let Some(l) = busy {
        println!(
            "warning: load average {l} before the run: other work on this machine will skew the numbers"
        );
    }
    let root = proc::workspace_root();
    let tools = match build_tools(&root) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e),
    };
    let out_dir = match crate::fsmatrix::cargo_target_dir(&root) {
        Ok(d) => d.join("bench"),
        Err(e) => return Outcome::Failed(e),
    };
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        return Outcome::Failed(format!("{}: {e}", out_dir.display()));
    }
    let (targets, _zram) = match prepare(&opts.only, &out_dir) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e),
    };
    let mut cells: Cells = Vec::new();
    for t in &targets {
        for w in WORKLOADS {
            for &c in CONTENDERS {
                cells.push((t.name, w.name, c, Vec::new()));
            }
        }
    }
    let total = cells.len() * opts.repeats;
    let mut done = 0;
    let mut failures = Vec::new();
    for rep in 0..opts.repeats {
        for t in &targets {
            for w in WORKLOADS {
                for &c in CONTENDERS {
                    if proc::interrupted() {
                        return Outcome::Failed("interrupted".into());
                    }
                    done += 1;
                    print!(
                        "\r[{done}/{total}] repeat {} {} {} {:<24}",
                        rep + 1,
                        t.name,
                        w.name,
                        c.name()
                    );
                    let _ = std::io::stdout().flush();
                    // Untimed, before every cell: the previous cell's dirty
                    // pages go to the device now, not during this cell; the
                    // cached file is read through (fio's cells also run
                    // with --invalidate=0).
                    if let Err(e) = settle(t) {
                        return Outcome::Failed(format!("{}: {e}", t.path.display()));
                    }
                    let r = if c.is_tool() {
                        ours(&tools, t, w, c, opts.runtime)
                    } else {
                        fio(t, w, c, opts.runtime)
                    };
                    let r = r.and_then(|mut s| {
                        if t.kind == TargetKind::Cached {
                            s.resident_after = Some(resident(&t.path)?);
                        }
                        Ok(s)
                    });
                    match r {
                        Ok(s) => {
                            let cell = cells
                                .iter_mut()
                                .find(|x| x.0 == t.name && x.1 == w.name && x.2 == c);
                            cell.expect("every cell was listed").3.push(s);
                        }
                        Err(e) => failures.push(format!("{} {} {}: {e}", t.name, w.name, c.name())),
                    }
                }
            }
        }
    }
    println!();
    let cold = if opts.only.is_empty() || opts.only.iter().any(|o| o == "cold") {
        match cold_submission(&tools, &out_dir, opts.runtime, opts.repeats) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("cold page cache: {e}"));
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let table = render_table(&cells);
    println!("{table}");
    let mut goals = goals(&cells);
    if let Some((_, auto)) = cold.iter().find(|(d, _)| *d == "auto") {
        goals.push(Goal {
            what: "cold cache, depth 32: time in Context::submit p99 with auto (us)".into(),
            value: (!auto.is_empty()).then(|| cold_medians(auto).submit_p99),
            at_least: false,
            bound: 50.0,
        });
    }
    if !cold.is_empty() {
        println!("{}", render_cold(&cold));
    }
    println!("{}", render_goals(&goals));
    let mut json = to_json(&cells, opts, &load_at_start);
    json["cold_submission"] = cold_json(&cold);
    let json_path = out_dir.join("results.json");
    let svg_path = out_dir.join("iops-vs-depth.svg");
    let written = std::fs::write(&json_path, serde_json::to_string_pretty(&json).unwrap())
        .and_then(|_| std::fs::write(&svg_path, plot(&cells, &targets)));
    if let Err(e) = written {
        return Outcome::Failed(format!("writing results: {e}"));
    }
    println!("command: {}", json["command"].as_str().unwrap_or(""));
    println!("machine: {}", json["machine"]);
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    if failures.is_empty() {
        Outcome::Passed(format!("{} cells x {} repeats", cells.len(), opts.repeats))
    } else {
        for f in &failures {
            println!("failed: {f}");
        }
        Outcome::Failed(format!("{} runs failed", failures.len()))
    }
}

/// The medians of a cell's runs.
#[derive(Clone, Copy, Debug, Default)]
struct Summary {
    iops: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    /// `io_submit` calls per request (aio contenders).
    submits_per_req: Option<f64>,
    /// `io_getevents` calls per request (aio contenders).
    getevents_per_req: Option<f64>,
    /// The least of the file resident after any run (cached target).
    resident_min: Option<f64>,
}

fn medians(s: &[Sample]) -> Summary {
    let stats: Vec<AioStats> = s.iter().filter_map(|x| x.stats).collect();
    let of_stats = |f: fn(&AioStats) -> f64| {
        (!stats.is_empty()).then(|| median(stats.iter().map(f).collect()))
    };
    Summary {
        iops: median(s.iter().map(|x| x.iops).collect()),
        p99_us: median(s.iter().map(|x| x.p99_us).collect()),
        cpu_us_per_req: median(s.iter().map(|x| x.cpu_us_per_req).collect()),
        submits_per_req: of_stats(AioStats::submits_per_request),
        getevents_per_req: of_stats(AioStats::getevents_per_request),
        resident_min: s.iter().filter_map(|x| x.resident_after).reduce(f64::min),
    }
}

/// The median IOPS of a cell, if it ran.
fn cell_iops(cells: &Cells, target: &str, workload: &str, c: Contender) -> Option<f64> {
    cells
        .iter()
        .find(|x| x.0 == target && x.1 == workload && x.2 == c && !x.3.is_empty())
        .map(|x| medians(&x.3).iops)
}

/// The best fio libaio configuration of a (target, workload): the reference
/// every ratio is taken against.
fn reference(cells: &Cells, target: &str, workload: &str) -> f64 {
    cells
        .iter()
        .filter(|c| c.0 == target && c.1 == workload)
        .filter(|c| matches!(c.2, Contender::FioLibaioDefault | Contender::FioLibaioBest))
        .map(|c| medians(&c.3).iops)
        .fold(0.0, f64::max)
}

/// Below this fraction of the cached file resident after a run, the run
/// did not measure page-cached I/O.
const MIN_RESIDENT: f64 = 0.99;

fn render_table(cells: &Cells) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<7} {:<18} {:<22} {:>10} {:>10} {:>11} {:>9} {:>10} {:>10}",
        "target",
        "workload",
        "contender",
        "IOPS",
        "p99 us",
        "CPU us/req",
        "vs libaio",
        "submit/req",
        "getev/req"
    );
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
    let mut cold = Vec::new();
    for (t, w, c, samples) in cells {
        if samples.is_empty() {
            continue;
        }
        let m = medians(samples);
        let r = reference(cells, t, w);
        let ratio = if r > 0.0 {
            format!("{:.2}x", m.iops / r)
        } else {
            "-".into()
        };
        let _ = writeln!(
            s,
            "{t:<7} {w:<18} {:<22} {:>10.0} {:>10.1} {:>11.2} {:>9} {:>10} {:>10}",
            c.name(),
            m.iops,
            m.p99_us,
            m.cpu_us_per_req,
            ratio,
            opt(m.submits_per_req),
            opt(m.getevents_per_req),
        );
        if let Some(r) = m.resident_min.filter(|&r| r < MIN_RESIDENT) {
            cold.push(format!(
                "{t} {w} {}: only {:.1}% of the file in the page cache after a run",
                c.name(),
                r * 100.0
            ));
        }
    }
    for c in cold {
        let _ = writeln!(s, "warning: {c}");
    }
    s
}

/// One target of issue 10, checked against the medians.
struct Goal {
    what: String,
    value: Option<f64>,
    /// `true`: value ≥ bound; `false`: value ≤ bound.
    at_least: bool,
    bound: f64,
}

impl Goal {
    fn met(&self) -> Option<bool> {
        self.value.map(|v| {
            if self.at_least {
                v >= self.bound
            } else {
                v <= self.bound
            }
        })
    }
}

fn ratio_goal(
    cells: &Cells,
    (t, w): (&str, &str),
    ours: Contender,
    of: Contender,
    bound: f64,
) -> Goal {
    let value = cell_iops(cells, t, w, ours)
        .zip(cell_iops(cells, t, w, of))
        .filter(|(_, b)| *b > 0.0)
        .map(|(a, b)| a / b);
    Goal {
        what: format!("{t} {w}: {} / {} IOPS", ours.name(), of.name()),
        value,
        at_least: true,
        bound,
    }
}

/// The targets of issue 10 that this run can check.
fn goals(cells: &Cells) -> Vec<Goal> {
    use Contender::*;
    let qd32 = "randread-4k-qd32";
    let mut g = vec![
        ratio_goal(cells, ("zram0", qd32), AioSyncKernel, FioLibaioBest, 1.0),
        ratio_goal(cells, ("zram0", qd32), AioSyncKernel, FioLibaioDefault, 1.5),
        ratio_goal(cells, ("direct", qd32), AioSyncKernel, FioIoUring, 0.97),
        // Page-cached 4 KiB random reads with two workers against pread
        // from two threads: Auto (issue 6) and the engine alone (issue 10).
        ratio_goal(cells, ("cached", qd32), AioSyncAutoX2, FioPsync2, 0.8),
        ratio_goal(cells, ("cached", qd32), AioSyncEngineX2, FioPsync2, 0.8),
    ];
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (t, w, _, _) in cells {
        if !seen.contains(&(t, w)) {
            seen.push((t, w));
        }
    }
    for &(t, w) in &seen {
        g.push(ratio_goal(
            cells,
            (t, w),
            AioTokioKernel,
            AioSyncKernel,
            0.9,
        ));
    }
    for &(t, w) in &seen {
        g.push(ratio_goal(cells, (t, w), AioTokioKernel, TokioFs, 3.0));
    }
    // Syscalls at depth 32: at most one io_submit per 8 requests. (No
    // io_getevents while events wait in the ring holds by construction:
    // aio's Core::drive reaps the ring before every io_getevents; the
    // counters cannot show it, the getev/req column shows how often the
    // context slept in io_getevents at all.)
    for (t, w, c, samples) in cells {
        let depth = WORKLOADS.iter().find(|x| x.name == *w).map(|x| x.depth);
        if depth != Some(32) || !c.is_sync_api() || samples.is_empty() {
            continue;
        }
        g.push(Goal {
            what: format!("{t} {w}: {} io_submit calls per request", c.name()),
            value: medians(samples).submits_per_req,
            at_least: false,
            bound: 1.0 / 8.0,
        });
    }
    g
}

fn render_goals(goals: &[Goal]) -> String {
    let mut s = String::from("targets (medians):\n");
    for g in goals {
        let value = g
            .value
            .map_or_else(|| "-".to_string(), |v| format!("{v:.3}"));
        let verdict = match g.met() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not run",
        };
        let _ = writeln!(
            s,
            "  {:<72} {:>8} {} {:<6} {verdict}",
            g.what,
            value,
            if g.at_least { ">=" } else { "<=" },
            g.bound
        );
    }
    s
}

/// The command that reproduces this run.
fn command_line(opts: &Options) -> String {
    let mut c = format!(
        "cargo xtask bench --runtime {} --repeats {}",
        opts.runtime, opts.repeats
    );
    if !opts.only.is_empty() {
        let _ = write!(c, " --only {}", opts.only.join(","));
    }
    c
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the README's table needs to say about the machine.
fn machine(load_at_start: &str) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let fio = Command::new("fio")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": field(&cpuinfo, "model name"),
        "memory": field(&read("/proc/meminfo"), "MemTotal"),
        "os": read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string()),
        "fio": fio,
        "load_average_at_start": load_at_start,
        "load_average_at_end": loadavg(),
    })
}

fn to_json(cells: &Cells, opts: &Options, load_at_start: &str) -> Value {
    let stats_json = |s: &AioStats| {
        json!({
            "requests": s.requests as u64,
            "submit_calls": s.submit_calls as u64,
            "getevents_calls": s.getevents_calls as u64,
            "ring_reaps": s.ring_reaps as u64,
            "completions": s.completions as u64,
        })
    };
    json!({
        "runtime_s": opts.runtime,
        "repeats": opts.repeats,
        "command": command_line(opts),
        "machine": machine(load_at_start),
        "cells": cells.iter().map(|(t, w, c, s)| {
            let m = medians(s);
            let r = reference(cells, t, w);
            json!({
                "target": t,
                "workload": w,
                "contender": c.name(),
                "runs": s.iter().map(|x| json!({
                    "iops": x.iops,
                    "p99_us": x.p99_us,
                    "cpu_us_per_req": x.cpu_us_per_req,
                    "stats": x.stats.as_ref().map(stats_json),
                    "resident_after": x.resident_after,
                })).collect::<Vec<_>>(),
                "median": {
                    "iops": m.iops,
                    "p99_us": m.p99_us,
                    "cpu_us_per_req": m.cpu_us_per_req,
                    "submit_calls_per_request": m.submits_per_req,
                    "getevents_calls_per_request": m.getevents_per_req,
                },
                "ratio_to_best_fio_libaio": if r > 0.0 { json!(m.iops / r) } else { Value::Null },
            })
        }).collect::<Vec<_>>(),
        "targets": goals(cells).iter().map(|g| json!({
            "what": g.what,
            "value": g.value,
            "bound": g.bound,
            "at_least": g.at_least,
            "met": g.met(),
        })).collect::<Vec<_>>(),
    })
}

/// IOPS against depth for the random-read workloads: one panel per
/// target, one line per contender.
fn plot(cells: &Cells, targets: &[Target]) -> String {
    let depths: Vec<(u32, &str)> = WORKLOADS
        .iter()
        .filter(|w| w.rw == "randread")
        .map(|w| (w.depth, w.name))
        .collect();
    let (pw, ph, margin) = (420.0, 300.0, 60.0);
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    ];
    let width = margin + targets.len() as f64 * (pw + margin);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        ph + 2.0 * margin + 20.0 * CONTENDERS.len() as f64
    );
    for (ti, t) in targets.iter().enumerate() {
        let x0 = margin + ti as f64 * (pw + margin);
        let y0 = margin;
        let max = cells
            .iter()
            .filter(|c| c.0 == t.name)
            .map(|c| medians(&c.3).iops)
            .fold(1.0, f64::max);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"14\">{} — 4 KiB random reads</text>",
            x0,
            y0 - 20.0,
            t.name
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>"
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\">{:.0} IOPS</text>",
            x0 + 4.0,
            y0 + 14.0,
            max
        );
        for (di, (d, _)) in depths.iter().enumerate() {
            let x = x0 + pw * (di as f64 + 0.5) / depths.len() as f64;
            let _ = writeln!(
                svg,
                "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">depth {d}</text>",
                y0 + ph + 16.0
            );
        }
        for (ci, &c) in CONTENDERS.iter().enumerate() {
            let pts: Vec<String> = depths
                .iter()
                .enumerate()
                .filter_map(|(di, (_, wname))| {
                    let cell = cells
                        .iter()
                        .find(|x| x.0 == t.name && x.1 == *wname && x.2 == c)?;
                    if cell.3.is_empty() {
                        return None;
                    }
                    let x = x0 + pw * (di as f64 + 0.5) / depths.len() as f64;
                    let y = y0 + ph - ph * medians(&cell.3).iops / max;
                    Some(format!("{x:.1},{y:.1}"))
                })
                .collect();
            let color = colors[ci % colors.len()];
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                pts.join(" ")
            );
            if ti == 0 {
                let ly = y0 + ph + 40.0 + 18.0 * ci as f64;
                let _ = writeln!(
                    svg,
                    "<line x1=\"{x0}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/>",
                    x0 + 30.0
                );
                let _ = writeln!(
                    svg,
                    "<text x=\"{}\" y=\"{}\">{}</text>",
                    x0 + 36.0,
                    ly + 4.0,
                    c.name()
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let s = |iops| Sample {
            iops,
            p99_us: 1.0,
            cpu_us_per_req: 1.0,
            ..Sample::default()
        };
        let cells: Cells = vec![
            ("zram0", "w", Contender::FioLibaioDefault, vec![s(100.0)]),
            (
                "zram0",
                "w",
                Contender::FioLibaioBest,
                vec![s(200.0), s(180.0), s(220.0)],
            ),
            ("zram0", "w", Contender::AioSyncKernel, vec![s(300.0)]),
        ];
        assert_eq!(reference(&cells, "zram0", "w"), 200.0);
        let table = render_table(&cells);
        assert!(table.contains("1.50x"), "{table}");
        let svg = plot(
            &cells,
            &[Target {
                name: "zram0",
                kind: TargetKind::Zram,
                path: "/dev/zram0".into(),
                direct: true,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.contains("aio sync/kernel"));
    }

    #[test]
    fn tool_json_goals_and_cold_cache() {
        let v: Value = serde_json::from_str(
            r#"{"iops": 1000.0, "latency_us": {"p99": 50.0}, "cpu": {"per_request_us": 2.0},
                "stats": {"requests": 1000, "submit_calls": 50, "getevents_calls": 10,
                          "ring_reaps": 40, "completions": 1000}}"#,
        )
        .unwrap();
        let sync = parse_tool_json(&v);
        assert_eq!(sync.stats.unwrap().submits_per_request(), 0.05);
        let fs: Value = serde_json::from_str(
            r#"{"iops": 200.0, "latency_us": {"p99": 500.0}, "cpu": {"per_request_us": 20.0},
                "stats": null}"#,
        )
        .unwrap();
        let fs = parse_tool_json(&fs);
        assert!(fs.stats.is_none());
        let tokio = Sample {
            iops: 950.0,
            resident_after: Some(0.5),
            ..sync
        };
        let w = "randread-4k-qd32";
        let cells: Cells = vec![
            ("cached", w, Contender::AioSyncKernel, vec![sync]),
            ("cached", w, Contender::AioTokioKernel, vec![tokio]),
            ("cached", w, Contender::TokioFs, vec![fs]),
        ];
        let g = goals(&cells);
        let find = |what: &str| g.iter().find(|g| g.what.contains(what)).unwrap();
        let vs_sync = find("aio tokio/kernel / aio sync/kernel");
        assert_eq!((vs_sync.value, vs_sync.met()), (Some(0.95), Some(true)));
        let vs_fs = find("aio tokio/kernel / tokio::fs");
        assert_eq!((vs_fs.value, vs_fs.met()), (Some(4.75), Some(true)));
        let submits = find("aio sync/kernel io_submit calls per request");
        assert_eq!(submits.met(), Some(true));
        assert!(!g.iter().any(|g| g.what.contains("tokio/kernel io_submit")));
        assert_eq!(find("zram0").met(), None, "not run");
        let table = render_table(&cells);
        assert!(table.contains("0.050"), "{table}");
        assert!(
            table.contains("warning: cached randread-4k-qd32 aio tokio/kernel"),
            "{table}"
        );
        let goals = render_goals(&g);
        assert!(goals.contains("MISSED") || goals.contains("met"), "{goals}");
    }
}
