//! Every safe public function of the crate, called with arbitrary
//! arguments: context ids that are 0, small, addresses of mapped memory
//! (the stack, the heap, a page of a `Vec`, an inaccessible page), of
//! destroyed contexts and of live ones; arbitrary `min_nr`, lengths,
//! timeouts and iocb pointers. Each call must answer (an error or a
//! result), never crash, and never wait: timeouts given to a live context
//! are zero or short, so the test is fast and does not depend on timing.

#![cfg(feature = "std")]

mod support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aio_abi::{Errno, IoEvent, Iocb, PollEvents};
use aio_kernel::Kernel;
use aio_kernel::engine::{CacheGuess, Config, Engine, rw_flags_for_kernel};
use aio_kernel::sim::MockHost;
use proptest::prelude::*;

/// Where a context id (or an address handed to the engine) comes from.
#[derive(Clone, Debug)]
enum Addr {
    Zero,
    Small(u64),
    Raw(u64),
    Stack,
    Heap,
    VecPage,
    ProtNone,
    /// The n-th context this case set up (live or destroyed), plus an offset.
    Context(usize, u64),
    /// The n-th request this case submitted (for io_cancel).
    Request(usize),
}

#[derive(Clone, Debug)]
enum Timeout {
    Forever,
    Zero,
    /// Under a millisecond.
    Short(i64),
    /// Anything: negative, huge, out-of-range nanoseconds.
    Wild(i64, i64),
}

#[derive(Clone, Debug)]
enum Call {
    Setup(u32),
    SetupAt(u32, Addr),
    GetEvents(Addr, i64, usize, Timeout),
    PGetEvents(Addr, i64, usize, Timeout, bool),
    Cancel(Addr, Addr),
    AioNr,
    Global(Addr, i64, usize),
    RwFlags(u32, u32),
    Guess(u32, bool, Option<bool>),
    /// The core on the simulated host, with raw addresses.
    Sim(u64, i64, i64, u64, u64),
}

fn addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        Just(Addr::Zero),
        (1u64..0x10000).prop_map(Addr::Small),
        any::<u64>().prop_map(Addr::Raw),
        any::<u64>().prop_map(|a| Addr::Raw(a & !0xfff)),
        Just(Addr::Stack),
        Just(Addr::Heap),
        Just(Addr::VecPage),
        Just(Addr::ProtNone),
        (0usize..4, prop_oneof![Just(0u64), 1u64..8192]).prop_map(|(i, o)| Addr::Context(i, o)),
        (0usize..4, Just(0u64)).prop_map(|(i, o)| Addr::Context(i, o)),
        (0usize..4).prop_map(Addr::Request),
    ]
}

fn timeout() -> impl Strategy<Value = Timeout> {
    prop_oneof![
        Just(Timeout::Forever),
        Just(Timeout::Zero),
        (0i64..1_000_000).prop_map(Timeout::Short),
        (
            prop_oneof![
                any::<i64>(),
                -2i64..10,
                // Around KTIME_SEC_MAX, where seconds turn into "forever".
                9_223_372_030i64..9_223_372_040
            ],
            prop_oneof![any::<i64>(), -2i64..2_000_000_000, Just(i64::MAX)]
        )
            .prop_map(|(s, n)| Timeout::Wild(s, n)),
    ]
}

fn min_nr() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(1), -3i64..10, any::<i64>()]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        prop_oneof![0u32..300, any::<u32>()].prop_map(Call::Setup),
        (0u32..64, addr()).prop_map(|(n, a)| Call::SetupAt(n, a)),
        (addr(), min_nr(), 0usize..8, timeout())
            .prop_map(|(a, m, l, t)| Call::GetEvents(a, m, l, t)),
        (addr(), min_nr(), 0usize..8, timeout(), any::<bool>())
            .prop_map(|(a, m, l, t, s)| Call::PGetEvents(a, m, l, t, s)),
        (addr(), addr()).prop_map(|(c, i)| Call::Cancel(c, i)),
        Just(Call::AioNr),
        (addr(), min_nr(), 0usize..4).prop_map(|(a, m, l)| Call::Global(a, m, l)),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Call::RwFlags(a, b)),
        (any::<u32>(), any::<bool>(), any::<Option<bool>>())
            .prop_map(|(b, h, c)| Call::Guess(b, h, c)),
        (addr_bits(), min_nr(), min_nr(), addr_bits(), addr_bits())
            .prop_map(|(c, m, n, e, t)| Call::Sim(c, m, n, e, t)),
    ]
}

