//! A hostile caller of the safe API, generated: random programs of pushes,
//! waits, dropped and forgotten tickets, submits and reaps, files closed
//! and new ones opened, scopes over stack buffers that may panic, and
//! tokio runtimes dropped with requests pending, over a few scratch files
//! and a stream (a pipe or a socket pair), on every driver. After each
//! program, every byte is where the program meant it to be: in the file
//! its request named, nowhere else; and no program hangs.
//!
//! A model records, per file, the region each write was given (regions
//! never overlap, so the order of completion does not matter) and what is
//! known of its fate: never submitted, maybe, surely (submitted, or its
//! scope waited), or confirmed by its result. File bytes and stream bytes
//! come from disjoint alphabets, and no pattern byte is 0, so a byte in
//! the wrong file or at the wrong place shows.
//!
//! `AIO_HOSTILE_CASES` sets the cases per driver (default 64). Under
//! valgrind set `AIO_TEST_VALGRIND=1`: completions are then reaped with
//! `io_getevents` (valgrind does not see the kernel write the ring), and
//! the programs are shorter.
#![cfg(feature = "tokio")]

mod common;

use std::any::Any;
use std::fs::File;
use std::future::Future;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use aio::{Context, Driver, Fsync, Operation, Read, ReadV, Reap, Ticket, Write, WriteV};
use common::{layout_of, pipe, scratch_dir};
use proptest::prelude::*;

/// How long one program may run before the test calls it a hang:
/// generous, since the machine may be busy; it bounds a failure, it
/// measures nothing.
const HANG_SECS: u64 = 120;

/// [`HANG_SECS`], or `AIO_HOSTILE_HANG_SECS` (to shrink a hang quickly
/// while investigating it).
fn hang() -> Duration {
    let secs = std::env::var("AIO_HOSTILE_HANG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(HANG_SECS);
    Duration::from_secs(secs)
}

/// File slots of the pool; slot `FILES` names the stream.
const FILES: usize = 3;
const STREAM: usize = FILES;
/// The largest scoped buffer (a stack array).
const STACK: usize = 256;
/// The most bytes written to the stream in one phase: far below a pipe's
/// capacity, so that no write to it waits for room.
const STREAM_BUDGET: usize = 16 << 10;
/// The most stream reads per phase that may never be satisfied (each
/// holds a slot of the context until the context goes).
const UNSAFE_READS: usize = 2;
/// A forgotten tokio future keeps its driver, and so an AIO context that
/// counts against the system-wide `fs.aio-max-nr`, for the life of the
/// process. The drivers of this many tokio phases per process are leaked
/// that way; in later phases a "forgotten" future is kept, never polled
/// again, until after its runtime has shut down, and dropped then.
const LEAKED_DRIVERS: usize = 16;
/// Drivers leaked so far.
static LEAKED: AtomicUsize = AtomicUsize::new(0);
/// The tokio drivers' queue depth: room for every request of a phase.
const TOKIO_DEPTH: u32 = 32;

fn valgrind() -> bool {
    std::env::var_os("AIO_TEST_VALGRIND").is_some()
}

fn reap() -> Reap {
    if valgrind() {
        Reap::Syscall
    } else {
        Reap::Auto
    }
}

// ---------------------------------------------------------------------------
// Programs

/// How a pushed request holds its file.
#[derive(Clone, Copy, Debug)]
enum Hold {
    /// A share of the test's handle.
    Arc,
    /// A duplicate descriptor, as a `File`.
    Dup,
    /// A duplicate descriptor, as an `OwnedFd`.
    Owned,
}

#[derive(Clone, Copy, Debug)]
enum Io {
    /// `len` bytes at `gap` past the file's last region, in `segs` segments.
    Write {
        len: usize,
        gap: u16,
        segs: u8,
    },
    /// `len` bytes from an offset chosen by `pick`, in `segs` segments.
    Read {
        len: usize,
        pick: u16,
        segs: u8,
    },
    Fsync,
}

#[derive(Clone, Copy, Debug)]
struct Req {
    slot: usize,
    io: Io,
    hold: Hold,
}

/// What happens to a scoped request's ticket inside the scope.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Wait,
    Drop,
    Forget,
}

#[derive(Clone, Debug)]
enum Step {
    Push(Req),
    /// Waits for the live ticket at this index (modulo their number).
    Wait(u16),
    Drop(u16),
    Forget(u16),
    Submit,
    Reap,
    CtxWait,
    /// Closes the test's handle of a file slot and opens a new file there.
    Reopen(usize, u16),
    Scope {
        items: Vec<(Req, Fate)>,
        submit: bool,
        panic: bool,
    },
}

#[derive(Clone, Debug)]
enum TStep {
    Await(Req),
    /// Polled once or twice, then dropped or forgotten.
    Poll {
        req: Req,
        polls: u8,
        forget: bool,
    },
    /// Dropped without a poll: must never run.
    Unpolled(Req),
    /// Awaited in a task that the runtime's end may drop.
    Spawn(Req),
    Reopen(usize, u16),
    Yield,
}

#[derive(Clone, Debug)]
enum Phase {
    Sync { depth: u32, steps: Vec<Step> },
    Tokio { multi: bool, steps: Vec<TStep> },
}

#[derive(Clone, Debug)]
struct Program {
    socket: bool,
    phases: Vec<Phase>,
}

fn max_len() -> usize {
    if valgrind() { 512 } else { 4096 }
}

