//! The contexts this library created, and the rule that lets several
//! threads reap one of them from user space.
//!
//! A process-wide table maps a context's address (the `io_context_t`, which
//! is the address of its `aio_ring`) to a [`Context`]. Only contexts in the
//! table are ever read from user space: anything else (a context made by a
//! direct system call, a destroyed one, garbage) goes to the kernel, which
//! validates it.
//!
//! # Reaping from several threads, and lifetime
//!
//! See `reaping.rs`: a thread reads a ring in user space only while no
//! thread of this library is in the wait system call for it, and never
//! after `io_destroy` marked it dead.
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
use std::sync::{Arc, LazyLock, Once, RwLock};

use aio_abi::{AioContext, IoEvent};
use aio_sys::RingView;

use crate::driver::Backend;
pub(crate) use crate::reaping::Reaped;
use crate::reaping::Reaping;

/// One context created through this library.
pub(crate) struct Context {
    /// The context id: the address of its ring.
    pub(crate) id: AioContext,
    /// Who serves it.
    pub(crate) backend: Backend,
    /// Capacity of the ring in events, 0 if it is not read from user space.
    pub(crate) ring_nr: u32,
    generation: u64,
    reaping: Reaping<RingView>,
    /// Events copied out of the ring in user space.
    pub(crate) ring_events: AtomicU64,
    /// Calls answered from the ring alone.
    pub(crate) ring_calls: AtomicU64,
    /// Calls that had to enter the kernel (or the engine) to wait.
    pub(crate) wait_calls: AtomicU64,
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
            reaping: Reaping::new(view),
            ring_events: AtomicU64::new(0),
            ring_calls: AtomicU64::new(0),
            wait_calls: AtomicU64::new(0),
        }
    }

    /// Copies up to `out.len()` events out of the ring if it may be read
    /// now; if `enough(copied)` says they do not suffice (or the ring may
    /// not be read), registers the caller as waiting in the same critical
    /// section (see [`Reaping::reap_or_wait`]).
    pub(crate) fn reap_or_wait(
        &self,
        out: &mut [IoEvent],
        enough: impl FnOnce(usize) -> bool,
    ) -> Reaped<'_, RingView> {
        let reaped = self.reaping.reap_or_wait(out, enough);
        let n = match &reaped {
            Reaped::Done(n) => *n,
            Reaped::Wait(n, _) => {
                self.wait_calls.fetch_add(1, Ordering::Relaxed);
                *n
            }
        };
        if n > 0 {
            self.ring_events.fetch_add(n as u64, Ordering::Relaxed);
        }
        reaped
    }

    /// Runs `wait` (a system call that reads the ring itself) with this
    /// thread counted as waiting, so no thread reaps in user space meanwhile.
    pub(crate) fn while_waiting<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.wait_calls.fetch_add(1, Ordering::Relaxed);
        self.reaping.while_waiting(wait)
    }

    /// Marks the context dead: no thread reads its ring after this returns.
    pub(crate) fn kill(&self) {
        self.reaping.kill();
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