/// Stands for the simulated context's id.
const SIM_CTX: u64 = 0x5151_5000;

fn addr_bits() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        1u64..0x10000,
        Just(0x1000),
        Just(SIM_CTX),
        any::<u64>()
    ]
}

/// One case's memory and requests; dropped after the engine.
// Boxed: the engine holds their addresses while the vectors grow.
#[allow(clippy::vec_box)]
struct Scene {
    stack_like: [u8; 256],
    heap: Box<[u8; 256]>,
    pages: Vec<u8>,
    pipe: [OwnedFd; 2],
    iocbs: Vec<Box<Iocb>>,
    bufs: Vec<Box<[u8; 64]>>,
    contexts: Vec<u64>,
    live: Vec<u64>,
}

impl Scene {
    fn new() -> Scene {
        let mut p = [0i32; 2];
        // SAFETY: `p` has room for two fds.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: just created, owned here.
        let pipe = unsafe { [OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])] };
        Scene {
            stack_like: [0; 256],
            heap: Box::new([0; 256]),
            pages: vec![0; 3 * 4096],
            pipe,
            iocbs: Vec::new(),
            bufs: Vec::new(),
            contexts: Vec::new(),
            live: Vec::new(),
        }
    }

    fn resolve(&self, a: &Addr, stack: u64) -> u64 {
        match *a {
            Addr::Zero => 0,
            Addr::Small(n) => n,
            Addr::Raw(n) => n,
            Addr::Stack => stack,
            Addr::Heap => self.heap.as_ptr() as u64,
            Addr::VecPage => (self.pages.as_ptr() as u64).next_multiple_of(4096),
            Addr::ProtNone => support::prot_none_page(),
            Addr::Context(i, off) => self
                .contexts
                .get(i)
                .map_or(self.stack_like.as_ptr() as u64, |c| c.wrapping_add(off)),
            Addr::Request(i) => self.iocbs.get(i).map_or(0, |b| &**b as *const Iocb as u64),
        }
    }

    /// Submits a read of the (empty) pipe, which waits, and a POLL on it.
    fn seed(&mut self, engine: &Engine, ctx: u64) {
        let mut buf = Box::new([0u8; 64]);
        let rd = self.pipe[0].as_raw_fd();
        self.iocbs
            .push(Box::new(Iocb::pread(rd, buf.as_mut_ptr() as u64, 64, 0)));
        self.iocbs.push(Box::new(Iocb::poll(rd, PollEvents::IN)));
        self.bufs.push(buf);
        let n = self.iocbs.len();
        let ptrs: Vec<*const Iocb> = self.iocbs[n - 2..]
            .iter()
            .map(|b| &**b as *const Iocb)
            .collect();
        // SAFETY: the iocbs and the buffer are boxed in the scene, which
        // outlives the engine (whose drop ends every request).
        let r = unsafe { engine.io_submit(ctx, &ptrs) };
        assert_eq!(r, Ok(2));
    }
}

fn timespec(t: &Timeout, waits_allowed: bool) -> Option<libc::timespec> {
    let ts = |s, n| libc::timespec {
        tv_sec: s,
        tv_nsec: n,
    };
    match *t {
        _ if !waits_allowed && !matches!(t, Timeout::Zero | Timeout::Short(_)) => Some(ts(0, 0)),
        Timeout::Forever => None,
        Timeout::Zero => Some(ts(0, 0)),
        Timeout::Short(n) => Some(ts(0, n)),
        Timeout::Wild(s, n) => Some(ts(s, n)),
    }
}