fn req(max_len: usize) -> impl Strategy<Value = Req> {
    let io = prop_oneof![
        4 => (1..=max_len, 0u16..512, 1u8..=3)
            .prop_map(|(len, gap, segs)| Io::Write { len, gap, segs }),
        3 => (1..=max_len, any::<u16>(), 1u8..=3)
            .prop_map(|(len, pick, segs)| Io::Read { len, pick, segs }),
        1 => Just(Io::Fsync),
    ];
    let hold = prop_oneof![Just(Hold::Arc), Just(Hold::Dup), Just(Hold::Owned)];
    (0..=STREAM, io, hold).prop_map(|(slot, io, hold)| Req { slot, io, hold })
}

fn step() -> impl Strategy<Value = Step> {
    let fate = prop_oneof![Just(Fate::Wait), Just(Fate::Drop), Just(Fate::Forget)];
    let scope = (
        prop::collection::vec((req(STACK), fate), 1..=4),
        any::<bool>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(items, submit, panic)| Step::Scope {
            items,
            submit,
            panic,
        });
    prop_oneof![
        8 => req(max_len()).prop_map(Step::Push),
        3 => any::<u16>().prop_map(Step::Wait),
        2 => any::<u16>().prop_map(Step::Drop),
        1 => any::<u16>().prop_map(Step::Forget),
        2 => Just(Step::Submit),
        1 => Just(Step::Reap),
        1 => Just(Step::CtxWait),
        1 => (0..FILES, 1u16..1024).prop_map(|(s, len)| Step::Reopen(s, len)),
        2 => scope,
    ]
}

fn tstep() -> impl Strategy<Value = TStep> {
    prop_oneof![
        3 => req(max_len()).prop_map(TStep::Await),
        4 => (req(max_len()), 1u8..=2, any::<bool>())
            .prop_map(|(req, polls, forget)| TStep::Poll { req, polls, forget }),
        1 => req(max_len()).prop_map(TStep::Unpolled),
        2 => req(max_len()).prop_map(TStep::Spawn),
        1 => (0..FILES, 1u16..1024).prop_map(|(s, len)| TStep::Reopen(s, len)),
        1 => Just(TStep::Yield),
    ]
}

fn program() -> impl Strategy<Value = Program> {
    let (phases, steps) = if valgrind() { (2, 10) } else { (3, 24) };
    let phase = prop_oneof![
        (8u32..=64, prop::collection::vec(step(), 1..=steps))
            .prop_map(|(depth, steps)| Phase::Sync { depth, steps }),
        (any::<bool>(), prop::collection::vec(tstep(), 1..=steps))
            .prop_map(|(multi, steps)| Phase::Tokio { multi, steps }),
    ];
    (any::<bool>(), prop::collection::vec(phase, 1..=phases))
        .prop_map(|(socket, phases)| Program { socket, phases })
}

// ---------------------------------------------------------------------------
// Patterns

fn mix(seed: u64, i: usize) -> u64 {
    let mut z =
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^= z >> 31;
    z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 29)
}

/// The bytes of write `seed`: 1..=191 for files, 192..=255 for the stream.
fn pattern(seed: u64, len: usize, stream: bool) -> Vec<u8> {
    (0..len)
        .map(|i| match stream {
            false => 1 + (mix(seed, i) % 191) as u8,
            true => 192 + (mix(seed, i) % 64) as u8,
        })
        .collect()
}

fn is_stream_byte(b: u8) -> bool {
    b >= 192
}

/// Lengths of `segs` non-empty segments that sum to `len`.
fn split(len: usize, segs: u8) -> Vec<usize> {
    let segs = (segs as usize).clamp(1, len);
    let mut out = vec![len / segs; segs];
    out[0] += len % segs;
    out
}

// ---------------------------------------------------------------------------
// The model

/// What is known of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    /// Its request was never queued.
    Never,
    /// It may or may not have run.
    Maybe,
    /// It was handed to a driver (or its scope waited for it): it lands.
    Surely,
    /// Its result said so, or the test wrote it with std: it is there now.
    Done,
}

struct Region {
    at: u64,
    bytes: Vec<u8>,
    known: Known,
    id: u64,
}

impl Region {
    fn end(&self) -> u64 {
        self.at + self.bytes.len() as u64
    }
}

struct Target {
    path: PathBuf,
    regions: Vec<Region>,
    /// Where the next region may start: past every region and every read
    /// range, so that no later write lands where an earlier read looks.
    next: u64,
}

struct StreamWrite {
    len: usize,
    known: Known,
}

/// The stream in the current phase.
#[derive(Default)]
struct StreamModel {
    writes: Vec<StreamWrite>,
    /// Bytes returned by reads whose results were seen.
    read: usize,
    /// A read consumed an unknown number of bytes.
    unaccounted: bool,
    /// Bytes confirmed written minus the lengths of every read issued:
    /// a read waited for must find data, so it is issued only if this
    /// covers it (then no read, in any order, can starve it).
    credit: i64,
    /// A read that may never be satisfied was issued: it could take the
    /// bytes of any later read, so every later read may starve too.
    poisoned: bool,
    unsafe_reads: usize,
}

/// Scratch paths, removed when the last holder goes (also when the
/// program panics or hangs).
#[derive(Clone, Default)]
struct Paths(Arc<Mutex<Vec<PathBuf>>>);

