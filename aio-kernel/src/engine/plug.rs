//! The engine's plug: what one `io_submit` call holds back and shares.
//!
//! Linux batches the block requests of one `io_submit` under a `blk_plug`.
//! The engine's costs are elsewhere, and the plug batches those: worker
//! jobs are queued under one lock with one wake-up at the end (a wake-up
//! per job made the submitter lose its CPU to each woken worker); eventfd
//! signals and waiter wake-ups of requests completed during the call are
//! summed into one `write` and one futex wake; and a descriptor named by
//! several iocbs is resolved (`dup`, `fstat`) once.
//!
//! The plug lives in a thread-local and belongs to one engine: a call into
//! another engine on the same thread (none happens inside `io_submit`)
//! would simply not be plugged. Its lists keep their memory between
//! calls: a submission allocates nothing for them once warm.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::vec::Vec;

use super::file::EngineEventFd;
use super::workers::Deferred;
use crate::host::File;

struct Plug {
    /// The engine that started the plug (`Shared::id`); `None` between
    /// calls.
    owner: Option<usize>,
    files: Vec<(i32, Arc<dyn File>)>,
    eventfds: Vec<(i32, Arc<EngineEventFd>)>,
    jobs: Vec<Deferred>,
    /// Eventfd signals owed, summed per eventfd.
    signals: Vec<(Arc<OwnedFd>, u64)>,
    /// Whether a completion asked to wake the engine's waiters.
    wake: bool,
}

std::thread_local! {
    static PLUG: RefCell<Plug> = const {
        RefCell::new(Plug {
            owner: None,
            files: Vec::new(),
            eventfds: Vec::new(),
            jobs: Vec::new(),
            signals: Vec::new(),
            wake: false,
        })
    };
}

/// What a finished plug hands back to its engine (and the engine to
/// [`recycle`]).
pub(crate) struct Unplugged {
    pub(crate) jobs: Vec<Deferred>,
    pub(crate) signals: Vec<(Arc<OwnedFd>, u64)>,
    pub(crate) wake: bool,
}

/// Starts a plug for `owner` on this thread, unless one is in place
/// (`io_submit` does not nest; the core ends every plug, even when
/// unwinding).
pub(crate) fn start(owner: usize) {
    PLUG.with(|p| {
        let mut p = p.borrow_mut();
        if p.owner.is_none() {
            p.owner = Some(owner);
        }
    })
}

/// Ends this thread's plug (if `owner`'s), handing back what it held.
pub(crate) fn finish(owner: usize) -> Option<Unplugged> {
    PLUG.with(|p| {
        let mut p = p.borrow_mut();
        if p.owner != Some(owner) {
            return None;
        }
        p.owner = None;
        p.files.clear();
        p.eventfds.clear();
        Some(Unplugged {
            jobs: std::mem::take(&mut p.jobs),
            signals: std::mem::take(&mut p.signals),
            wake: std::mem::take(&mut p.wake),
        })
    })
}

/// Gives the emptied lists of an [`Unplugged`] back to this thread's
/// plug, for the next call.
pub(crate) fn recycle(mut held: Unplugged) {
    held.jobs.clear();
    held.signals.clear();
    PLUG.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if p.jobs.capacity() == 0 {
                p.jobs = held.jobs;
            }
            if p.signals.capacity() == 0 {
                p.signals = held.signals;
            }
        }
    })
}

/// Runs `f` on this thread's plug if `owner` holds it; `None` otherwise.
fn with<R>(owner: usize, f: impl FnOnce(&mut Plug) -> R) -> Option<R> {
    PLUG.with(|p| {
        // `try_borrow_mut`: a destructor run inside a plug operation (a
        // dropped file closing its descriptor) never re-enters, but if it
        // did it would just go unplugged.
        let mut p = p.try_borrow_mut().ok()?;
        (p.owner == Some(owner)).then(|| f(&mut p))
    })
}

/// Holds `job` back if this thread is inside `owner`'s `io_submit`.
pub(crate) fn defer(owner: usize, job: Deferred) -> Result<(), Deferred> {
    let mut job = Some(job);
    match with(owner, |p| p.jobs.push(job.take().expect("once"))) {
        Some(()) => Ok(()),
        None => Err(job.take().expect("not taken")),
    }
}

/// Counts a signal of `efd` to be written when the plug ends; false if
/// not plugged (the caller signals now).
pub(crate) fn defer_signal(owner: usize, efd: &Arc<OwnedFd>) -> bool {
    with(owner, |p| {
        match p.signals.iter_mut().find(|(e, _)| Arc::ptr_eq(e, efd)) {
            Some((_, n)) => *n += 1,
            None => p.signals.push((efd.clone(), 1)),
        }
    })
    .is_some()
}

/// Notes a wake-up of waiters to make when the plug ends; false if not
/// plugged (the caller wakes now).
pub(crate) fn defer_wake(owner: usize) -> bool {
    with(owner, |p| p.wake = true).is_some()
}

/// The file this call already resolved for `fd`, if any.
pub(crate) fn file(owner: usize, fd: i32) -> Option<Arc<dyn File>> {
    with(owner, |p| of_fd(&p.files, fd)).flatten()
}

/// Remembers `fd`'s file for the rest of the call.
pub(crate) fn keep_file(owner: usize, fd: i32, file: &Arc<dyn File>) {
    with(owner, |p| p.files.push((fd, file.clone())));
}

/// The eventfd this call already resolved for `fd`, if any.
pub(crate) fn eventfd(owner: usize, fd: i32) -> Option<Arc<EngineEventFd>> {
    with(owner, |p| of_fd(&p.eventfds, fd)).flatten()
}

/// Remembers `fd`'s eventfd for the rest of the call.
pub(crate) fn keep_eventfd(owner: usize, fd: i32, efd: &Arc<EngineEventFd>) {
    with(owner, |p| p.eventfds.push((fd, efd.clone())));
}

fn of_fd<T: Clone>(list: &[(i32, T)], fd: i32) -> Option<T> {
    list.iter().find(|(f, _)| *f == fd).map(|(_, t)| t.clone())
}
