//! Every safe public function of aio-sys, and the `unsafe` context calls
//! under a contract this test keeps (no ring view reaps while they run),
//! called with arbitrary context ids (0, small numbers, addresses of this
//! test's own pages, a destroyed context's id, a live one), counts, lengths
//! and timeouts: they answer with errors, never crash, and never write
//! outside what they are given. Each call's memory lives in guarded pages
//! whose every byte is compared with a snapshot after the call.

use std::io::Write as _;
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::Duration;

use aio_sys::abi::{
    AIO_RING_COMPAT_FEATURES, AIO_RING_INCOMPAT_FEATURES, AIO_RING_MAGIC, AioContext, Errno,
    IoEvent, Iocb, Opcode, PollEvents, RING_HEADER_LEN, RwFlags,
};
use aio_sys::probe::{Capabilities, SetupFailure, Support, read_fs_sysctl, seccomp_mode};
use aio_sys::seccomp::{Refuse, refuse_aio};
use aio_sys::{
    RingView, io_cancel, io_destroy, io_getevents, io_pgetevents, io_setup, io_submit,
    page_cache_holds, timespec,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const PAGE: usize = 4096;
/// The byte every guarded page starts with.
const FILL: u8 = 0xa5;
/// Events that fit in one page.
const PAGE_EVENTS: usize = PAGE / size_of::<IoEvent>();

// The guarded pages, in order; the first and the last are only guards.
/// Starts like a ring header of context table index 0.
const FAKE_RING: usize = 1;
/// Starts with a copy of the live context's ring header.
const COPIED_RING: usize = 2;
/// Where the calls write events.
const EVENTS: usize = 3;
/// Iocbs handed to io_submit and io_cancel with made-up ids.
const IOCBS: usize = 4;
const PAGES: usize = 6;

/// Anonymous pages with known contents, and a snapshot to compare with.
struct Guarded {
    base: *mut u8,
    snapshot: Vec<u8>,
}

impl Guarded {
    fn new(live: AioContext, iocbs: &[Iocb]) -> Guarded {
        // SAFETY: a fresh anonymous mapping with no address hint.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                PAGES * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base.cast::<u8>();
        // SAFETY: the mapping is PAGES pages long and ours alone.
        unsafe { base.write_bytes(FILL, PAGES * PAGE) };
        let fake = [
            0,
            PAGE_EVENTS as u32 - 1,
            0,
            0,
            AIO_RING_MAGIC,
            AIO_RING_COMPAT_FEATURES,
            AIO_RING_INCOMPAT_FEATURES,
            RING_HEADER_LEN,
        ];
        // SAFETY: 32 bytes at the start of a page of the mapping; the live
        // ring is mapped (it was just set up) and its header is 32 bytes;
        // the iocbs fit in their page.
        unsafe {
            ptr::copy_nonoverlapping(fake.as_ptr().cast::<u8>(), base.add(FAKE_RING * PAGE), 32);
            ptr::copy_nonoverlapping(live as *const u8, base.add(COPIED_RING * PAGE), 32);
            assert!(size_of_val(iocbs) <= PAGE);
            ptr::copy_nonoverlapping(iocbs.as_ptr(), base.add(IOCBS * PAGE).cast(), iocbs.len());
        }
        // SAFETY: initialised bytes of the mapping.
        let snapshot = unsafe { std::slice::from_raw_parts(base, PAGES * PAGE) }.to_vec();
        Guarded { base, snapshot }
    }

    fn resnap(&mut self) {
        // SAFETY: initialised bytes of the mapping.
        self.snapshot = unsafe { std::slice::from_raw_parts(self.base, PAGES * PAGE) }.to_vec();
    }

    fn page(&self, i: usize) -> u64 {
        self.base as u64 + (i * PAGE) as u64
    }

    fn iocb(&self, i: usize) -> *mut Iocb {
        // SAFETY: within the iocb page.
        unsafe { self.base.add(IOCBS * PAGE).cast::<Iocb>().add(i) }
    }

    /// `len` events of the events page from event `at`.
    fn events(&mut self, at: usize, len: usize) -> &mut [IoEvent] {
        assert!(at + len <= PAGE_EVENTS);
        // SAFETY: within the events page, which only this slice refers to
        // while it lives (`&mut self`).
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.add(EVENTS * PAGE).cast::<IoEvent>().add(at),
                len,
            )
        }
    }

    /// Fails unless every byte outside `written` (events of the events
    /// page) equals the snapshot; then restores the snapshot.
    fn check(&self, written: Range<usize>) -> Result<(), TestCaseError> {
        let allowed = EVENTS * PAGE + written.start * 32..EVENTS * PAGE + written.end * 32;
        // SAFETY: initialised bytes of the mapping; no call is running.
        let now = unsafe { std::slice::from_raw_parts_mut(self.base, PAGES * PAGE) };
        let bad = (0..now.len()).find(|&i| !allowed.contains(&i) && now[i] != self.snapshot[i]);
        now.copy_from_slice(&self.snapshot);
        match bad {
            None => Ok(()),
            Some(i) => Err(TestCaseError::fail(format!(
                "byte {i} (page {}) was written",
                i / PAGE
            ))),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base.cast(), PAGES * PAGE) };
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: room for the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: just created, owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A context id as the test chooses it.
#[derive(Clone, Copy, Debug)]
enum Id {
    Zero,
    Small(u64),
    /// The address of one of the guarded pages.
    OwnPage(usize),
    /// An address inside one of them.
    InsideOwnPage(usize, u64),
    /// A context that was destroyed; its address is kept mapped by the
    /// test so that no new ring can take it.
    Destroyed,
    Max,
    Kernel,
    Any(u64),
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        Just(Id::Zero),
        (1u64..0x2000).prop_map(Id::Small),
        (0..PAGES).prop_map(Id::OwnPage),
        (0..PAGES, 1u64..PAGE as u64).prop_map(|(p, o)| Id::InsideOwnPage(p, o)),
        Just(Id::Destroyed),
        Just(Id::Max),
        Just(Id::Kernel),
        any::<u64>().prop_map(Id::Any),
    ]
}