impl Drop for Paths {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) == 1 {
            for p in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(1);

struct Model {
    targets: Vec<Target>,
    stream: StreamModel,
    paths: Paths,
    kernel: bool,
}

/// What to check when a request's result comes back.
#[derive(Clone, Debug)]
enum Check {
    FileWrite { target: usize, region: usize },
    FileRead(ReadCheck),
    StreamWrite { index: usize },
    StreamRead { len: usize, safe: bool },
    Fsync,
}

/// What a file read may return: for each byte, the byte that was
/// confirmed there when the read was issued, or else 0 or the byte of the
/// region there (which may land before or after the read).
#[derive(Clone, Debug)]
struct ReadCheck {
    target: usize,
    at: u64,
    exact: Vec<Option<u8>>,
    alt: Vec<u8>,
    /// The read returns at least this many bytes (confirmed data).
    min: usize,
}

/// A request about to be issued.
struct Planned {
    at: u64,
    what: Bufs,
    check: Check,
}

enum Bufs {
    Write(Vec<Vec<u8>>),
    Read(Vec<usize>),
    Fsync,
}

impl Bufs {
    fn len(&self) -> usize {
        match self {
            Bufs::Write(s) => s.iter().map(Vec::len).sum(),
            Bufs::Read(l) => l.iter().sum(),
            Bufs::Fsync => 0,
        }
    }
}

/// A request's result, whatever its operation.
enum Done {
    One(io::Result<usize>, Vec<u8>),
    Many(io::Result<usize>, Vec<Vec<u8>>),
    Synced(io::Result<()>),
}

impl From<(io::Result<usize>, Vec<u8>)> for Done {
    fn from((r, b): (io::Result<usize>, Vec<u8>)) -> Done {
        Done::One(r, b)
    }
}

impl From<(io::Result<usize>, Vec<Vec<u8>>)> for Done {
    fn from((r, b): (io::Result<usize>, Vec<Vec<u8>>)) -> Done {
        Done::Many(r, b)
    }
}

impl From<io::Result<()>> for Done {
    fn from(r: io::Result<()>) -> Done {
        Done::Synced(r)
    }
}

impl Model {
    fn new(kernel: bool, paths: Paths) -> Model {
        Model {
            targets: Vec::new(),
            stream: StreamModel::default(),
            paths,
            kernel,
        }
    }

