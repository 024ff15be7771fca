//! The worker pool: blocking I/O runs here, never in `io_submit`.
//!
//! Every job finishes its request, whatever happens to it: a job that
//! panics finishes it with `EIO` (and its worker goes on serving), and
//! jobs that no thread can run — a worker could not be started
//! (`std::thread::Builder::spawn` failed) and none is alive — finish
//! with `EAGAIN`, as `clone` fails. So `io_destroy`, which waits for
//! every request, always returns.

use std::boxed::Box;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use std::vec::Vec;

use aio_abi::Errno;

use crate::host::{Completion, IoStatus};

/// The result of a request whose job panicked.
const PANICKED: Errno = Errno::EIO;
/// The result of a request no worker could be started for.
const NO_THREAD: Errno = Errno::EAGAIN;

/// Finishes `done` with `e`; a panic in the completion path itself is
/// contained (the worker must survive it).
fn fail(done: &Completion, e: Errno) {
    let _ = catch_unwind(AssertUnwindSafe(|| done.finish(IoStatus::Error(e))));
}

/// Blocking work for a request, with the request's completion: the work
/// finishes it, or [`Job::run`] and [`Job::fail`] do.
pub(crate) struct Job {
    work: Box<dyn FnOnce(&Completion) + Send>,
    done: Completion,
}

impl Job {
    pub(crate) fn new(done: Completion, work: impl FnOnce(&Completion) + Send + 'static) -> Job {
        Job {
            work: Box::new(work),
            done,
        }
    }

    /// Runs the work; if it panics, the request fails with [`PANICKED`]
    /// (a request it had already finished keeps its event).
    fn run(self, inner: &Inner) {
        let Job { work, done } = self;
        let ran = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            inner.faults.panic_if_asked();
            #[cfg(not(test))]
            let _ = inner;
            work(&done)
        }));
        if ran.is_err() {
            fail(&done, PANICKED);
        }
    }

    fn fail(self, e: Errno) {
        fail(&self.done, e);
    }
}

/// A read that can start its device I/O without waiting for it (a buffered
/// read with `RWF_NOWAIT` starts the page cache's read and answers
/// `EAGAIN`) and be finished later.
pub(crate) trait Read: Send {
    /// Completes the read if it can without waiting (the first try starts
    /// the device's I/O); true when it is finished.
    fn try_finish(&mut self) -> bool;
    /// Completes the read, waiting as long as it takes.
    fn finish(&mut self);
    /// Completes the read with the error `e`, without reading.
    fn fail(&mut self, e: Errno);
}

/// A job for [`Pool::dispatch`].
pub(crate) enum Deferred {
    Run(Job),
    /// Runs after every job given earlier with the same lane (an inode:
    /// appends land in submission order).
    Ordered((u64, u64), Job),
    /// A read of a device (`st_dev`). A worker takes up to [`READ_BATCH`]
    /// queued reads of one device at once, starts them all and then waits
    /// for one at a time: a handful of workers sleep on the device instead
    /// of one per read. Each sleeper is a wake-up in the disk's interrupt
    /// (softirq) and two context switches; at depth 32 on a cold file
    /// those made the interrupts on the submitting CPU long enough to
    /// double the p99 of `io_submit`. (One device per batch: a read that
    /// completes behind an older one of its batch waits for it, which must
    /// not make a fast device wait for a slow one.)
    Read(u64, Box<dyn Read>),
}

/// The most reads one worker takes at once.
const READ_BATCH: usize = 8;

enum Queued {
    Run(Job),
    Read(u64, Box<dyn Read>),
    /// The first job of a lane; the lane's later ones follow it.
    Lane((u64, u64), Job),
}

struct State {
    jobs: VecDeque<Queued>,
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
    #[cfg(test)]
    faults: Faults,
}