fn timeout() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        Just(None),
        Just(Some(Duration::ZERO)),
        Just(Some(Duration::from_nanos(1))),
        Just(Some(Duration::from_millis(1))),
        Just(Some(Duration::MAX)),
    ]
}

/// `min_nr`: mostly small, sometimes anything.
fn min_nr() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..10, 1 => any::<usize>()]
}

/// A timeout that cannot make a call on a live context wait long.
fn short(t: Option<Duration>) -> Option<Duration> {
    Some(t.map_or(Duration::from_millis(1), |t| {
        t.min(Duration::from_millis(1))
    }))
}

/// A way to reap the live context.
#[derive(Clone, Copy, Debug)]
enum Reap {
    ViewTry,
    ViewGet,
    SyscallOnlyGet,
    GetEvents,
    PGetEvents,
}

fn reap() -> impl Strategy<Value = Reap> {
    prop_oneof![
        Just(Reap::ViewTry),
        Just(Reap::ViewGet),
        Just(Reap::SyscallOnlyGet),
        Just(Reap::GetEvents),
        Just(Reap::PGetEvents),
    ]
}

/// Everything the calls of one case get.
#[derive(Clone, Debug)]
struct Case {
    ctx: Id,
    min_nr: usize,
    at: usize,
    len: usize,
    timeout: Option<Duration>,
    sigmask: bool,
    setup_nr: u32,
    fd: usize,
    off: i64,
    byte_len: u64,
    polls: usize,
    reaps: Vec<(Reap, usize, usize, usize)>,
    duration: Duration,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            id(),
            min_nr(),
            0..PAGE_EVENTS - 8,
            0usize..=8,
            timeout(),
            any::<bool>(),
        ),
        prop_oneof![
            0u32..=64,
            65u32..=4096,
            Just(u32::MAX),
            Just(1 << 23),
            Just((1 << 22) + 1)
        ],
        (0usize..8, any::<i64>(), any::<u64>()),
        (
            0usize..6,
            proptest::collection::vec((reap(), 0usize..10, 0..PAGE_EVENTS - 8, 0usize..=8), 0..6),
        ),
        any::<(u64, u32)>(),
    )
        .prop_map(
            |(
                (ctx, min_nr, at, len, timeout, sigmask),
                setup_nr,
                (fd, off, byte_len),
                (polls, reaps),
                (secs, nanos),
            )| Case {
                ctx,
                min_nr,
                at,
                len,
                timeout,
                sigmask,
                setup_nr,
                fd,
                off,
                byte_len,
                polls,
                reaps,
                duration: Duration::new(secs, nanos % 1_000_000_000),
            },
        )
}