    /// A new empty scratch file, as a new target.
    fn new_file(&mut self) -> (File, usize) {
        let path = scratch_dir().join(format!(
            "aio-hostile-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        self.paths.0.lock().unwrap().push(path.clone());
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        self.targets.push(Target {
            path,
            regions: Vec::new(),
            next: 0,
        });
        (file, self.targets.len() - 1)
    }

    /// Writes `len` bytes into `target` with std, at once.
    fn write_std(&mut self, file: &File, target: usize, len: usize) {
        let id = SEQ.fetch_add(1, Ordering::Relaxed);
        let t = &mut self.targets[target];
        let at = t.next + (id % 64);
        let bytes = pattern(id, len, false);
        file.write_all_at(&bytes, at).unwrap();
        t.next = at + len as u64;
        t.regions.push(Region {
            at,
            bytes,
            known: Known::Done,
            id,
        });
    }

    /// Plans `req` on the file of `target` (or the stream). `waitable`:
    /// whether the test may wait for the result (then a stream read must
    /// be sure to find data). `None` if the request must not be issued.
    fn plan(&mut self, req: Req, target: usize, waitable: bool) -> Option<Planned> {
        let id = SEQ.fetch_add(1, Ordering::Relaxed);
        if req.slot == STREAM {
            let s = &mut self.stream;
            return match req.io {
                Io::Write { len, segs, .. } => {
                    let len = len.min(1024);
                    let issued: usize = s.writes.iter().map(|w| w.len).sum();
                    if issued + len > STREAM_BUDGET {
                        return None;
                    }
                    s.writes.push(StreamWrite {
                        len,
                        known: Known::Maybe,
                    });
                    Some(Planned {
                        at: 0,
                        what: Bufs::Write(layout_of(&pattern(id, len, true), &split(len, segs))),
                        check: Check::StreamWrite {
                            index: s.writes.len() - 1,
                        },
                    })
                }
                Io::Read { len, segs, .. } => {
                    // As much as is sure to be there, if anything is.
                    let len = match s.credit {
                        c if c > 0 && !s.poisoned => len.min(c as usize),
                        _ => len,
                    };
                    let safe = !s.poisoned && s.credit >= len as i64;
                    if !safe {
                        // The kernel would block in io_submit (a documented
                        // limitation); a read that may starve is left
                        // pending, never waited for.
                        if self.kernel || waitable || s.unsafe_reads == UNSAFE_READS {
                            return None;
                        }
                        s.poisoned = true;
                        s.unsafe_reads += 1;
                    }
                    s.credit -= len as i64;
                    Some(Planned {
                        at: 0,
                        what: Bufs::Read(split(len, segs)),
                        check: Check::StreamRead { len, safe },
                    })
                }
                Io::Fsync => None,
            };
        }
        let t = &mut self.targets[target];
        match req.io {
            Io::Write { len, gap, segs } => {
                let at = t.next + gap as u64;
                let bytes = pattern(id, len, false);
                let what = Bufs::Write(layout_of(&bytes, &split(len, segs)));
                t.next = at + len as u64;
                t.regions.push(Region {
                    at,
                    bytes,
                    known: Known::Maybe,
                    id,
                });
                Some(Planned {
                    at,
                    what,
                    check: Check::FileWrite {
                        target,
                        region: t.regions.len() - 1,
                    },
                })
            }
            Io::Read { len, pick, segs } => {
                let at = pick as u64 % (t.next + 1);
                let mut exact = vec![None; len];
                let mut alt = vec![0; len];
                let mut confirmed_end = 0;
                for r in &t.regions {
                    if r.known == Known::Done {
                        confirmed_end = confirmed_end.max(r.end());
                    }
                    let (from, to) = (r.at.max(at), r.end().min(at + len as u64));
                    for p in from..to {
                        let b = r.bytes[(p - r.at) as usize];
                        let i = (p - at) as usize;
                        alt[i] = b;
                        if r.known == Known::Done {
                            exact[i] = Some(b);
                        }
                    }
                }
                t.next = t.next.max(at + len as u64);
                let min = (confirmed_end.saturating_sub(at) as usize).min(len);
                Some(Planned {
                    at,
                    what: Bufs::Read(split(len, segs)),
                    check: Check::FileRead(ReadCheck {
                        target,
                        at,
                        exact,
                        alt,
                        min,
                    }),
                })
            }
            Io::Fsync => Some(Planned {
                at: 0,
                what: Bufs::Fsync,
                check: Check::Fsync,
            }),
        }
    }

    /// The write of `check` was handed to a driver.
    fn surely(&mut self, check: &Check) {
        let known = match check {
            Check::FileWrite { target, region } => {
                &mut self.targets[*target].regions[*region].known
            }
            Check::StreamWrite { index } => &mut self.stream.writes[*index].known,
            _ => return,
        };
        if *known == Known::Maybe {
            *known = Known::Surely;
        }
    }

    /// A request was dropped before anything queued it.
    fn never(&mut self, check: &Check) {
        match check {
            Check::FileWrite { target, region } => {
                self.targets[*target].regions[*region].known = Known::Never
            }
            Check::StreamWrite { index } => self.stream.writes[*index].known = Known::Never,
            Check::StreamRead { len, safe } => {
                self.stream.credit += *len as i64;
                if !safe {
                    self.stream.unsafe_reads -= 1;
                }
            }
            _ => {}
        }
    }

    /// A request whose result will not be seen (a dropped or forgotten
    /// ticket or future).
    fn unseen(&mut self, check: &Check) {
        if let Check::StreamRead { .. } = check {
            self.stream.unaccounted = true;
        }
    }

    /// Checks a result against the model and records what it confirms.
    fn complete(&mut self, check: &Check, done: Done, what: &str) {
        let (res, buf) = match done {
            Done::One(r, b) => (r, b),
            Done::Many(r, b) => (r, b.concat()),
            Done::Synced(r) => {
                r.unwrap_or_else(|e| panic!("{what}: fsync failed: {e}"));
                assert!(matches!(check, Check::Fsync), "{what}: {check:?}");
                return;
            }
        };
        let n = res.unwrap_or_else(|e| panic!("{what}: {check:?} failed: {e}"));
        match check {
            Check::FileWrite { target, region } => {
                let r = &mut self.targets[*target].regions[*region];
                assert_eq!(n, r.bytes.len(), "{what}: write #{} was short", r.id);
                r.known = Known::Done;
            }
            Check::StreamWrite { index } => {
                let w = &mut self.stream.writes[*index];
                assert_eq!(n, w.len, "{what}: a stream write was short");
                w.known = Known::Done;
                self.stream.credit += n as i64;
            }
            Check::FileRead(c) => self.check_read(c, &buf, Some(n), true, what),
            Check::StreamRead { len, safe } => {
                assert!(n <= *len, "{what}: read {n} of {len}");
                assert!(n > 0 || !safe, "{what}: a stream read saw its end");
                check_stream_bytes(&buf, Some(n), what);
                self.stream.read += n;
            }
            Check::Fsync => unreachable!(),
        }
    }

    /// Checks what a file read put in `buf`, with its count `n` if known;
    /// `ran`: whether the read surely ran.
    fn check_read(&self, c: &ReadCheck, buf: &[u8], n: Option<usize>, ran: bool, what: &str) {
        let tag = self.targets[c.target].path.display();
        if let Some(n) = n {
            assert!(
                (c.min..=buf.len()).contains(&n),
                "{what}: read of {tag} at {} returned {n}, expected {}..={}",
                c.at,
                c.min,
                buf.len()
            );
        }
        for (i, &b) in buf.iter().enumerate() {
            let fine = match n {
                Some(n) if i >= n => b == 0,
                _ if ran && (n.is_some() || i < c.min) => match c.exact[i] {
                    Some(e) => b == e,
                    None => b == 0 || b == c.alt[i],
                },
                _ => b == 0 || b == c.alt[i],
            };
            assert!(
                fine,
                "{what}: read of {tag} at {}: byte {i} is {b}, expected {:?} (or 0 or {}), n {n:?}",
                c.at, c.exact[i], c.alt[i]
            );
        }
    }

    /// Checks every file against its regions.
    fn check_files(&self) {
        for t in &self.targets {
            let data = std::fs::read(&t.path).unwrap();
            let tag = t.path.display();
            let mut covered = vec![false; data.len()];
            for r in &t.regions {
                let from = (r.at as usize).min(data.len());
                let to = (r.end() as usize).min(data.len());
                covered[from..to].iter_mut().for_each(|c| *c = true);
                let there = &data[from..to];
                let landed = there == &r.bytes[..];
                let absent = there.iter().all(|&b| b == 0);
                let fine = match r.known {
                    Known::Done | Known::Surely => landed,
                    Known::Maybe => landed || absent,
                    Known::Never => absent,
                };
                assert!(
                    fine,
                    "{tag}: write #{} ({:?}) of {} bytes at {}: found {}",
                    r.id,
                    r.known,
                    r.bytes.len(),
                    r.at,
                    describe(there, &r.bytes)
                );
            }
            if let Some(p) = (0..data.len()).find(|&p| !covered[p] && data[p] != 0) {
                panic!(
                    "{tag}: byte {p} is {} where nothing was written ({} bytes in the file)",
                    data[p],
                    data.len()
                );
            }
        }
    }
}

/// What a region holds instead of its bytes.
fn describe(there: &[u8], want: &[u8]) -> String {
    if there.len() < want.len() {
        return format!("only {} bytes (the file ends)", there.len());
    }
    let wrong = there.iter().zip(want).filter(|(a, b)| a != b).count();
    let zeros = there.iter().filter(|&&b| b == 0).count();
    let stream = there.iter().filter(|&&b| is_stream_byte(b)).count();
    format!("{wrong} bytes differ ({zeros} zero, {stream} stream bytes)")
}

fn check_stream_bytes(buf: &[u8], n: Option<usize>, what: &str) {
    for (i, &b) in buf.iter().enumerate() {
        let fine = match n {
            Some(n) if i >= n => b == 0,
            Some(_) => is_stream_byte(b),
            None => b == 0 || is_stream_byte(b),
        };
        assert!(fine, "{what}: stream read byte {i} is {b} (n {n:?})");
    }
}

// ---------------------------------------------------------------------------
// The world: the test's own handles

struct World {
    files: Vec<Arc<File>>,
    targets: Vec<usize>,
    /// The stream's read and write ends.
    r: Arc<File>,
    w: Arc<File>,
}

impl World {
    fn new(model: &mut Model, socket: bool) -> World {
        let mut files = Vec::new();
        let mut targets = Vec::new();
        for _ in 0..FILES {
            let (f, t) = model.new_file();
            files.push(Arc::new(f));
            targets.push(t);
        }
        let (r, w) = if socket {
            let (a, b) = UnixStream::pair().unwrap();
            (File::from(OwnedFd::from(a)), File::from(OwnedFd::from(b)))
        } else {
            pipe()
        };
        World {
            files,
            targets,
            r: Arc::new(r),
            w: Arc::new(w),
        }
    }

    /// The test's handle for a request on `slot`.
    fn handle(&self, slot: usize, write: bool) -> &Arc<File> {
        match slot {
            STREAM if write => &self.w,
            STREAM => &self.r,
            s => &self.files[s],
        }
    }

    fn target(&self, slot: usize) -> usize {
        if slot == STREAM {
            usize::MAX
        } else {
            self.targets[slot]
        }
    }

    /// Drops the test's handle of `slot` (requests keep theirs) and puts
    /// a new file there, written with std.
    fn reopen(&mut self, model: &mut Model, slot: usize, len: usize) {
        // The test's handle goes before the new file is opened, which may
        // then get its number (requests hold their own share or duplicate).
        self.files[slot] = Arc::new(File::open("/dev/null").unwrap());
        let (f, t) = model.new_file();
        model.write_std(&f, t, len);
        self.files[slot] = Arc::new(f);
        self.targets[slot] = t;
    }

    /// Drains what is left in the stream, with std, and checks the
    /// phase's stream accounting.
    fn end_stream_phase(&self, model: &mut Model, what: &str) {
        let mut avail: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `avail`.
        let rc = unsafe {
            libc::ioctl(
                self.r.as_raw_fd(),
                libc::FIONREAD,
                &mut avail as *mut libc::c_int,
            )
        };
        assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
        let mut left = vec![0u8; avail as usize];
        (&*self.r).read_exact(&mut left).unwrap();
        check_stream_bytes(&left, Some(left.len()), what);
        let s = std::mem::take(&mut model.stream);
        let sum = |f: &dyn Fn(Known) -> bool| -> usize {
            s.writes.iter().filter(|w| f(w.known)).map(|w| w.len).sum()
        };
        let sure = sum(&|k| matches!(k, Known::Done | Known::Surely));
        let maybe = sum(&|k| k == Known::Maybe);
        let seen = s.read + left.len();
        assert!(
            seen <= sure + maybe,
            "{what}: {seen} bytes came out of the stream, {sure} + {maybe} went in"
        );
        if !s.unaccounted {
            assert!(
                seen >= sure,
                "{what}: {seen} bytes came out of the stream, {sure} went in"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Issuing requests

/// A ticket of any operation, its output made a [`Done`].
trait Waitable {
    fn wait(self: Box<Self>) -> Done;
}

impl<O: Operation> Waitable for Ticket<'_, O>
where
    O::Output: Into<Done>,
{
    fn wait(self: Box<Self>) -> Done {
        (*self).wait().into()
    }
}

fn push_on<'c, F: AsFd + Send + 'static>(
    ctx: &'c Context,
    fd: F,
    at: u64,
    what: Bufs,
) -> Box<dyn Waitable + 'c> {
    match what {
        Bufs::Write(mut s) if s.len() == 1 => Box::new(ctx.push(Write::new(fd, s.remove(0), at))),
        Bufs::Write(s) => Box::new(ctx.push(WriteV::new(fd, s, at))),
        Bufs::Read(l) if l.len() == 1 => Box::new(ctx.push(Read::new(fd, vec![0u8; l[0]], at))),
        Bufs::Read(l) => {
            let bufs: Vec<Vec<u8>> = l.iter().map(|&n| vec![0u8; n]).collect();
            Box::new(ctx.push(ReadV::new(fd, bufs, at)))
        }
        Bufs::Fsync => Box::new(ctx.push(Fsync::new(fd))),
    }
}

fn push<'c>(ctx: &'c Context, file: &Arc<File>, hold: Hold, p: Planned) -> Box<dyn Waitable + 'c> {
    match hold {
        Hold::Arc => push_on(ctx, file.clone(), p.at, p.what),
        Hold::Dup => push_on(ctx, file.try_clone().unwrap(), p.at, p.what),
        Hold::Owned => push_on(ctx, OwnedFd::from(file.try_clone().unwrap()), p.at, p.what),
    }
}

/// A future of any operation, its output made a [`Done`].
type Fut = Box<dyn Future<Output = Done> + Send + Unpin>;

struct Erase<F>(F);

impl<F: Future + Unpin> Future for Erase<F>
where
    F::Output: Into<Done>,
{
    type Output = Done;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Done> {
        Pin::new(&mut self.0).poll(cx).map(Into::into)
    }
}

fn erase<F>(f: F) -> Fut
where
    F: Future + Unpin + Send + 'static,
    F::Output: Into<Done>,
{
    Box::new(Erase(f))
}

fn run_on<F: AsFd + Send + 'static>(h: &aio::tokio::Handle, fd: F, at: u64, what: Bufs) -> Fut {
    match what {
        Bufs::Write(mut s) if s.len() == 1 => erase(h.run(Write::new(fd, s.remove(0), at))),
        Bufs::Write(s) => erase(h.run(WriteV::new(fd, s, at))),
        Bufs::Read(l) if l.len() == 1 => erase(h.run(Read::new(fd, vec![0u8; l[0]], at))),
        Bufs::Read(l) => {
            let bufs: Vec<Vec<u8>> = l.iter().map(|&n| vec![0u8; n]).collect();
            erase(h.run(ReadV::new(fd, bufs, at)))
        }
        Bufs::Fsync => erase(h.run(Fsync::new(fd))),
    }
}

/// A future for `p`: through the `aio::tokio::File` for a shared hold,
/// through `Handle::run` with a duplicate otherwise.
fn future(
    h: &aio::tokio::Handle,
    tfile: &aio::tokio::File,
    std: &File,
    hold: Hold,
    p: Planned,
) -> Fut {
    match hold {
        Hold::Arc => match p.what {
            Bufs::Write(mut s) if s.len() == 1 => erase(tfile.write_at(s.remove(0), p.at)),
            Bufs::Write(s) => erase(tfile.writev_at(s, p.at)),
            Bufs::Read(l) if l.len() == 1 => erase(tfile.read_at(vec![0u8; l[0]], p.at)),
            Bufs::Read(l) => {
                let bufs: Vec<Vec<u8>> = l.iter().map(|&n| vec![0u8; n]).collect();
                erase(tfile.readv_at(bufs, p.at))
            }
            Bufs::Fsync => erase(tfile.sync_all()),
        },
        Hold::Dup => run_on(h, std.try_clone().unwrap(), p.at, p.what),
        Hold::Owned => run_on(h, OwnedFd::from(std.try_clone().unwrap()), p.at, p.what),
    }
}

// ---------------------------------------------------------------------------
// Running a program

/// The payload of the panics the programs cause on purpose.
struct PlannedPanic;

fn quiet_planned_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<PlannedPanic>() {
                default(info);
            }
        }));
    });
}