/// Faults the tests inject: thread starts that fail, jobs that panic.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// Every worker start fails while set.
    pub(crate) fail_spawns: std::sync::atomic::AtomicBool,
    /// This many of the next jobs panic instead of running.
    pub(crate) panic_jobs: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Faults {
    fn spawn_fails(&self) -> bool {
        self.fail_spawns.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn panic_if_asked(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .panic_jobs
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("a job panics (injected by a test)");
        }
    }
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
            #[cfg(test)]
            faults: Faults::default(),
        }))
    }

    /// The faults a test may inject into this pool.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &Faults {
        &self.0.faults
    }

    /// Queues `jobs` under one lock and wakes one worker. An ordered job
    /// runs after every job given earlier with the same lane has finished;
    /// lanes run in parallel with each other and with the rest.
    pub(crate) fn dispatch(&self, jobs: impl IntoIterator<Item = Deferred>) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        let before = s.jobs.len();
        for job in jobs {
            match job {
                Deferred::Run(job) => s.jobs.push_back(Queued::Run(job)),
                Deferred::Read(dev, read) => s.jobs.push_back(Queued::Read(dev, read)),
                Deferred::Ordered(lane, job) => {
                    if let Some(waiting) = s.lanes.get_mut(&lane) {
                        // The lane's runner will get to it.
                        waiting.push_back(job);
                    } else {
                        s.lanes.insert(lane, VecDeque::new());
                        s.jobs.push_back(Queued::Lane(lane, job));
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
fn run_lane(inner: &Inner, lane: (u64, u64), first: Job) {
    first.run(inner);
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
        next.run(inner);
    }
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
            #[cfg(test)]
            if inner.faults.spawn_fails() {
                spawn_failed(inner);
                return;
            }
            let spawned = std::thread::Builder::new()
                .name("aio-engine-worker".into())
                .spawn(move || worker(worker_inner));
            if spawned.is_err() {
                spawn_failed(inner);
            }
        }
    }
}

/// A worker counted in `threads` could not be started. If no worker is
/// left to run the queued jobs, nothing ever would: they fail with
/// [`NO_THREAD`] (the next dispatch tries to start a worker again).
fn spawn_failed(inner: &Arc<Inner>) {
    let orphans: Vec<Queued> = {
        let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        s.threads -= 1;
        if s.threads > 0 {
            return;
        }
        s.jobs.drain(..).collect()
    };
    for queued in orphans {
        match queued {
            Queued::Run(job) => job.fail(NO_THREAD),
            Queued::Read(_, mut read) => read.fail(NO_THREAD),
            Queued::Lane(lane, first) => {
                first.fail(NO_THREAD);
                let rest = inner
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lanes
                    .remove(&lane)
                    .unwrap_or_default();
                for job in rest {
                    job.fail(NO_THREAD);
                }
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

/// Finishes `reads`, started or not: every one is tried without waiting
/// (which starts the device I/O of those not in the page cache), then the
/// oldest unfinished is waited for, and the rest tried again, until all
/// are done. A read that completes while the worker waits for an older
/// one is finished right after it.
///
/// A read whose call panics fails with [`PANICKED`].
fn run_reads(reads: &mut Vec<Box<dyn Read>>) {
    let try_finish = |r: &mut Box<dyn Read>| match catch_unwind(AssertUnwindSafe(|| r.try_finish()))
    {
        Ok(finished) => !finished,
        Err(_) => {
            r.fail(PANICKED);
            false
        }
    };
    reads.retain_mut(try_finish);
    while !reads.is_empty() {
        let mut oldest = reads.remove(0);
        if catch_unwind(AssertUnwindSafe(|| oldest.finish())).is_err() {
            oldest.fail(PANICKED);
        }
        reads.retain_mut(try_finish);
    }
}

fn worker(inner: Arc<Inner>) {
    yield_wakeup_preemption();
    let mut reads: Vec<Box<dyn Read>> = Vec::with_capacity(READ_BATCH);
    let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(first) = s.jobs.pop_front() {
            let job = match first {
                Queued::Run(job) => Some((None, job)),
                Queued::Lane(lane, job) => Some((Some(lane), job)),
                Queued::Read(dev, read) => {
                    reads.push(read);
                    while reads.len() < READ_BATCH {
                        match s.jobs.pop_front() {
                            Some(Queued::Read(d, read)) if d == dev => reads.push(read),
                            Some(other) => {
                                s.jobs.push_front(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    None
                }
            };
            let handoff = if s.jobs.is_empty() {
                Handoff::Nothing
            } else {
                pass_on(&inner, &mut s)
            };
            drop(s);
            hand_off(&inner, handoff);
            match job {
                Some((None, job)) => job.run(&inner),
                Some((Some(lane), job)) => run_lane(&inner, lane, job),
                None => run_reads(&mut reads),
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::vec;

    /// What happened to which read: "try", "wait" or "done".
    type Event = (&'static str, usize);

    /// A read that is ready once its number is in `ready`, and reports
    /// what happened to it.
    struct FakeRead {
        n: usize,
        ready: Arc<Mutex<Vec<usize>>>,
        log: mpsc::Sender<Event>,
    }

    impl Read for FakeRead {
        fn try_finish(&mut self) -> bool {
            let ready = self.ready.lock().unwrap().contains(&self.n);
            self.log.send(("try", self.n)).unwrap();
            if ready {
                self.log.send(("done", self.n)).unwrap();
            }
            ready
        }
        fn finish(&mut self) {
            self.log.send(("wait", self.n)).unwrap();
            self.log.send(("done", self.n)).unwrap();
        }
        fn fail(&mut self, _: Errno) {
            self.log.send(("failed", self.n)).unwrap();
        }
    }

    /// A completion that records how it was finished.
    struct Recorder(Mutex<Vec<IoStatus>>);

    impl crate::host::Resume for Recorder {
        fn resume(self: Arc<Self>, status: IoStatus) {
            self.0.lock().unwrap().push(status);
        }
    }

    fn recorder() -> (Arc<Recorder>, Completion) {
        let r = Arc::new(Recorder(Mutex::new(Vec::new())));
        (r.clone(), Completion(r))
    }

    fn fake_reads(count: usize, ready: &[usize]) -> (Vec<Box<dyn Read>>, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        let ready = Arc::new(Mutex::new(ready.to_vec()));
        let reads = (0..count)
            .map(|n| {
                Box::new(FakeRead {
                    n,
                    ready: ready.clone(),
                    log: tx.clone(),
                }) as Box<dyn Read>
            })
            .collect();
        (reads, rx)
    }

    #[test]
    fn reads_are_started_together_and_waited_for_oldest_first() {
        // 1 and 3 are in the page cache; 0, 2 and 4 must be waited for.
        let (mut reads, rx) = fake_reads(5, &[1, 3]);
        run_reads(&mut reads);
        assert!(reads.is_empty());
        let log: Vec<_> = rx.try_iter().collect();
        // Every read is tried before any is waited for.
        let first_wait = log.iter().position(|e| e.0 == "wait").unwrap();
        let tried: Vec<usize> = log[..first_wait]
            .iter()
            .filter(|e| e.0 == "try")
            .map(|e| e.1)
            .collect();
        assert_eq!(tried, vec![0, 1, 2, 3, 4]);
        let waited: Vec<usize> = log.iter().filter(|e| e.0 == "wait").map(|e| e.1).collect();
        assert_eq!(
            waited,
            vec![0, 2, 4],
            "the oldest unfinished first, hits never"
        );
        let mut done: Vec<usize> = log.iter().filter(|e| e.0 == "done").map(|e| e.1).collect();
        done.sort();
        assert_eq!(done, vec![0, 1, 2, 3, 4], "each finished exactly once");
    }

    /// Queues `reads` (of the devices given) on a pool of one worker, held
    /// busy until all are queued; returns the log once every read is done.
    fn queued_on_one_worker(
        reads: Vec<Box<dyn Read>>,
        devs: &[u64],
        rx: &mpsc::Receiver<Event>,
    ) -> Vec<Event> {
        let pool = Pool::new(1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (_, done) = recorder();
        pool.dispatch([Deferred::Run(Job::new(done, move |_| {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }))]);
        started_rx.recv().unwrap();
        let count = reads.len();
        pool.dispatch(
            reads
                .into_iter()
                .zip(devs)
                .map(|(r, &dev)| Deferred::Read(dev, r)),
        );
        release_tx.send(()).unwrap();
        let mut log = Vec::new();
        while log.iter().filter(|e: &&Event| e.0 == "done").count() < count {
            log.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        pool.shutdown();
        log
    }

    #[test]
    fn one_worker_takes_a_batch_of_queued_reads() {
        let (reads, rx) = fake_reads(READ_BATCH + 3, &[]);
        let log = queued_on_one_worker(reads, &[1; READ_BATCH + 3], &rx);
        // The first READ_BATCH are all tried before the first wait; the
        // rest form the next batch.
        let first_wait = log.iter().position(|e| e.0 == "wait").unwrap();
        assert_eq!(first_wait, READ_BATCH);
        assert_eq!(log[first_wait], ("wait", 0));
        let second_batch = log.iter().position(|e| *e == ("try", READ_BATCH)).unwrap();
        assert!(
            log[..second_batch].iter().filter(|e| e.0 == "done").count() == READ_BATCH,
            "the second batch starts after the first is done: {log:?}"
        );
    }

    #[test]
    fn a_batch_holds_reads_of_one_device() {
        let (reads, rx) = fake_reads(4, &[]);
        let log = queued_on_one_worker(reads, &[7, 7, 8, 7], &rx);
        let waits: Vec<usize> = log.iter().filter(|e| e.0 == "wait").map(|e| e.1).collect();
        assert_eq!(waits, [0, 1, 2, 3]);
        // 0 and 1 together; 2 (another device) alone; then 3.
        let first_wait = log.iter().position(|e| e.0 == "wait").unwrap();
        assert_eq!(&log[..first_wait], [("try", 0), ("try", 1)]);
        let third = log.iter().position(|e| *e == ("try", 2)).unwrap();
        assert_eq!(log[third + 1], ("wait", 2), "{log:?}");
    }

    #[test]
    fn jobs_no_worker_can_run_fail_with_eagain() {
        let pool = Pool::new(4);
        pool.faults()
            .fail_spawns
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (ran, done) = recorder();
        let (laned, lane_done) = recorder();
        let (tx, rx) = mpsc::channel();
        let (reads, _log) = fake_reads(1, &[]);
        pool.dispatch(
            [
                Deferred::Run(Job::new(done, |_| panic!("must not run"))),
                Deferred::Ordered((1, 1), Job::new(lane_done.clone(), |_| panic!("no"))),
                Deferred::Ordered((1, 1), Job::new(lane_done, |_| panic!("no"))),
            ]
            .into_iter()
            .chain(reads.into_iter().map(|r| Deferred::Read(1, r))),
        );
        assert_eq!(*ran.0.lock().unwrap(), [IoStatus::Error(Errno::EAGAIN)]);
        assert_eq!(
            *laned.0.lock().unwrap(),
            [
                IoStatus::Error(Errno::EAGAIN),
                IoStatus::Error(Errno::EAGAIN)
            ]
        );
        assert_eq!(_log.try_iter().collect::<Vec<_>>(), [("failed", 0)]);
        // Threads start again: jobs run.
        pool.faults()
            .fail_spawns
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let (_, done) = recorder();
        pool.dispatch([Deferred::Run(Job::new(done, move |_| tx.send(()).unwrap()))]);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        pool.shutdown();
    }

    #[test]
    fn a_panicking_job_fails_with_eio_and_its_worker_goes_on() {
        let pool = Pool::new(1);
        let (first, done) = recorder();
        let (tx, rx) = mpsc::channel();
        let (_, done2) = recorder();
        pool.dispatch([
            Deferred::Ordered((2, 2), Job::new(done, |_| panic!("a bug"))),
            Deferred::Ordered((2, 2), Job::new(done2, move |_| tx.send(()).unwrap())),
        ]);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(*first.0.lock().unwrap(), [IoStatus::Error(Errno::EIO)]);
        pool.shutdown();
    }
}
