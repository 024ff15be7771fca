//! The contexts this library created, and the rule that lets several
//! threads reap one of them from user space.
//!
//! A process-wide table maps a context's address (the `io_context_t`, which
//! is the address of its `aio_ring`) to a [`Context`]. Only contexts in the
//! table are ever read from user space: anything else (a context made by a
//! direct system call, a destroyed one, garbage) goes to the kernel, which
//! validates it.
//!
//! # Reaping from several threads
//!
//! The kernel's `io_getevents` reads and advances `head` under a mutex of its
//! own that user space cannot take. So a user-space reader must never run
//! while a kernel read of the same ring may be in progress. Each context has
//! a small lock-protected state: `waiting` counts the threads currently
//! inside the wait system call for this context. A thread reaps the ring
//! only under the lock and only when `waiting == 0`; a thread that has to
//! wait increments `waiting` under the lock, drops the lock, enters the
//! kernel, and decrements `waiting` afterwards. While some thread waits in
//! the kernel, the others use the system call as well (which the kernel's
//! mutex makes safe, exactly as with the original libaio). The lock is never
//! held across a system call.
//!
//! # Lifetime
//!
//! `io_destroy` removes the context from the table, then marks it dead under
//! its lock before the ring is unmapped: a thread that already looked the
//! context up either finished its ring copy before that, or sees `dead` and
//! goes to the system call (which returns `EINVAL`).
//!
//! # fork
//!
//! A child process does not own its parent's contexts (the kernel answers
//! `EINVAL`). A `pthread_atfork` child handler bumps a generation counter
//! (no locks: the table's lock may have been held by a thread that does not
//! exist in the child), and contexts of an older generation are treated as
//! unknown.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Once, RwLock};

use aio_abi::{AioContext, IoEvent};
use aio_sys::RingView;

use crate::driver::Backend;

/// One context created through this library.
pub(crate) struct Context {
    /// The context id: the address of its ring.
    pub(crate) id: AioContext,
    /// Who serves it.
    pub(crate) backend: Backend,
    /// Capacity of the ring in events, 0 if it is not read from user space.
    pub(crate) ring_nr: u32,
    generation: u64,
    state: Mutex<State>,
    /// Events copied out of the ring in user space.
    pub(crate) ring_events: AtomicU64,
    /// Calls answered from the ring alone.
    pub(crate) ring_calls: AtomicU64,
    /// Calls that had to enter the kernel (or the engine) to wait.
    pub(crate) wait_calls: AtomicU64,
}

struct State {
    /// The ring reader; `None` once the context is dead.
    view: Option<RingView>,
    /// Threads inside the wait system call for this context.
    waiting: u32,
}

/// What [`Context::reap_or_wait`] decided.
pub(crate) enum Reaped<'a> {
    /// This many events were copied out of the ring, and they are enough.
    Done(usize),
    /// This many events (maybe 0) were copied out of the ring and the caller
    /// must wait in the system call for more, or the ring may not be read
    /// now (another thread is in the kernel's `io_getevents` for this
    /// context, ring reaping is off, or the context is dying) and the
    /// caller must use the system call for all of it. The caller is counted
    /// as waiting until the guard is dropped.
    Wait(usize, Waiting<'a>),
}