/// The live context, its ring view, and what the made-up ids are checked
/// against.
struct World {
    live: AioContext,
    view: RingView,
    destroyed: Option<AioContext>,
    mem: Guarded,
    file: std::fs::File,
    pipe: (OwnedFd, OwnedFd),
}

impl World {
    fn new() -> World {
        let live = io_setup(8).expect("io_setup");
        // SAFETY: `live` was just set up and is destroyed only in `Drop`,
        // after the last use of the view; every reaper in this test runs
        // on the test's thread, one call at a time.
        let view = unsafe { RingView::new(live) };
        assert!(view.is_mapped());
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0x11; 4096]).unwrap();
        let iocbs = [
            Iocb::pread(file.as_raw_fd(), 0, 64, 0),
            Iocb::pwrite(file.as_raw_fd(), 0, 64, 0),
            Iocb::poll(0, PollEvents::IN),
        ];
        let mem = Guarded::new(live, &iocbs);
        // The reads read into, the writes write from, the events page.
        // SAFETY: the iocbs are in the iocb page, not referred to elsewhere.
        unsafe {
            (*mem.iocb(0)).aio_buf = mem.page(EVENTS);
            (*mem.iocb(1)).aio_buf = mem.page(EVENTS);
        }
        // The snapshot includes the buffer addresses.
        let mut mem = mem;
        mem.resnap();
        World {
            live,
            view,
            destroyed: destroyed_and_pinned(),
            mem,
            file,
            pipe: pipe(),
        }
    }

    fn id(&self, id: Id) -> Option<AioContext> {
        Some(match id {
            Id::Zero => 0,
            Id::Small(n) => n,
            Id::OwnPage(p) => self.mem.page(p),
            Id::InsideOwnPage(p, o) => self.mem.page(p) + o,
            Id::Destroyed => self.destroyed?,
            Id::Max => u64::MAX,
            Id::Kernel => 0xffff_8880_0000_0000,
            Id::Any(n) => n,
        })
        .filter(|&id| id != self.live)
    }

    fn fd(&self, i: usize) -> RawFd {
        [
            -1,
            0,
            2,
            self.file.as_raw_fd(),
            self.pipe.0.as_raw_fd(),
            self.pipe.1.as_raw_fd(),
            999_999,
            i32::MIN,
        ][i]
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // SAFETY: the view is not used after this.
        let r = unsafe { io_destroy(self.live) };
        assert_eq!(r, Ok(()));
    }
}

