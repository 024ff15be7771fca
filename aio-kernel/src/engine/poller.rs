//! One thread that waits in `poll(2)` for every file a request is waiting
//! on (POLL requests, and streams that were not ready), and wakes them.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use aio_abi::PollEvents;

use crate::host::PollWaiter;

/// Turns `poll(2)`'s revents into the key Linux's wake-up would carry.
pub(crate) type KeyFn = fn(PollEvents) -> PollEvents;

struct Reg {
    id: u64,
    key: KeyFn,
    fd: Arc<OwnedFd>,
    events: i16,
    waiter: PollWaiter,
}

pub(crate) struct Inner {
    regs: Mutex<Vec<Reg>>,
    /// Set when the engine goes away: the thread exits at its next wake-up.
    closing: std::sync::atomic::AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
    /// Whether the thread runs; the mutex makes one caller start it.
    started: std::sync::atomic::AtomicBool,
    starting: Mutex<()>,
    /// Tests: every start of the thread fails while set.
    #[cfg(test)]
    pub(crate) fail_start: std::sync::atomic::AtomicBool,
    /// An eventfd that interrupts the `poll` when the set changes.
    kick: OwnedFd,
}

#[derive(Clone)]
pub(crate) struct Poller(pub(crate) Arc<Inner>);

impl Poller {
    pub(crate) fn new() -> std::io::Result<Poller> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let kick = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(Poller(Arc::new(Inner {
            regs: Mutex::new(Vec::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            next_id: std::sync::atomic::AtomicU64::new(0),
            started: std::sync::atomic::AtomicBool::new(false),
            starting: Mutex::new(()),
            #[cfg(test)]
            fail_start: std::sync::atomic::AtomicBool::new(false),
            kick,
        })))
    }

    /// Starts the poll thread unless it runs; false if it cannot be
    /// started (the next call tries again).
    pub(crate) fn start(&self) -> bool {
        use std::sync::atomic::Ordering::{Acquire, Release};
        if self.0.started.load(Acquire) {
            return true;
        }
        let _one = self.0.starting.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.started.load(Acquire) {
            return true;
        }
        #[cfg(test)]
        if self.0.fail_start.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let inner = self.0.clone();
        let spawned = std::thread::Builder::new()
            .name("aio-engine-poll".into())
            .spawn(move || run(inner));
        if spawned.is_ok() {
            self.0.started.store(true, Release);
        }
        spawned.is_ok()
    }

    /// Wakes `waiter` when `fd` reports `events` (or an error); false if
    /// the poll thread cannot be started, and nothing will wake it.
    pub(crate) fn register(
        &self,
        fd: Arc<OwnedFd>,
        events: PollEvents,
        waiter: &PollWaiter,
        key: KeyFn,
    ) -> bool {
        if !self.start() {
            return false;
        }
        self.0
            .regs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reg {
                id: self
                    .0
                    .next_id
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                key,
                fd,
                events: events.0 as i16,
                waiter: waiter.clone(),
            });
        self.kick();
        true
    }

    /// Ends the poll thread (its waiters are all finished by then).
    pub(crate) fn shutdown(&self) {
        self.0
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.kick();
    }

    /// Makes the poll thread drop finished waiters now.
    pub(crate) fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.0.kick.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

fn run(inner: Arc<Inner>) {
    loop {
        if inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let snapshot: Vec<(Arc<OwnedFd>, i16, PollWaiter, u64, KeyFn)> = {
            let mut regs = inner.regs.lock().unwrap_or_else(|e| e.into_inner());
            regs.retain(|r| !r.waiter.is_done());
            regs.iter()
                .map(|r| (r.fd.clone(), r.events, r.waiter.clone(), r.id, r.key))
                .collect()
        };
        let mut pfds: Vec<libc::pollfd> = snapshot
            .iter()
            .map(|(fd, ev, _, _, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: *ev,
                revents: 0,
            })
            .collect();
        pfds.push(libc::pollfd {
            fd: inner.kick.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `pfds` is a live array of `pfds.len()` pollfds; the fds are
        // kept open by `snapshot`.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        let kick = pfds.pop().expect("kick fd");
        if kick.revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: reads 8 bytes into a live buffer from our eventfd.
            unsafe { libc::read(inner.kick.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
        for (pfd, (_, _, waiter, id, key)) in pfds.iter().zip(&snapshot) {
            if pfd.revents == 0 {
                continue;
            }
            if waiter.wake(key(PollEvents(pfd.revents as u16 as u32))) {
                let mut regs = inner.regs.lock().unwrap_or_else(|e| e.into_inner());
                regs.retain(|r| r.id != *id);
            }
        }
    }
}