/// The message of a panic payload.
fn message(p: &(dyn Any + Send)) -> String {
    match (p.downcast_ref::<String>(), p.downcast_ref::<&str>()) {
        (Some(s), _) => s.clone(),
        (_, Some(s)) => (*s).to_owned(),
        _ => "a panic without a message".to_owned(),
    }
}

fn is_write(req: &Req) -> bool {
    matches!(req.io, Io::Write { .. })
}

fn run_sync(
    model: &mut Model,
    world: &mut World,
    driver: Driver,
    depth: u32,
    steps: &[Step],
    what: &str,
) {
    struct Live<'c> {
        ticket: Box<dyn Waitable + 'c>,
        check: Check,
    }
    let ctx = Context::builder()
        .queue_depth(depth)
        .driver(driver)
        .reap(reap())
        .build()
        .unwrap_or_else(|e| panic!("a context on {driver:?}: {e}"));
    let mut live: Vec<Live<'_>> = Vec::new();
    // Requests pushed since the last submit.
    let mut queued: Vec<Check> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let what = format!("{what} step {i} ({step:?})");
        match step {
            Step::Push(req) => {
                let Some(p) = model.plan(*req, world.target(req.slot), false) else {
                    continue;
                };
                let file = world.handle(req.slot, is_write(req)).clone();
                let check = p.check.clone();
                queued.push(check.clone());
                let ticket = push(&ctx, &file, req.hold, p);
                live.push(Live { ticket, check });
            }
            Step::Wait(k) if !live.is_empty() => {
                let at = *k as usize % live.len();
                if let Check::StreamRead { safe: false, .. } = live[at].check {
                    // It may never be satisfied.
                    continue;
                }
                let l = live.remove(at);
                let done = l.ticket.wait();
                model.complete(&l.check, done, &what);
            }
            Step::Drop(k) | Step::Forget(k) if !live.is_empty() => {
                let l = live.remove(*k as usize % live.len());
                model.unseen(&l.check);
                if let Step::Forget(_) = step {
                    std::mem::forget(l.ticket);
                }
            }
            Step::Wait(_) | Step::Drop(_) | Step::Forget(_) => {}
            Step::Submit => {
                ctx.submit();
                for c in queued.drain(..) {
                    model.surely(&c);
                }
            }
            Step::Reap => {
                ctx.reap();
            }
            // Nothing but a read that may never be satisfied may be in
            // flight.
            Step::CtxWait if model.stream.poisoned => {}
            Step::CtxWait => {
                ctx.wait();
            }
            Step::Reopen(slot, len) => world.reopen(model, *slot, *len as usize),
            Step::Scope {
                items,
                submit,
                panic,
            } => run_scope(model, world, &ctx, items, *submit, *panic, &what),
        }
    }
    for l in live {
        model.unseen(&l.check);
    }
    // Waits for every submitted request; those never submitted are dropped.
    drop(ctx);
}