/// A destroyed context's id, with a page of the test mapped at it (filled
/// with [`FILL`]) so that no later ring takes the address.
fn destroyed_and_pinned() -> Option<AioContext> {
    let ctx = io_setup(1).expect("io_setup");
    // SAFETY: no view of this context exists.
    assert_eq!(unsafe { io_destroy(ctx) }, Ok(()));
    // SAFETY: maps a fresh page only where nothing is mapped.
    let p = unsafe {
        libc::mmap(
            ctx as *mut libc::c_void,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p as u64 != ctx {
        eprintln!("the destroyed context's address was taken: not probed");
        return None;
    }
    // SAFETY: the page just mapped.
    unsafe { p.cast::<u8>().write_bytes(FILL, PAGE) };
    Some(ctx)
}

/// Whether the pinned page at a destroyed context's address is untouched.
fn pinned_intact(ctx: AioContext) -> bool {
    // SAFETY: the page mapped by `destroyed_and_pinned`, never unmapped.
    let page = unsafe { std::slice::from_raw_parts(ctx as *const u8, PAGE) };
    page.iter().all(|&b| b == FILL)
}

/// The calls with a context id that is not a live context: each is
/// `EINVAL`, and nothing is written.
fn made_up_id(w: &mut World, ctx: AioContext, c: &Case) -> Result<(), TestCaseError> {
    let out = w.mem.events(c.at, c.len);
    // SAFETY: no ring view of `ctx` exists (it is not a context).
    let r = unsafe { io_getevents(ctx, c.min_nr, out, c.timeout) };
    prop_assert_eq!(r, Err(Errno::EINVAL));
    w.mem.check(0..0)?;

    let mask = empty_sigset();
    let out = w.mem.events(c.at, c.len);
    let sig = c.sigmask.then_some(&mask);
    // SAFETY: as above.
    let r = unsafe { io_pgetevents(ctx, c.min_nr, out, c.timeout, sig) };
    prop_assert_eq!(r, Err(Errno::EINVAL));
    w.mem.check(0..0)?;

    // SAFETY: as above; the kernel rejects the id before it reads an iocb,
    // and a request it accepted could only touch the guarded pages.
    let r = unsafe { io_submit(ctx, &[w.mem.iocb(0), w.mem.iocb(1), w.mem.iocb(2)]) };
    prop_assert_eq!(r, Err(Errno::EINVAL));
    // SAFETY: as above.
    prop_assert_eq!(unsafe { io_submit(ctx, &[]) }, Err(Errno::EINVAL));
    w.mem.check(0..0)?;

    for i in 0..3 {
        // SAFETY: the iocb is readable; the kernel only reads it.
        let r = unsafe { io_cancel(ctx, w.mem.iocb(i)) };
        prop_assert_eq!(r, Err(Errno::EINVAL));
    }
    w.mem.check(0..0)?;

    // SAFETY: no view of `ctx` reaps.
    let mut view = unsafe { RingView::syscall_only(ctx) };
    prop_assert!(!view.is_mapped());
    prop_assert_eq!(view.capacity(), None);
    prop_assert_eq!(view.ready(), 0);
    prop_assert_eq!(view.context(), ctx);
    let out = w.mem.events(c.at, c.len);
    prop_assert_eq!(view.try_reap(out), 0);
    let r = view.get_events(c.min_nr, out, c.timeout);
    if c.min_nr == 0 || c.len == 0 {
        prop_assert_eq!(r, Ok(0));
    } else {
        prop_assert_eq!(r, Err(Errno::EINVAL));
    }
    w.mem.check(0..0)?;

    // SAFETY: no view of `ctx` reads a ring.
    prop_assert_eq!(unsafe { io_destroy(ctx) }, Err(Errno::EINVAL));
    w.mem.check(0..0)?;
    if let Some(d) = w.destroyed {
        prop_assert!(pinned_intact(d));
    }
    Ok(())
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        s
    }
}

/// A reaping call on the live context: `Ok(n)` events at the front of
/// `out`, or an error only when `min_nr` cannot be met by `out`.
fn checked(r: Result<usize, Errno>, min_nr: usize, len: usize) -> Result<usize, TestCaseError> {
    match r {
        Ok(n) => {
            prop_assert!(n <= len);
            Ok(n)
        }
        Err(e) => {
            prop_assert_eq!(e, Errno::EINVAL);
            prop_assert!(min_nr > len || min_nr > i64::MAX as usize);
            Ok(0)
        }
    }
}

/// The live context: arbitrary arguments, then `polls` requests reaped in
/// arbitrary ways; every event arrives once, and nothing but the events
/// returned is written.
fn live(w: &mut World, c: &Case) -> Result<(), TestCaseError> {
    let out = w.mem.events(c.at, c.len);
    // SAFETY: the view of `live` is not reaping during the call.
    let r = unsafe { io_getevents(w.live, c.min_nr, out, short(c.timeout)) };
    let n = checked(r, c.min_nr, c.len)?;
    prop_assert_eq!(n, 0, "nothing is in flight");
    w.mem.check(0..0)?;
    // SAFETY: the iocb is readable; it was never submitted.
    let r = unsafe { io_cancel(w.live, w.mem.iocb(2)) };
    prop_assert_eq!(r, Err(Errno::EINVAL));
    w.mem.check(0..0)?;

    let mut polls: Vec<Iocb> = (0..c.polls)
        .map(|i| Iocb::poll(w.pipe.1.as_raw_fd(), PollEvents::OUT).with_data(1000 + i as u64))
        .collect();
    let ptrs: Vec<*mut Iocb> = polls.iter_mut().map(|p| p as *mut Iocb).collect();
    // SAFETY: the iocbs live until their events are reaped below; polls
    // name no memory.
    let r = unsafe { io_submit(w.live, &ptrs) };
    prop_assert_eq!(r, if c.polls == 0 { Ok(0) } else { Ok(c.polls) });

    let mut seen = Vec::new();
    let drain = (Reap::GetEvents, 0, 0, PAGE_EVENTS);
    for &(how, min_nr, at, len) in c.reaps.iter().chain([&drain]) {
        let t = short(c.timeout);
        let out = w.mem.events(at, len.min(PAGE_EVENTS - at));
        let len = out.len();
        let n = match how {
            Reap::ViewTry => w.view.try_reap(out),
            Reap::ViewGet => checked(w.view.get_events(min_nr, out, t), min_nr, len)?,
            Reap::SyscallOnlyGet => {
                // SAFETY: the other view is not reaping during the call.
                let mut v = unsafe { RingView::syscall_only(w.live) };
                checked(v.get_events(min_nr, out, t), min_nr, len)?
            }
            Reap::GetEvents => {
                // SAFETY: the view is not reaping during the call.
                let r = unsafe { io_getevents(w.live, min_nr, out, t) };
                checked(r, min_nr, len)?
            }
            Reap::PGetEvents => {
                let mask = empty_sigset();
                // SAFETY: as above.
                let r = unsafe { io_pgetevents(w.live, min_nr, out, t, Some(&mask)) };
                checked(r, min_nr, len)?
            }
        };
        for e in &out[..n] {
            prop_assert_eq!(e.res, i64::from(libc::POLLOUT));
            seen.push(e.data);
        }
        w.mem.check(at..at + n)?;
    }
    seen.sort();
    let want: Vec<u64> = (0..c.polls as u64).map(|i| 1000 + i).collect();
    prop_assert_eq!(seen, want, "every event once");
    prop_assert_eq!(w.view.ready(), 0);
    Ok(())
}

/// The calls that take no context id.
fn no_context(w: &World, c: &Case) -> Result<(), TestCaseError> {
    match io_setup(c.setup_nr) {
        Ok(ctx) => {
            prop_assert_ne!(ctx, 0);
            // SAFETY: no view of the new context exists.
            prop_assert_eq!(unsafe { io_destroy(ctx) }, Ok(()));
        }
        Err(e) => prop_assert!(
            [Errno::EINVAL, Errno::EAGAIN, Errno::ENOMEM].contains(&e),
            "io_setup({}): {e:?}",
            c.setup_nr
        ),
    }
    let ts = timespec(c.duration);
    prop_assert!(ts.tv_sec >= 0 && (0..1_000_000_000).contains(&ts.tv_nsec));
    let held = page_cache_holds(w.fd(c.fd), c.off, c.byte_len);
    if c.fd == 3 {
        prop_assert!(held.is_some(), "cachestat answers for a file");
    }
    let f = SetupFailure::from_errno(Errno(c.off as i32));
    prop_assert_eq!(f.errno(), Errno(c.off as i32));
    prop_assert!(!f.advice().is_empty());
    w.mem.check(0..0)?;
    Ok(())
}

#[test]
fn safe_calls_with_arbitrary_arguments_fail_cleanly() {
    // `TestRunner::run` takes an `Fn`.
    let world = std::cell::RefCell::new(World::new());
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |c| {
            let w = &mut *world.borrow_mut();
            if let Some(ctx) = w.id(c.ctx) {
                made_up_id(w, ctx, &c)?;
            }
            live(w, &c)?;
            no_context(w, &c)
        })
        .unwrap();
    let w = world.borrow();
    w.mem.check(0..0).unwrap();
    if let Some(d) = w.destroyed {
        assert!(pinned_intact(d));
    }
}

