//! Sleeping until a condition holds, and waking every sleeper: the
//! protocol behind [`Host::wait`](crate::Host::wait) and
//! [`Host::wake_all`](crate::Host::wake_all) for hosts with a futex.
//!
//! A waker bumps a generation word and, if anybody sleeps, wakes the
//! word's sleepers. A sleeper counts itself, reads the generation,
//! evaluates its condition, and sleeps only while the generation is still
//! the one it read. Each side's write and its read of the other's word
//! are separated by a sequentially consistent fence, so either the waker
//! sees the sleeper counted (and wakes it) or the sleeper reads the
//! bumped generation (and does not sleep, or the futex refuses to): no
//! wake-up between an evaluation and the sleep is lost. (Sequentially
//! consistent accesses alone would do in the C++ model; with the fences
//! the argument is one that loom, which treats such accesses as
//! acquire/release, checks too.)

use crate::host::WaitOutcome;
use crate::sync::atomic::{AtomicU32, Ordering, fence};

/// A futex word: the generation sleepers wait on.
pub(crate) trait Futex {
    /// The generation.
    fn load(&self) -> u32;
    /// Advances the generation (sequentially consistent).
    fn bump(&self);
    /// Sleeps unless the generation differs from `seen`, until woken, for
    /// at most `timeout_ns`; may return early for no reason.
    fn wait(&self, seen: u32, timeout_ns: Option<u64>) -> Slept;
    /// Wakes every sleeper.
    fn wake_all(&self);
}

/// How a [`Futex::wait`] ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Slept {
    /// Woken, timed out, refused (the generation moved) or spurious: the
    /// condition is evaluated again.
    Again,
    /// A signal handler ran.
    Interrupted,
}

pub(crate) struct Waker<F> {
    futex: F,
    /// Threads inside [`Waker::wait`]: wake-ups skip the futex call when 0.
    sleepers: AtomicU32,
}

impl<F: Futex> Waker<F> {
    pub(crate) fn new(futex: F) -> Self {
        Waker {
            futex,
            sleepers: AtomicU32::new(0),
        }
    }

    /// Makes every sleeper evaluate its condition again.
    pub(crate) fn wake_all(&self) {
        self.futex.bump();
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.futex.wake_all();
        }
    }

    /// Sleeps until `ready()` (evaluated first, and after every wake-up),
    /// the monotonic `deadline` as `now()` tells it, or a signal.
    pub(crate) fn wait(
        &self,
        deadline: Option<u64>,
        now: &dyn Fn() -> u64,
        ready: &mut dyn FnMut() -> bool,
    ) -> WaitOutcome {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let outcome = loop {
            let seen = self.futex.load();
            if ready() {
                break WaitOutcome::Ready;
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let t = now();
                    if t >= d {
                        break WaitOutcome::TimedOut;
                    }
                    Some(d - t)
                }
            };
            if self.futex.wait(seen, timeout) == Slept::Interrupted {
                // Like Linux's wait loop: the condition gets one more look.
                if ready() {
                    break WaitOutcome::Ready;
                }
                break WaitOutcome::Interrupted;
            }
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}