/// One request of a scope: its plan, its ticket's fate and its result.
struct Scoped {
    plan: Planned,
    fate: Fate,
    result: Option<io::Result<usize>>,
}

fn run_scope(
    model: &mut Model,
    world: &World,
    ctx: &Context,
    items: &[(Req, Fate)],
    submit: bool,
    panic: bool,
    what: &str,
) {
    let mut reqs: Vec<Scoped> = Vec::new();
    let mut fds: Vec<&File> = Vec::new();
    for &(req, fate) in items {
        // A scope that does not panic waits for all of its requests.
        let waitable = !panic || matches!(fate, Fate::Wait);
        if let Some(plan) = model.plan(req, world.target(req.slot), waitable) {
            fds.push(world.handle(req.slot, is_write(&req)));
            reqs.push(Scoped {
                plan,
                fate,
                result: None,
            });
        }
    }
    let mut stack = [[0u8; STACK]; 4];
    let slots: Vec<&mut [u8; STACK]> = stack.iter_mut().collect();
    let reqs_in = &mut reqs;
    let outcome = panic::catch_unwind(AssertUnwindSafe(move || {
        ctx.scope(move |s| {
            for ((buf, r), fd) in slots.into_iter().zip(reqs_in.iter_mut()).zip(fds) {
                let len = r.plan.what.len();
                let at = r.plan.at;
                // Waits for, drops or forgets a ticket, keeping the result.
                macro_rules! settle {
                    ($ticket:expr, $out:expr) => {{
                        let ticket = $ticket;
                        match r.fate {
                            Fate::Wait => {
                                let out = ticket.wait();
                                #[allow(clippy::redundant_closure_call)]
                                let res = ($out)(out);
                                r.result = Some(res);
                            }
                            Fate::Drop => drop(ticket),
                            Fate::Forget => std::mem::forget(ticket),
                        }
                    }};
                }
                match &r.plan.what {
                    Bufs::Write(segs) => {
                        let buf = &mut buf[..len];
                        buf.copy_from_slice(&segs.concat());
                        let buf: &[u8] = buf;
                        if segs.len() > 1 {
                            let (a, b) = buf.split_at(segs[0].len());
                            settle!(s.writev_at(fd, [a, b], at), |o: (io::Result<usize>, _)| o.0);
                        } else {
                            settle!(s.write_at(fd, buf, at), |o: (io::Result<usize>, _)| o.0);
                        }
                    }
                    Bufs::Read(lens) => {
                        let buf = &mut buf[..len];
                        if lens.len() > 1 {
                            let (a, b) = buf.split_at_mut(lens[0]);
                            settle!(s.readv_at(fd, [a, b], at), |o: (io::Result<usize>, _)| o.0);
                        } else {
                            settle!(s.read_at(fd, buf, at), |o: (io::Result<usize>, _)| o.0);
                        }
                    }
                    Bufs::Fsync => {
                        settle!(s.push(Fsync::new(fd)), |o: io::Result<()>| o.map(|()| 0));
                    }
                }
            }
            if submit {
                s.submit();
            }
            if panic {
                panic::panic_any(PlannedPanic);
            }
        })
    }));
    match outcome {
        Ok(()) => assert!(!panic, "{what}: the scope's panic was not resumed"),
        Err(p) if p.is::<PlannedPanic>() => assert!(panic, "{what}: a planned panic"),
        Err(p) => panic::resume_unwind(p),
    }
    // Whether every request of the scope ran: the scope waits for the
    // requests it submitted, and drops those queued only after a panic.
    let all_ran = !panic || submit;
    for (r, buf) in reqs.into_iter().zip(&stack) {
        let buf = &buf[..r.plan.what.len()];
        let check = &r.plan.check;
        match r.result {
            Some(res) => {
                let done = match check {
                    Check::Fsync => Done::Synced(res.map(drop)),
                    _ => Done::One(res, buf.to_vec()),
                };
                model.complete(check, done, what);
            }
            None => match check {
                Check::FileWrite { .. } | Check::StreamWrite { .. } if all_ran => {
                    model.surely(check)
                }
                Check::FileRead(c) => model.check_read(c, buf, None, all_ran, what),
                Check::StreamRead { .. } => {
                    check_stream_bytes(buf, None, what);
                    model.unseen(check);
                }
                _ => {}
            },
        }
    }
}

