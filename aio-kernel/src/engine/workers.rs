//! The worker pool: blocking I/O runs here, never in `io_submit`.

use std::boxed::Box;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// A job for [`Pool::dispatch`].
pub(crate) enum Deferred {
    Run(Job),
    /// Runs after every job given earlier with the same lane (an inode:
    /// appends land in submission order).
    Ordered((u64, u64), Job),
}

struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    threads: usize,
    /// Set when the engine goes away: workers leave once the queue is empty.
    closing: bool,
    /// Jobs that must run one at a time, in order, per key; a key is here
    /// while a job of it is queued or running.
    lanes: HashMap<(u64, u64), VecDeque<Job>>,
}

struct Inner {
    state: Mutex<State>,
    cv: Condvar,
    max: usize,
}

/// Grows while every worker is busy (a blocked read must not starve the
/// others), up to `max`; idle workers above one retire after a while.
///
/// Whoever queues jobs wakes (or starts) one worker; a worker that takes a
/// job while more are queued wakes (or starts) the next before running its
/// own. So a batch of jobs costs its submitter one wake-up, and the
/// submitter never loses its CPU to more than one woken worker.
#[derive(Clone)]
pub(crate) struct Pool(Arc<Inner>);

impl Pool {
    pub(crate) fn new(max: usize) -> Pool {
        Pool(Arc::new(Inner {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: 0,
                threads: 0,
                closing: false,
                lanes: HashMap::new(),
            }),
            cv: Condvar::new(),
            max: max.max(1),
        }))
    }

    /// Queues `jobs` under one lock and wakes one worker. An ordered job
    /// runs after every job given earlier with the same lane has finished;
    /// lanes run in parallel with each other and with the rest.
    pub(crate) fn dispatch(&self, jobs: impl IntoIterator<Item = Deferred>) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.jobs.len();
        for job in jobs {
            match job {
                Deferred::Run(job) => s.jobs.push_back(job),
                Deferred::Ordered(lane, job) => {
                    if let Some(waiting) = s.lanes.get_mut(&lane) {
                        // The lane's runner will get to it.
                        waiting.push_back(job);
                    } else {
                        s.lanes.insert(lane, VecDeque::new());
                        s.jobs.push_back(lane_runner(self.0.clone(), lane, job));
                    }
                }
            }
        }
        if s.jobs.len() > before {
            let handoff = pass_on(&self.0, &mut s);
            drop(s);
            hand_off(&self.0, handoff);
        }
    }

    /// Lets every worker finish the queue and exit.
    pub(crate) fn shutdown(&self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closing = true;
        self.0.cv.notify_all();
    }
}

/// Runs `first`, then the lane's queued jobs until it is empty.
fn lane_runner(inner: Arc<Inner>, lane: (u64, u64), first: Job) -> Job {
    Box::new(move || {
        first();
        loop {
            let next = {
                let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                match s.lanes.get_mut(&lane).and_then(VecDeque::pop_front) {
                    Some(next) => next,
                    None => {
                        s.lanes.remove(&lane);
                        return;
                    }
                }
            };
            next();
        }
    })
}

/// What queued jobs need from whoever queued (or took) one.
#[must_use]
enum Handoff {
    Nothing,
    WakeIdle,
    /// Start a worker (already counted in `threads`).
    Start,
}

/// Decides, under the lock, how queued jobs get a worker: an idle one
/// woken, or a new one. The wake-up or the thread start happens after the
/// lock is released ([`hand_off`]): a futex wake or a `clone` under it made
/// every worker and the submitter wait for it.
fn pass_on(inner: &Inner, s: &mut State) -> Handoff {
    if s.idle > 0 {
        Handoff::WakeIdle
    } else if s.threads < inner.max {
        s.threads += 1;
        Handoff::Start
    } else {
        Handoff::Nothing
    }
}

/// Carries out [`pass_on`]'s decision, without the lock. A wake-up after
/// the unlock is not lost: the condvar's waiter registered before it
/// released the lock.
fn hand_off(inner: &Arc<Inner>, handoff: Handoff) {
    match handoff {
        Handoff::Nothing => {}
        Handoff::WakeIdle => inner.cv.notify_one(),
        Handoff::Start => {
            let worker_inner = inner.clone();
            let spawned = std::thread::Builder::new()
                .name("aio-engine-worker".into())
                .spawn(move || worker(worker_inner));
            if spawned.is_err() {
                inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .threads -= 1;
            }
        }
    }
}

/// Workers run as `SCHED_BATCH`: a worker woken by its I/O completing does
/// not preempt the thread running on its CPU (the scheduler's wake-up
/// preemption skips batch tasks), it runs at the next tick or when that
/// thread blocks, with the same share of CPU as before. Without this, the
/// submitting thread of a cold-cache workload spent a third of its time
/// runnable but preempted by workers (perf sched: 890 ms of 3 s), and its
/// `io_submit` calls inherited those delays.
fn yield_wakeup_preemption() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes the calling thread's policy; `param` is a live local.
    // Failure (a seccomp filter) only leaves the default policy.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
}

fn worker(inner: Arc<Inner>) {
    yield_wakeup_preemption();
    let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(job) = s.jobs.pop_front() {
            let handoff = if s.jobs.is_empty() {
                Handoff::Nothing
            } else {
                pass_on(&inner, &mut s)
            };
            drop(s);
            hand_off(&inner, handoff);
            job();
            s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        if s.closing {
            s.threads -= 1;
            return;
        }
        s.idle += 1;
        let (guard, timeout) = inner
            .cv
            .wait_timeout(s, Duration::from_secs(10))
            .unwrap_or_else(|e| e.into_inner());
        s = guard;
        s.idle -= 1;
        if timeout.timed_out() && s.jobs.is_empty() && s.threads > 1 {
            s.threads -= 1;
            return;
        }
    }
}
