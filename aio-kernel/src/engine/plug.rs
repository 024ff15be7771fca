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
//! would simply not be plugged.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::vec::Vec;

use super::file::EngineEventFd;
use super::workers::Deferred;
use crate::host::File;

struct Plug {
    /// The engine that started the plug (`Shared::id`).
    owner: usize,
    files: Vec<(i32, Arc<dyn File>)>,
    eventfds: Vec<(i32, Arc<EngineEventFd>)>,
    jobs: Vec<Deferred>,
    /// Eventfd signals owed, summed per eventfd.
    signals: Vec<(Arc<OwnedFd>, u64)>,
    /// Whether a completion asked to wake the engine's waiters.
    wake: bool,
}

std::thread_local! {
    static PLUG: RefCell<Option<Plug>> = const { RefCell::new(None) };
}

/// What a finished plug hands back to its engine.
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
        if p.is_none() {
            *p = Some(Plug {
                owner,
                files: Vec::new(),
                eventfds: Vec::new(),
                jobs: Vec::new(),
                signals: Vec::new(),
                wake: false,
            });
        }
    })
}

fn unplugged(p: Plug) -> Unplugged {
    Unplugged {
        jobs: p.jobs,
        signals: p.signals,
        wake: p.wake,
    }
}

/// Ends this thread's plug (if `owner`'s), handing back what it held.
pub(crate) fn finish(owner: usize) -> Option<Unplugged> {
    PLUG.with(|p| {
        let mut p = p.borrow_mut();
        if p.as_ref().is_some_and(|plug| plug.owner == owner) {
            p.take().map(unplugged)
        } else {
            None
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
        let plug = p.as_mut()?;
        (plug.owner == owner).then(|| f(plug))
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