fn run_tokio(
    model: &mut Model,
    world: &mut World,
    driver: Driver,
    multi: bool,
    steps: &[TStep],
    what: &str,
) {
    let rt = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .unwrap();
    let handle = {
        let _rt = rt.enter();
        aio::tokio::Builder::new()
            .driver(driver)
            .queue_depth(TOKIO_DEPTH)
            .reap(reap())
            .build()
            .unwrap_or_else(|e| panic!("a tokio driver on {driver:?}: {e}"))
    };
    let tfile = |f: &Arc<File>| aio::tokio::File::from_std_with(f.try_clone().unwrap(), &handle);
    let mut tfiles: Vec<aio::tokio::File> = world.files.iter().map(tfile).collect();
    let (tr, tw) = (tfile(&world.r), tfile(&world.w));
    let waker = Waker::noop();
    // Futures "forgotten" once the budget of leaked drivers is spent.
    let mut kept: Vec<Fut> = Vec::new();
    let mut leaks = false;
    // Unconstrained: the cooperative budget must not turn a planned poll
    // into one that does nothing.
    rt.block_on(tokio::task::unconstrained(async {
        for (i, step) in steps.iter().enumerate() {
            let what = format!("{what} step {i} ({step:?})");
            let (req, waitable) = match step {
                TStep::Await(req) => (req, true),
                TStep::Poll { req, .. } | TStep::Unpolled(req) | TStep::Spawn(req) => (req, false),
                TStep::Reopen(slot, len) => {
                    world.reopen(model, *slot, *len as usize);
                    tfiles[*slot] = tfile(&world.files[*slot]);
                    continue;
                }
                TStep::Yield => {
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let Some(p) = model.plan(*req, world.target(req.slot), waitable) else {
                continue;
            };
            let check = p.check.clone();
            let write = is_write(req);
            let tf = match req.slot {
                STREAM if write => &tw,
                STREAM => &tr,
                s => &tfiles[s],
            };
            let mut fut = future(&handle, tf, world.handle(req.slot, write), req.hold, p);
            match step {
                TStep::Await(_) => {
                    let done = (&mut fut).await;
                    model.complete(&check, done, &what);
                }
                TStep::Poll { polls, forget, .. } => {
                    let mut ready = None;
                    for _ in 0..*polls {
                        if let Poll::Ready(done) =
                            Pin::new(&mut fut).poll(&mut TaskContext::from_waker(waker))
                        {
                            ready = Some(done);
                            break;
                        }
                    }
                    match ready {
                        Some(done) => model.complete(&check, done, &what),
                        None => {
                            if *polls == 2 {
                                // The second poll submitted it.
                                model.surely(&check);
                            }
                            model.unseen(&check);
                            if *forget {
                                leaks = leaks
                                    || LEAKED
                                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                            (n < LEAKED_DRIVERS).then_some(n + 1)
                                        })
                                        .is_ok();
                                if leaks {
                                    std::mem::forget(fut);
                                } else {
                                    kept.push(fut);
                                }
                            }
                        }
                    }
                }
                TStep::Unpolled(_) => {
                    drop(fut);
                    model.never(&check);
                }
                TStep::Spawn(_) => {
                    model.unseen(&check);
                    drop(tokio::spawn(fut));
                }
                TStep::Reopen(..) | TStep::Yield => unreachable!(),
            }
        }
    }));
    // With requests pending: shutdown cancels what was queued and waits for
    // what was submitted.
    drop(rt);
    drop((kept, tfiles, tr, tw, handle));
}