/// A thread counted in [`Context`]'s `waiting`: while one exists, no thread
/// reads the ring in user space.
pub(crate) struct Waiting<'a>(&'a Context);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl Context {
    /// A context for the ring at `id`.
    ///
    /// # Safety
    /// `id` must be a live context returned by `io_setup` of `backend`,
    /// whose ring stays mapped until [`remove`] has returned it and
    /// [`Context::kill`] has run.
    pub(crate) unsafe fn new(id: AioContext, backend: Backend) -> Context {
        let view = if ring_reaping_enabled() {
            // SAFETY: forwarded from the caller: the ring at `id` is mapped.
            // RingView checks the header and reaps through the system call
            // only if it does not recognise it.
            // The view reaps only in `reap_or_wait`, under the state lock
            // and while no thread of this library waits in the system call.
            unsafe { RingView::new(id) }
        } else {
            // SAFETY: the view's `get_events` is never called; the library
            // waits through `wait_in`.
            unsafe { RingView::syscall_only(id) }
        };
        Context {
            id,
            backend,
            ring_nr: view.capacity().unwrap_or(0),
            generation: GENERATION.load(Ordering::Acquire),
            state: Mutex::new(State {
                view: Some(view),
                waiting: 0,
            }),
            ring_events: AtomicU64::new(0),
            ring_calls: AtomicU64::new(0),
            wait_calls: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic cannot happen while the lock is held (the ring copy does
        // not panic), but a poisoned lock must not take the process down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies up to `out.len()` events out of the ring if it may be read
    /// now; if `enough(copied)` says they do not suffice (or the ring may
    /// not be read), registers the caller as waiting in the same critical
    /// section.
    pub(crate) fn reap_or_wait(
        &self,
        out: &mut [IoEvent],
        enough: impl FnOnce(usize) -> bool,
    ) -> Reaped<'_> {
        let mut st = self.lock();
        let mut n = 0;
        let readable = st.waiting == 0 && st.view.as_ref().is_some_and(RingView::is_mapped);
        if readable {
            if let Some(view) = st.view.as_mut() {
                n = view.try_reap(out);
            }
            if n > 0 {
                self.ring_events.fetch_add(n as u64, Ordering::Relaxed);
            }
            if enough(n) {
                return Reaped::Done(n);
            }
        }
        st.waiting += 1;
        self.wait_calls.fetch_add(1, Ordering::Relaxed);
        Reaped::Wait(n, Waiting(self))
    }

    /// Runs `wait` (a system call that reads the ring itself) with this
    /// thread counted as waiting, so no thread reaps in user space meanwhile.
    pub(crate) fn while_waiting<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.lock().waiting += 1;
        self.wait_calls.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(self);
        wait()
    }

    /// Marks the context dead: no thread reads its ring after this returns.
    pub(crate) fn kill(&self) {
        self.lock().view = None;
    }
}

/// `AIO_LIBAIO_RING_REAP=0` turns user-space reaping off: every
/// completion then comes through the wait system call, as with the original
/// libaio. For tools that do not see the kernel write the ring (valgrind).
fn ring_reaping_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("AIO_LIBAIO_RING_REAP").is_none_or(|v| v != "0"))
}

/// `io_context_t` values are page addresses: drop the page offset and mix.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Table = HashMap<AioContext, Arc<Context>, BuildHasherDefault<AddrHasher>>;

static TABLE: LazyLock<RwLock<Table>> = LazyLock::new(|| RwLock::new(Table::default()));

/// Bumped in a fork child; contexts remember the value they were made in.
static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

fn table_read() -> std::sync::RwLockReadGuard<'static, Table> {
    TABLE.read().unwrap_or_else(|e| e.into_inner())
}

fn table_write() -> std::sync::RwLockWriteGuard<'static, Table> {
    TABLE.write().unwrap_or_else(|e| e.into_inner())
}

/// Adds a new context to the table.
pub(crate) fn insert(ctx: Context) -> Arc<Context> {
    static ATFORK: Once = Once::new();
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic. The
        // return value is ignored: without the handler a fork child would
        // read its parent's rings, which the kernel maps into the child only
        // if they were not unmapped, and the kernel still rejects every
        // system call on them.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    let ctx = Arc::new(ctx);
    table_write().insert(ctx.id, Arc::clone(&ctx));
    ctx
}

/// What the table says about a context id.
pub(crate) enum Found {
    /// Created by this library in this process.
    Live(Arc<Context>),
    /// Created by this library in a parent process, before `fork`: the
    /// calling process does not own it.
    Inherited(Backend),
    /// Not created by this library.
    Unknown,
}

fn classify(ctx: Option<Arc<Context>>) -> Found {
    match ctx {
        None => Found::Unknown,
        Some(c) if c.generation == GENERATION.load(Ordering::Acquire) => Found::Live(c),
        Some(c) => Found::Inherited(c.backend),
    }
}

/// Looks `id` up.
pub(crate) fn find(id: AioContext) -> Found {
    if id == 0 {
        return Found::Unknown;
    }
    let ctx = table_read().get(&id).cloned();
    classify(ctx)
}

/// Removes `id` from the table (the first step of `io_destroy`) if this
/// process owns it; says what it was.
pub(crate) fn remove(id: AioContext) -> Found {
    if id == 0 {
        return Found::Unknown;
    }
    let mut table = table_write();
    match classify(table.get(&id).cloned()) {
        Found::Live(c) => {
            table.remove(&id);
            Found::Live(c)
        }
        other => other,
    }
}

/// Whether any live context is served by the engine (lets the kernel-only
/// paths skip the table).
pub(crate) fn any_engine() -> bool {
    ENGINE_CONTEXTS.load(Ordering::Relaxed) > 0
}

/// Live engine contexts.
pub(crate) static ENGINE_CONTEXTS: AtomicU64 = AtomicU64::new(0);