#[test]
fn the_probe_and_its_helpers_take_any_argument() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let dirs: [Option<&Path>; 6] = [
        None,
        Some(Path::new("/nonexistent/aio-probe")),
        Some(Path::new("/proc")),
        Some(Path::new("/dev/shm")),
        Some(file.path()),
        Some(Path::new("")),
    ];
    for dir in dirs {
        let caps = aio_sys::probe(dir);
        assert_eq!(caps.setup, Ok(()));
        if caps.incomplete.is_none() {
            assert_eq!(caps.opcodes.len(), 8, "{dir:?}");
            assert_eq!(caps.rw_flags.len(), 9, "{dir:?}");
        }
        let _ = caps.supported_rw_flags();
    }
    let _ = seccomp_mode();
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    let name = prop_oneof![
        "[a-z_./-]{0,24}",
        "(\\.\\./){1,4}[a-z]{0,8}",
        Just("../../../dev/zero".to_owned()),
        Just("/dev/zero".to_owned()),
        Just("../../../proc/self/status".to_owned()),
    ];
    let caps = (
        proptest::collection::vec((any::<u16>(), any::<i32>(), any::<bool>()), 0..12),
        any::<u16>(),
        any::<i32>(),
    );
    runner
        .run(&(name, caps), |(name, (answers, op, flag))| {
            let _ = read_fs_sysctl(&name);
            let support = |e: i32, yes: bool| {
                if yes {
                    Support::Yes
                } else {
                    Support::No(Errno(e))
                }
            };
            let caps = Capabilities {
                kernel_release: String::new(),
                setup: Err(SetupFailure::from_errno(Errno(flag))),
                aio_nr: None,
                aio_max_nr: None,
                seccomp_mode: None,
                opcodes: answers
                    .iter()
                    .map(|&(o, e, y)| (Opcode(o), support(e, y)))
                    .collect(),
                rw_flags: answers
                    .iter()
                    .map(|&(o, e, y)| (RwFlags(i32::from(o)), support(e, y)))
                    .collect(),
                pgetevents: Support::Yes,
                incomplete: None,
            };
            let _ = caps.opcode(Opcode(op));
            let _ = caps.rw_flag(RwFlags(flag));
            let _ = caps.supported_rw_flags();
            Ok(())
        })
        .unwrap();
    assert_eq!(read_fs_sysctl("../../../dev/zero"), None);
    assert!(read_fs_sysctl("aio-max-nr").is_some());
}