fn run_program(driver: Driver, program: &Program, paths: Paths) {
    let mut model = Model::new(driver == Driver::Kernel, paths);
    let mut world = World::new(&mut model, program.socket);
    for (i, phase) in program.phases.iter().enumerate() {
        let what = format!("{driver:?} phase {i}");
        match phase {
            Phase::Sync { depth, steps } => {
                run_sync(&mut model, &mut world, driver, *depth, steps, &what)
            }
            Phase::Tokio { multi, steps } => {
                run_tokio(&mut model, &mut world, driver, *multi, steps, &what)
            }
        }
        world.end_stream_phase(&mut model, &what);
        model.check_files();
    }
}

/// Runs `program` on a thread of its own; fails if it panics or has not
/// returned after [`hang`] (the thread is then left behind).
fn check(driver: Driver, program: Program) -> Result<(), TestCaseError> {
    quiet_planned_panics();
    let paths = Paths::default();
    let theirs = paths.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = panic::catch_unwind(AssertUnwindSafe(|| run_program(driver, &program, theirs)));
        let _ = tx.send(r.map_err(|p| message(&*p)));
    });
    match rx.recv_timeout(hang()) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(TestCaseError::fail(msg)),
        Err(_) => {
            for p in paths.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = std::fs::remove_file(p);
            }
            Err(TestCaseError::fail(format!(
                "{driver:?}: the program did not finish within {:?} (hang)",
                hang()
            )))
        }
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("AIO_HOSTILE_CASES")
        .ok()
        .map(|v| v.parse().expect("AIO_HOSTILE_CASES: a number"))
        .unwrap_or(64);
    ProptestConfig {
        cases,
        failure_persistence: None,
        // A hang costs HANG per shrinking step.
        max_shrink_time: 600_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_programs_on_auto(program in program()) {
        check(Driver::Auto, program)?;
    }

    #[test]
    fn hostile_programs_on_kernel(program in program()) {
        check(Driver::Kernel, program)?;
    }

    #[test]
    fn hostile_programs_on_engine(program in program()) {
        check(Driver::Engine, program)?;
    }
}
