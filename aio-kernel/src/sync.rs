//! A minimal spin lock: the core is `no_std` and holds its locks only for a
//! few loads and stores (never across a file operation or a wait).

use atomic::{AtomicBool, Ordering};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

/// The core's atomics: loom's under `--cfg loom`, whose model checks
/// (`src/loom.rs`) then explore every interleaving of the real code;
/// core's otherwise.
pub(crate) mod atomic {
    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering, fence,
    };
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering, fence,
    };
}

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one holder at a time, so
// sharing the lock is as safe as sending the value.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: owning the lock owns the value.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) fn new(value: T) -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins = spins.wrapping_add(1);
            relax(spins);
        }
        SpinGuard { lock: self }
    }
}

#[cfg(loom)]
fn relax(_spins: u32) {
    loom::thread::yield_now();
}

#[cfg(all(feature = "std", not(loom)))]
fn relax(spins: u32) {
    // A preempted holder would otherwise cost a whole time slice of spinning.
    if spins % 64 == 0 {
        std::thread::yield_now();
    } else {
        core::hint::spin_loop();
    }
}

#[cfg(not(any(feature = "std", loom)))]
fn relax(_spins: u32) {
    core::hint::spin_loop();
}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is held by us.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