fn run(calls: &[Call]) {
    let stack_probe = [0u8; 128];
    let stack = stack_probe.as_ptr() as u64;
    let mut scene = Scene::new();
    let engine = Engine::with_config(Config {
        aio_max_nr: 4096,
        ..Config::default()
    });
    let ctx = engine.io_setup(8).unwrap();
    scene.contexts.push(ctx);
    scene.live.push(ctx);
    scene.seed(&engine, ctx);
    let host = MockHost::new(2);
    // Simulated user memory at 0x1000: *ctxp, then room for events.
    assert!(host.mem.map(0x1000, 4096, true));
    let sim = Kernel::new(host.clone());
    sim.io_setup(4, 0x1000).unwrap();
    let mut id = [0u8; 8];
    host.mem.read(0x1000, &mut id).unwrap();
    let sim_ctx = u64::from_ne_bytes(id);
    for call in calls {
        match call {
            Call::Setup(n) => {
                if let Ok(c) = engine.io_setup(*n) {
                    scene.contexts.push(c);
                    scene.live.push(c);
                }
            }
            Call::SetupAt(n, a) => {
                let at = scene.resolve(a, stack);
                if let Ok(c) = engine.io_setup_at(*n, at) {
                    assert_eq!(c, at);
                    scene.contexts.push(c);
                    scene.live.push(c);
                }
            }
            Call::GetEvents(a, min_nr, len, t) | Call::PGetEvents(a, min_nr, len, t, _) => {
                let id = scene.resolve(a, stack);
                // A live context with min_nr > 0 may wait as long as it is
                // told: only zero and short timeouts there.
                let waits = !scene.live.contains(&id) || *min_nr <= 0;
                let ts = timespec(t, waits);
                let mut evs = vec![IoEvent::default(); *len];
                let r = match call {
                    Call::PGetEvents(.., mask) => {
                        // SAFETY: plain data, initialised by sigemptyset.
                        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
                        // SAFETY: `set` is a live sigset.
                        unsafe { libc::sigemptyset(&mut set) };
                        let sig = mask.then_some(&set);
                        engine.io_pgetevents(id, *min_nr, &mut evs, ts.as_ref(), sig)
                    }
                    _ => engine.io_getevents(id, *min_nr, &mut evs, ts.as_ref()),
                };
                match r {
                    Ok(n) => assert!(n <= *len && scene.live.contains(&id)),
                    Err(e) => assert!(
                        [Errno::EINVAL, Errno::EFAULT, Errno::EINTR].contains(&e),
                        "{e:?}"
                    ),
                }
            }
            Call::Cancel(c, i) => {
                let id = scene.resolve(c, stack);
                let iocb = scene.resolve(i, stack) as *const Iocb;
                let r = engine.io_cancel(id, iocb);
                assert!(
                    [Errno::EINVAL, Errno::EFAULT, Errno::EINPROGRESS].contains(&r.unwrap_err()),
                    "{r:?}"
                );
            }
            Call::AioNr => {
                let _ = engine.aio_nr();
            }
            Call::Global(a, min_nr, len) => {
                let id = scene.resolve(a, stack);
                let global = Engine::global();
                let mut evs = vec![IoEvent::default(); *len];
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // This case set up no context of the global engine (other
                // tests of this binary may have; a zero timeout never waits).
                let _ = global.io_getevents(id, *min_nr, &mut evs, Some(&zero));
                let _ = global.io_cancel(id, std::ptr::null());
                let _ = global.aio_nr();
            }
            Call::RwFlags(a, b) => {
                let _ = rw_flags_for_kernel(*a, *b);
            }
            Call::Guess(bits, hit, cached) => {
                let mut g = CacheGuess::from_bits(*bits);
                let _ = g.should_try(|| *cached);
                g.outcome(*hit);
                let _ = CacheGuess::from_bits(g.to_bits());
            }
            Call::Sim(c, min_nr, nr, events, ts) => {
                let c = if *c == SIM_CTX { sim_ctx } else { *c };
                let _ = sim.io_cancel(c, *events, 0);
                // The simulated host panics rather than sleep forever: a
                // live context gets a timeout or min_nr 0.
                let live = sim.contexts().contains(&c);
                if !live || *min_nr <= 0 || *ts != 0 {
                    let _ = sim.io_getevents(c, *min_nr, *nr, *events, *ts);
                }
                let _ = sim.io_submit(c, *nr, *events);
                let _ = sim.aio_nr();
            }
        }
        // Now and then a context goes (never the seeded one, whose
        // requests the scene's memory serves until the engine drops).
        if scene.live.len() > 3 {
            let c = scene.live.remove(1);
            // SAFETY: set up by this case; ids of destroyed contexts are
            // only ever passed to the safe calls under test.
            unsafe { engine.io_destroy(c) }.unwrap();
        }
    }
    drop(engine);
    drop(sim);
    drop(scene);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn safe_functions_answer_arbitrary_arguments(calls in proptest::collection::vec(call(), 1..24)) {
        run(&calls);
    }
}

/// The case every engine hit first: a bogus id and a zero timeout.
#[test]
fn a_bogus_id_is_einval_on_every_engine() {
    for engine in [&Engine::new(), Engine::global()] {
        let mut evs = [IoEvent::default(); 2];
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        assert_eq!(
            engine.io_getevents(0x1000, 1, &mut evs, Some(&zero)),
            Err(Errno::EINVAL)
        );
    }
}