/// The child's half of [`a_seccomp_filter_refuses_with_exactly_its_errno`]:
/// runs only when the parent sets `AIO_FUZZ_SECCOMP`.
#[test]
fn seccomp_child() {
    let Ok(arg) = std::env::var("AIO_FUZZ_SECCOMP") else {
        return;
    };
    let (all, errno) = arg.split_once(':').unwrap();
    let refuse = if all == "all" {
        Refuse::All
    } else {
        Refuse::Setup
    };
    let errno = Errno(errno.parse().unwrap());
    match refuse_aio(refuse, errno) {
        Err(_) => {
            // Nothing was installed.
            let ctx = io_setup(1).expect("io_setup without a filter");
            // SAFETY: no view of the context exists.
            assert_eq!(unsafe { io_destroy(ctx) }, Ok(()));
        }
        Ok(()) => {
            assert_eq!(io_setup(1), Err(errno), "io_setup under the filter");
            if refuse == Refuse::All {
                let mut ev = [IoEvent::default()];
                // SAFETY: no view reaps; 0 is not a context.
                let r = unsafe { io_getevents(0, 0, &mut ev, Some(Duration::ZERO)) };
                assert_eq!(r, Err(errno), "io_getevents under the filter");
                // SAFETY: 0 is not a context.
                assert_eq!(unsafe { io_destroy(0) }, Err(errno), "io_destroy");
            }
        }
    }
}

#[test]
fn a_seccomp_filter_refuses_with_exactly_its_errno() {
    let exe: PathBuf = std::env::current_exe().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let errno = prop_oneof![
        Just(0),
        Just(-1),
        1i32..200,
        Just(4095),
        Just(4096),
        Just(65_537),
        any::<i32>()
    ];
    runner
        .run(&(any::<bool>(), errno), |(all, errno)| {
            let arg = format!("{}:{errno}", if all { "all" } else { "setup" });
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "seccomp_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("AIO_FUZZ_SECCOMP", &arg)
                .output()
                .unwrap();
            prop_assert!(
                out.status.success(),
                "{arg}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        })
        .unwrap();
}
