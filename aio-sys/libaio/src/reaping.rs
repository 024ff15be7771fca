//! The rule that lets several threads reap one context from user space.
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
//! `io_destroy` marks the context dead ([`Reaping::kill`]) under the same
//! lock before the ring is unmapped: a thread that already looked the
//! context up either finished its ring copy before that, or sees it dead
//! and goes to the system call (which returns `EINVAL`).
//!
//! Under `--cfg loom` the lock is loom's, and the model check at the end of
//! this file runs these functions against a kernel read and an unmap.

use aio_abi::IoEvent;
use aio_sys::RingView;

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// A user-space reader of one ring.
pub(crate) trait RingReader {
    /// Copies up to `out.len()` events out of the ring, advancing `head`.
    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize;
    /// Whether the ring may be read from user space at all.
    fn readable(&self) -> bool;
}

impl RingReader for RingView {
    fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
        RingView::try_reap(self, out)
    }
    fn readable(&self) -> bool {
        self.is_mapped()
    }
}

/// The reaping state of one context.
pub(crate) struct Reaping<R> {
    state: Mutex<State<R>>,
}

struct State<R> {
    /// The ring reader; `None` once the context is dead.
    view: Option<R>,
    /// Threads inside the wait system call for this context.
    waiting: u32,
}

/// What [`Reaping::reap_or_wait`] decided.
pub(crate) enum Reaped<'a, R> {
    /// This many events were copied out of the ring, and they are enough.
    Done(usize),
    /// This many events (maybe 0) were copied out of the ring and the caller
    /// must wait in the system call for more, or the ring may not be read
    /// now (another thread is in the kernel's `io_getevents` for this
    /// context, ring reaping is off, or the context is dying) and the
    /// caller must use the system call for all of it. The caller is counted
    /// as waiting until the guard is dropped.
    Wait(usize, Waiting<'a, R>),
}

/// A thread counted in `waiting`: while one exists, no thread reads the
/// ring in user space.
pub(crate) struct Waiting<'a, R>(&'a Reaping<R>);

impl<R> Drop for Waiting<'_, R> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl<R: RingReader> Reaping<R> {
    pub(crate) fn new(view: R) -> Reaping<R> {
        Reaping {
            state: Mutex::new(State {
                view: Some(view),
                waiting: 0,
            }),
        }
    }

    /// Copies up to `out.len()` events out of the ring if it may be read
    /// now; if `enough(copied)` says they do not suffice (or the ring may
    /// not be read), registers the caller as waiting in the same critical
    /// section.
    pub(crate) fn reap_or_wait(
        &self,
        out: &mut [IoEvent],
        enough: impl FnOnce(usize) -> bool,
    ) -> Reaped<'_, R> {
        let mut st = self.lock();
        let mut n = 0;
        let readable = st.waiting == 0 && st.view.as_ref().is_some_and(R::readable);
        if readable {
            if let Some(view) = st.view.as_mut() {
                n = view.try_reap(out);
            }
            if enough(n) {
                return Reaped::Done(n);
            }
        }
        st.waiting += 1;
        Reaped::Wait(n, Waiting(self))
    }

    /// Runs `wait` (a system call that reads the ring itself) with this
    /// thread counted as waiting, so no thread reaps in user space meanwhile.
    pub(crate) fn while_waiting<T>(&self, wait: impl FnOnce() -> T) -> T {
        self.lock().waiting += 1;
        let _waiting = Waiting(self);
        wait()
    }

    /// Marks the context dead: no thread reads its ring after this returns.
    pub(crate) fn kill(&self) {
        self.lock().view = None;
    }
}

impl<R> Reaping<R> {
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        // A panic cannot happen while the lock is held (the ring copy does
        // not panic), but a poisoned lock must not take the process down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `RUSTFLAGS="--cfg loom" cargo test -p aio-libaio --release --lib loom`
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// A ring: its consumer state (`head`), which the kernel's
    /// `io_getevents` advances under a lock of its own and a user-space
    /// reaper under none, and its mapping, which `io_destroy` unmaps.
    /// loom reports any two accesses to either that are not ordered.
    struct Ring {
        head: UnsafeCell<u32>,
        mapping: UnsafeCell<bool>,
        kernel_lock: loom::sync::Mutex<()>,
        events: loom::sync::atomic::AtomicU32,
    }

    impl Ring {
        /// The kernel's `io_getevents`: one event, under its own mutex.
        fn kernel_read(&self) -> usize {
            let _k = self.kernel_lock.lock().unwrap();
            self.head.with_mut(|h| {
                // SAFETY: loom checks this access against the others.
                unsafe { *h += 1 }
            });
            1
        }

        /// `io_destroy`'s unmap.
        fn unmap(&self) {
            self.mapping.with_mut(|m| {
                // SAFETY: as above.
                unsafe { *m = false }
            });
        }
    }

    struct Reader(Arc<Ring>);

    impl RingReader for Reader {
        fn try_reap(&mut self, out: &mut [IoEvent]) -> usize {
            self.0.mapping.with(|m| {
                // SAFETY: as above.
                assert!(unsafe { *m }, "read after unmap");
            });
            self.0.head.with_mut(|h| {
                // SAFETY: as above.
                unsafe { *h += 1 }
            });
            let _ = self
                .0
                .events
                .fetch_add(1, loom::sync::atomic::Ordering::Relaxed);
            out.len().min(1)
        }
        fn readable(&self) -> bool {
            true
        }
    }

    /// `io_getevents` as the library runs it: reap, and wait in the
    /// kernel behind the copied events if they are not enough.
    fn getevents(reaping: &Reaping<Reader>, ring: &Ring, enough: bool) {
        let mut out = [IoEvent::default(); 1];
        match reaping.reap_or_wait(&mut out, |_| enough) {
            Reaped::Done(_) => {}
            Reaped::Wait(_, _waiting) => {
                ring.kernel_read();
            }
        }
    }

    #[test]
    fn loom_user_space_reads_never_race_kernel_reads_or_the_unmap() {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(|| {
            let ring = Arc::new(Ring {
                head: UnsafeCell::new(0),
                mapping: UnsafeCell::new(true),
                kernel_lock: loom::sync::Mutex::new(()),
                events: loom::sync::atomic::AtomicU32::new(0),
            });
            let reaping = Arc::new(Reaping::new(Reader(ring.clone())));
            let threads: Vec<_> = [false, true]
                .into_iter()
                .map(|enough| {
                    let (reaping, ring) = (reaping.clone(), ring.clone());
                    loom::thread::spawn(move || {
                        getevents(&reaping, &ring, enough);
                        // A second call, through the system call only.
                        reaping.while_waiting(|| ring.kernel_read());
                    })
                })
                .collect();
            // io_destroy: out of the table, killed, then unmapped.
            reaping.kill();
            ring.unmap();
            for t in threads {
                t.join().unwrap();
            }
        });
    }
}
