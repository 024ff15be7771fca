//! The engine under concurrency: many submitters and reapers on one
//! context, destroy while others wait, eventfd integration.

#![cfg(feature = "std")]

mod support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aio_abi::{Errno, IoEvent, Iocb};
use aio_kernel::engine::Engine;
use support::{DATA_LEN, Fixture, Linux, Side, pattern};

#[test]
fn concurrent_submitters_and_reapers_lose_nothing() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 400;
    let engine = Arc::new(Engine::new());
    let fx = Arc::new(Fixture::new());
    let ctx = engine.io_setup(64).unwrap();
    let expected = pattern(DATA_LEN, 1);
    let reaped = Arc::new(AtomicUsize::new(0));
    let total = THREADS * PER_THREAD;

    let reapers: Vec<_> = (0..2)
        .map(|_| {
            let engine = engine.clone();
            let reaped = reaped.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while reaped.load(Ordering::SeqCst) < total {
                    let mut evs = [IoEvent::default(); 16];
                    let ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 20_000_000,
                    };
                    let n = engine.io_getevents(ctx, 1, &mut evs, Some(&ts)).unwrap();
                    reaped.fetch_add(n, Ordering::SeqCst);
                    seen.extend_from_slice(&evs[..n]);
                }
                seen
            })
        })
        .collect();

    let submitters: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = engine.clone();
            let fx = fx.clone();
            let reaped = reaped.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                let mut bufs = vec![[0u8; 64]; PER_THREAD];
                let iocbs: Vec<Iocb> = bufs
                    .iter_mut()
                    .enumerate()
                    .map(|(i, b)| {
                        let off = ((t * PER_THREAD + i) * 64) % (DATA_LEN - 64);
                        Iocb::pread(fx.data.as_raw_fd(), b.as_mut_ptr() as u64, 64, off as i64)
                            .with_data((t * PER_THREAD + i) as u64)
                    })
                    .collect();
                let mut next = 0;
                while next < PER_THREAD {
                    let end = (next + 8).min(PER_THREAD);
                    let ptrs: Vec<*const Iocb> =
                        iocbs[next..end].iter().map(|i| i as *const Iocb).collect();
                    // SAFETY: iocbs and buffers live until this thread has
                    // seen every event counted (the loop below waits).
                    match unsafe { engine.io_submit(ctx, &ptrs) } {
                        Ok(n) => next += n,
                        Err(Errno::EAGAIN) => std::thread::yield_now(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                // The buffers stay alive until every event has been reaped
                // (an event is posted only after its transfer finished).
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while reaped.load(Ordering::SeqCst) < total {
                    assert!(std::time::Instant::now() < deadline, "events missing");
                    std::thread::sleep(Duration::from_millis(1));
                }
                bufs.iter().enumerate().all(|(i, b)| {
                    let off = ((t * PER_THREAD + i) * 64) % (DATA_LEN - 64);
                    b[..] == expected[off..off + 64]
                })
            })
        })
        .collect();
    for s in submitters {
        assert!(s.join().unwrap(), "a buffer holds the wrong bytes");
    }
    let mut all: Vec<IoEvent> = reapers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    assert_eq!(all.len(), total);
    all.sort_by_key(|e| e.data);
    for (i, e) in all.iter().enumerate() {
        assert_eq!((e.data, e.res, e.res2), (i as u64, 64, 0));
    }
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

#[test]
fn destroy_wakes_a_waiting_reaper_with_einval() {
    let engine = EngineSide::new_arc();
    for side in [&Linux as &dyn Side, &**engine as &dyn Side] {
        if side.name() == "linux" && !support::linux_aio_available() {
            continue;
        }
        let mut ctx = 0u64;
        // SAFETY: `ctx` is a live u64.
        unsafe { side.setup(4, &mut ctx as *mut u64 as u64) }.unwrap();
        let waiter = {
            let ctx = ctx;
            let side_is_linux = side.name() == "linux";
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut evs = [IoEvent::default(); 1];
                let p = evs.as_mut_ptr() as u64;
                // SAFETY: `evs` has room for one event.
                unsafe {
                    if side_is_linux {
                        Linux.getevents(ctx, 1, 1, p, 0)
                    } else {
                        engine.getevents(ctx, 1, 1, p, 0)
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        side.destroy(ctx).unwrap();
        assert_eq!(
            waiter.join().unwrap(),
            Err(Errno::EINVAL),
            "{}",
            side.name()
        );
    }
}

#[test]
fn destroy_does_not_wait_for_an_empty_pipe() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(8).unwrap();
    let mut buf = [0u8; 8];
    let iocb = Iocb::pread(fx.pipe_r.as_raw_fd(), buf.as_mut_ptr() as u64, 8, 0);
    assert_eq!(
        // SAFETY: `iocb` and `buf` outlive the request: io_destroy ends it.
        unsafe { engine.io_submit(ctx, &[&iocb as *const Iocb]) },
        Ok(1)
    );
    let t0 = std::time::Instant::now();
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn eventfd_counts_completions_for_epoll_integration() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(8).unwrap();
    let mut bufs = [[0u8; 8]; 3];
    let efd = fx.efd.as_raw_fd();
    let iocbs: Vec<Iocb> = bufs
        .iter_mut()
        .map(|b| Iocb::pread(fx.data.as_raw_fd(), b.as_mut_ptr() as u64, 8, 0).with_eventfd(efd))
        .collect();
    let ptrs: Vec<*const Iocb> = iocbs.iter().map(|i| i as *const Iocb).collect();
    // SAFETY: iocbs and buffers outlive the requests (reaped below).
    assert_eq!(unsafe { engine.io_submit(ctx, &ptrs) }, Ok(3));
    let mut pfd = libc::pollfd {
        fd: efd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut count = 0;
    while count < 3 {
        // SAFETY: one live pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
        count += fx.take_efd();
    }
    assert_eq!(count, 3);
    let mut evs = [IoEvent::default(); 3];
    // Every signal came after its event was in the ring.
    assert_eq!(engine.io_getevents(ctx, 0, &mut evs, None), Ok(3));
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

/// An engine shared with a waiter thread.
struct EngineSide(support::EngineSide);

impl EngineSide {
    fn new_arc() -> Arc<EngineSide> {
        Arc::new(EngineSide(support::EngineSide::new()))
    }
}

impl std::ops::Deref for EngineSide {
    type Target = support::EngineSide;
    fn deref(&self) -> &support::EngineSide {
        &self.0
    }
}

/// The seed's bug with real I/O: a vectored write far larger than the pipe
/// stops part-way (short writes, then EAGAIN) many times and must resume at
/// the right byte of the right segment each time.
#[test]
fn vectored_pipe_write_resumes_at_the_right_byte() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(8).unwrap();
    // 40 segments of odd sizes, 300 KB in all: several pipe-fulls.
    let segs: Vec<Vec<u8>> = (0..40).map(|i| pattern(1000 + i * 397, i as u8)).collect();
    let iov: Vec<aio_abi::IoVec> = segs
        .iter()
        .map(|s| aio_abi::IoVec {
            iov_base: s.as_ptr() as u64,
            iov_len: s.len() as u64,
        })
        .collect();
    let want: Vec<u8> = segs.concat();
    let iocb = Iocb::pwritev(fx.pipe_w.as_raw_fd(), iov.as_ptr() as u64, 40, 0).with_data(7);
    assert_eq!(
        // SAFETY: `iocb`, `iov` and `segs` outlive the request (reaped below).
        unsafe { engine.io_submit(ctx, &[&iocb as *const Iocb]) },
        Ok(1)
    );
    // Read slowly, in small pieces, so the writer keeps stopping.
    let mut got = Vec::new();
    let mut buf = [0u8; 7000];
    while got.len() < want.len() {
        // SAFETY: reads into a live buffer from our pipe.
        let n = unsafe { libc::read(fx.pipe_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0);
        got.extend_from_slice(&buf[..n as usize]);
    }
    assert!(got == want, "bytes out of order or misplaced");
    let mut evs = [IoEvent::default(); 1];
    let ts = libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    assert_eq!(engine.io_getevents(ctx, 1, &mut evs, Some(&ts)), Ok(1));
    assert_eq!((evs[0].data, evs[0].res), (7, want.len() as i64));
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

#[test]
fn pgetevents_installs_the_mask_for_the_wait_only() {
    let engine = Engine::new();
    let ctx = engine.io_setup(1).unwrap();
    // SAFETY: sigset_t is plain data set up by sigemptyset/sigaddset; the
    // calls only touch these locals and this thread's mask.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGUSR2);
        let before = current_mask();
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        let mut evs = [IoEvent::default(); 1];
        assert_eq!(
            engine.io_pgetevents(ctx, 1, &mut evs, Some(&ts), Some(&mask)),
            Ok(0)
        );
        assert_eq!(
            libc::sigismember(&current_mask(), libc::SIGUSR2),
            libc::sigismember(&before, libc::SIGUSR2)
        );
    }
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

fn current_mask() -> libc::sigset_t {
    // SAFETY: reads this thread's mask into a zeroed local.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut cur);
        cur
    }
}

/// Linux gives appends their place at the end in submission order (each
/// takes the inode lock inside `io_submit`); the engine's workers must not
/// reorder them, with `O_APPEND` or with `RWF_APPEND`.
#[test]
fn appends_land_in_submission_order() {
    const N: usize = 256;
    let engine = Engine::new();
    let ctx = engine.io_setup(N as u32).unwrap();
    let dir = std::env::temp_dir();
    for rwf_append in [false, true] {
        let path = dir.join(format!(
            "aio-kernel-append-{}-{rwf_append}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .append(!rwf_append)
            .open(&path)
            .unwrap();
        // Records of very different lengths, so that workers finish out of
        // order if they may.
        let records: Vec<Vec<u8>> = (0..N)
            .map(|i| {
                vec![
                    i as u8;
                    if i % 8 == 0 {
                        256 << 10
                    } else {
                        1 + (i * 37) % 700
                    }
                ]
            })
            .collect();
        let iocbs: Vec<Iocb> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let iocb = Iocb::pwrite(file.as_raw_fd(), r.as_ptr() as u64, r.len() as u64, 0)
                    .with_data(i as u64);
                if rwf_append {
                    iocb.with_rw_flags(aio_abi::RwFlags::APPEND)
                } else {
                    iocb
                }
            })
            .collect();
        let ptrs: Vec<*const Iocb> = iocbs.iter().map(|c| c as *const Iocb).collect();
        // SAFETY: the iocbs and records live until every event is reaped.
        assert_eq!(unsafe { engine.io_submit(ctx, &ptrs) }, Ok(N));
        let mut evs = vec![IoEvent::default(); N];
        let mut got = 0;
        while got < N {
            got += engine.io_getevents(ctx, 1, &mut evs[got..], None).unwrap();
        }
        assert!(evs.iter().all(|e| e.res > 0), "{evs:?}");
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written, records.concat(), "rwf_append {rwf_append}");
        std::fs::remove_file(&path).unwrap();
    }
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

/// A batch completed inside `io_submit` signals its eventfd once per
/// request, all before the call returns (the plug sums them into one write).
#[test]
fn a_batch_completed_in_io_submit_signals_its_eventfd_once_per_request() {
    const N: usize = 8;
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(N as u32).unwrap();
    let mut bufs = [[0u8; 16]; N];
    let efd = fx.efd.as_raw_fd();
    // RWF_NOWAIT: the engine completes these inside io_submit, with data
    // or with EAGAIN, never on a worker.
    let iocbs: Vec<Iocb> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            Iocb::pread(
                fx.data.as_raw_fd(),
                b.as_mut_ptr() as u64,
                16,
                16 * i as i64,
            )
            .with_rw_flags(aio_abi::RwFlags::NOWAIT)
            .with_eventfd(efd)
            .with_data(i as u64)
        })
        .collect();
    let ptrs: Vec<*const Iocb> = iocbs.iter().map(|i| i as *const Iocb).collect();
    // SAFETY: iocbs and buffers outlive the requests (reaped below).
    assert_eq!(unsafe { engine.io_submit(ctx, &ptrs) }, Ok(N));
    assert_eq!(fx.take_efd(), N as u64);
    let mut evs = [IoEvent::default(); N];
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(engine.io_getevents(ctx, 0, &mut evs, Some(&zero)), Ok(N));
    assert_eq!(fx.take_efd(), 0);
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

/// Requests that block on workers, submitted in one batch, all run at once:
/// the pool grows (each worker that takes a job while more wait starts or
/// wakes the next) instead of queueing them behind the first. Each of 16
/// terminals gets its line in the reverse order of submission, and each
/// read must complete before the next line is written.
#[test]
fn a_batch_of_blocking_reads_runs_in_parallel() {
    const N: usize = 16;
    let engine = Engine::new();
    let ctx = engine.io_setup(N as u32).unwrap();
    let ptys: Vec<(std::fs::File, std::fs::File)> = (0..N).map(|_| open_pty()).collect();
    let mut bufs = [[0u8; 8]; N];
    let iocbs: Vec<Iocb> = bufs
        .iter_mut()
        .zip(&ptys)
        .enumerate()
        .map(|(i, (b, (_, slave)))| {
            Iocb::pread(slave.as_raw_fd(), b.as_mut_ptr() as u64, 8, 0).with_data(i as u64)
        })
        .collect();
    let ptrs: Vec<*const Iocb> = iocbs.iter().map(|i| i as *const Iocb).collect();
    // SAFETY: iocbs and buffers outlive the requests (reaped below).
    assert_eq!(unsafe { engine.io_submit(ctx, &ptrs) }, Ok(N));
    let five = libc::timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    for i in (0..N).rev() {
        use std::io::Write;
        (&ptys[i].0).write_all(format!("{i}\n").as_bytes()).unwrap();
        let mut ev = [IoEvent::default(); 1];
        assert_eq!(
            engine.io_getevents(ctx, 1, &mut ev, Some(&five)),
            Ok(1),
            "the read of terminal {i} never started"
        );
        assert_eq!(ev[0].data, i as u64);
        let line = format!("{i}\n");
        assert_eq!(ev[0].res, line.len() as i64);
        assert_eq!(&bufs[i][..line.len()], line.as_bytes());
    }
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
    // The workers run as SCHED_BATCH: their wake-ups do not preempt the
    // threads that submit.
    let mut workers = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != "aio-engine-work" {
            continue;
        }
        let tid: libc::pid_t = task.file_name().unwrap().to_str().unwrap().parse().unwrap();
        // SAFETY: plain query of a thread of ours (gone already: -1).
        let policy = unsafe { libc::sched_getscheduler(tid) };
        if policy >= 0 {
            assert_eq!(policy, libc::SCHED_BATCH, "worker {tid}");
            workers += 1;
        }
    }
    assert!(workers >= N, "{workers} workers");
}

/// A pseudo-terminal: (master, slave), the slave in canonical mode (a read
/// blocks until a line arrives).
fn open_pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain calls on a fresh master fd; results checked.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0);
        let master = std::fs::File::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(s >= 0);
        (master, std::fs::File::from_raw_fd(s))
    }
}

/// `io_submit_trusted` reads the iocbs and iovec arrays directly and writes
/// the key: a vectored write and read back through it, with the keys the
/// caller left in the iocbs overwritten as Linux does.
#[test]
fn trusted_submission_reads_iovecs_and_writes_keys() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(4).unwrap();
    let mut parts = [pattern(1000, 7), pattern(3000, 8), pattern(96, 9)];
    let iov = iovecs(&mut parts);
    let mut write = Iocb::pwritev(fx.data.as_raw_fd(), iov.as_ptr() as u64, 3, 4096).with_data(1);
    write.aio_key = 0xdead;
    // SAFETY: the iocb, iovecs and data outlive the request (reaped below).
    assert_eq!(unsafe { engine.io_submit_trusted(ctx, &[&write]) }, Ok(1));
    assert_eq!(write.aio_key, 0);
    let mut ev = [IoEvent::default(); 1];
    assert_eq!(engine.io_getevents(ctx, 1, &mut ev, None), Ok(1));
    assert_eq!((ev[0].data, ev[0].res), (1, 4096));
    let mut back = [vec![0u8; 2048], vec![0u8; 2048]];
    let riov = iovecs(&mut back);
    let mut read = Iocb::preadv(fx.data.as_raw_fd(), riov.as_ptr() as u64, 2, 4096).with_data(2);
    read.aio_key = 0xbeef;
    // SAFETY: as above.
    assert_eq!(unsafe { engine.io_submit_trusted(ctx, &[&read]) }, Ok(1));
    assert_eq!(read.aio_key, 0);
    assert_eq!(engine.io_getevents(ctx, 1, &mut ev, None), Ok(1));
    assert_eq!((ev[0].data, ev[0].res), (2, 4096));
    assert_eq!(back.concat(), parts.concat());
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

/// A trusted call's eventfd is looked up once per number; a context set up
/// after the old eventfd was closed gets its own eventfd signalled, even
/// under the old one's number.
#[test]
fn trusted_submission_signals_the_eventfd_its_context_was_set_up_with() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let new_eventfd = || {
        // SAFETY: creates a descriptor we own from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: fresh, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let count = |fd: i32| {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a local.
        let r = unsafe { libc::read(fd, (&mut n as *mut u64).cast(), 8) };
        assert_eq!(r, 8);
        n
    };
    let read_one = |ctx, efd: i32| {
        let mut buf = vec![0u8; 512];
        let mut iov = iovecs(std::slice::from_mut(&mut buf));
        let read =
            Iocb::preadv(fx.data.as_raw_fd(), iov.as_mut_ptr() as u64, 1, 0).with_eventfd(efd);
        // SAFETY: the iocb, iovec and buffer outlive the request (reaped).
        assert_eq!(unsafe { engine.io_submit_trusted(ctx, &[&read]) }, Ok(1));
        let mut ev = [IoEvent::default(); 1];
        assert_eq!(engine.io_getevents(ctx, 1, &mut ev, None), Ok(1));
        assert_eq!(ev[0].res, 512);
    };
    let first = new_eventfd();
    let number = first.as_raw_fd();
    let ctx = engine.io_setup(4).unwrap();
    read_one(ctx, number);
    read_one(ctx, number);
    assert_eq!(count(number), 2);
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
    drop(first);
    // Another eventfd under the same number (the lowest free one, or moved
    // there).
    let mut second = new_eventfd();
    if second.as_raw_fd() != number {
        // SAFETY: `number` is free (closed above); dup3 puts the eventfd
        // there, and the OwnedFd made of it owns that copy.
        let moved = unsafe { libc::dup3(second.as_raw_fd(), number, libc::O_CLOEXEC) };
        assert_eq!(moved, number);
        // SAFETY: `number` is ours alone now.
        second = unsafe { OwnedFd::from_raw_fd(number) };
    }
    let ctx = engine.io_setup(4).unwrap();
    read_one(ctx, number);
    assert_eq!(count(second.as_raw_fd()), 1);
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

/// Contexts with an eventfd each, used in turn: each completion signals
/// its own context's eventfd (the engine remembers several).
#[test]
fn trusted_submissions_of_contexts_in_turn_signal_their_own_eventfds() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let contexts: Vec<(u64, OwnedFd)> = (0..10)
        .map(|_| {
            // SAFETY: creates a descriptor we own from here on.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            assert!(fd >= 0);
            // SAFETY: fresh, owned by nobody else.
            (engine.io_setup(4).unwrap(), unsafe {
                OwnedFd::from_raw_fd(fd)
            })
        })
        .collect();
    let mut buf = vec![0u8; 512];
    let mut iov = iovecs(std::slice::from_mut(&mut buf));
    for round in 0..3u64 {
        for (i, (ctx, efd)) in contexts.iter().enumerate() {
            for _ in 0..=i {
                let read = Iocb::preadv(fx.data.as_raw_fd(), iov.as_mut_ptr() as u64, 1, 0)
                    .with_eventfd(efd.as_raw_fd());
                // SAFETY: the iocb, iovec and buffer outlive the request.
                assert_eq!(unsafe { engine.io_submit_trusted(*ctx, &[&read]) }, Ok(1));
                let mut ev = [IoEvent::default(); 1];
                assert_eq!(engine.io_getevents(*ctx, 1, &mut ev, None), Ok(1));
            }
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into a local.
            let r = unsafe { libc::read(efd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
            assert_eq!((r, n), (8, i as u64 + 1), "context {i}, round {round}");
        }
    }
    for (ctx, _) in contexts {
        // SAFETY: this test set `ctx` up and uses it no more.
        unsafe { engine.io_destroy(ctx) }.unwrap();
    }
}

fn iovecs(bufs: &mut [Vec<u8>]) -> Vec<aio_abi::IoVec> {
    bufs.iter_mut()
        .map(|b| aio_abi::IoVec {
            iov_base: b.as_mut_ptr() as u64,
            iov_len: b.len() as u64,
        })
        .collect()
}

/// Context ids that name no context of the engine: unmapped, the stack,
/// the heap, a page of a `Vec`, a destroyed context's ring. The engine
/// answers `EINVAL` for each and never reads there.
fn bogus_ids(engine: &Engine) -> Vec<u64> {
    let on_stack = [0u8; 64];
    let on_heap = Box::new([0u8; 64]);
    let page = vec![0u8; 3 * 4096];
    let page_addr = (page.as_ptr() as u64).next_multiple_of(4096);
    let destroyed = engine.io_setup(4).unwrap();
    // SAFETY: this test made `destroyed` and nothing else uses it.
    unsafe { engine.io_destroy(destroyed) }.unwrap();
    vec![
        0,
        1,
        0x1000,
        support::prot_none_page(),
        on_stack.as_ptr() as u64,
        on_heap.as_ptr() as u64,
        page_addr,
        destroyed,
        !4095,
    ]
}

#[test]
fn safe_calls_on_bogus_contexts_are_einval() {
    let engine = Engine::new();
    let live = engine.io_setup(4).unwrap();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let iocb = Iocb::fsync(0);
    for id in bogus_ids(&engine) {
        let mut evs = [IoEvent::default(); 4];
        assert_eq!(
            engine.io_getevents(id, 0, &mut evs, Some(&zero)),
            Err(Errno::EINVAL),
            "{id:#x}"
        );
        assert_eq!(
            engine.io_pgetevents(id, 1, &mut evs, Some(&zero), None),
            Err(Errno::EINVAL),
            "{id:#x}"
        );
        assert_eq!(engine.io_cancel(id, &iocb), Err(Errno::EINVAL), "{id:#x}");
    }
    // Bad iocb pointers: EFAULT from the checked copy, never a read.
    for ptr in [0u64, 0x1000, support::prot_none_page(), u64::MAX - 3] {
        assert_eq!(
            engine.io_cancel(live, ptr as *const Iocb),
            Err(Errno::EFAULT),
            "{ptr:#x}"
        );
    }
    // SAFETY: made here, used by nobody else.
    unsafe { engine.io_destroy(live) }.unwrap();
}

#[test]
fn getevents_racing_with_destroy_never_touches_a_dead_ring() {
    let engine = Arc::new(Engine::new());
    for _ in 0..50 {
        let ctx = engine.io_setup(4).unwrap();
        let reaper = {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let mut evs = [IoEvent::default(); 4];
                loop {
                    match engine.io_getevents(ctx, 0, &mut evs, Some(&zero)) {
                        Ok(0) => std::thread::yield_now(),
                        Err(Errno::EINVAL) => return,
                        other => panic!("{other:?}"),
                    }
                }
            })
        };
        std::thread::yield_now();
        // SAFETY: made here; the reaper only asks for events (which this
        // contract allows: it ends with EINVAL).
        unsafe { engine.io_destroy(ctx) }.unwrap();
        reaper.join().unwrap();
    }
}

/// Writes `data` to a pipe.
fn write_fd(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: writes from a live buffer to our own fd.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}

/// Waits (at most 10 s) for one event.
fn one_event(engine: &Engine, ctx: u64) -> IoEvent {
    let mut evs = [IoEvent::default(); 1];
    let ts = libc::timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    assert_eq!(engine.io_getevents(ctx, 1, &mut evs, Some(&ts)), Ok(1));
    evs[0]
}

#[test]
fn cancel_ends_a_pipe_read_that_has_no_data() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(8).unwrap();
    let mut buf = [0u8; 8];
    let iocb = Iocb::pread(fx.pipe_r.as_raw_fd(), buf.as_mut_ptr() as u64, 8, 0).with_data(7);
    // SAFETY: `iocb` and `buf` outlive the request (its event is reaped).
    let submitted = unsafe { engine.io_submit(ctx, &[&iocb as *const Iocb]) };
    assert_eq!(submitted, Ok(1));
    // The writer is still open: the read waits, and is cancelled.
    assert_eq!(engine.io_cancel(ctx, &iocb), Err(Errno::EINPROGRESS));
    let ev = one_event(&engine, ctx);
    assert_eq!((ev.data, ev.res), (7, Errno::ECANCELED.as_res()));
    // Cancelled once: a second cancel finds nothing.
    assert_eq!(engine.io_cancel(ctx, &iocb), Err(Errno::EINVAL));
    // Data written afterwards stays in the pipe.
    write_fd(&fx.pipe_w, b"12345678");
    assert_eq!(fx.drain_pipe(), b"12345678");
    assert_eq!(buf, [0; 8]);
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

#[test]
fn a_read_that_moved_data_is_not_cancelled() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(8).unwrap();
    write_fd(&fx.pipe_w, b"abc");
    let mut buf = [0u8; 8];
    let iocb = Iocb::pread(fx.pipe_r.as_raw_fd(), buf.as_mut_ptr() as u64, 8, 0);
    // SAFETY: `iocb` and `buf` outlive the request (its event is reaped).
    let submitted = unsafe { engine.io_submit(ctx, &[&iocb as *const Iocb]) };
    assert_eq!(submitted, Ok(1));
    let ev = one_event(&engine, ctx);
    assert_eq!(ev.res, 3);
    assert_eq!(engine.io_cancel(ctx, &iocb), Err(Errno::EINVAL));
    assert_eq!(&buf[..3], b"abc");
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}

#[test]
fn destroy_cancels_a_pending_pipe_read_and_posts_its_event() {
    let engine = Engine::new();
    let fx = Fixture::new();
    let ctx = engine.io_setup(8).unwrap();
    let mut buf = [0u8; 8];
    let iocb = Iocb::pread(fx.pipe_r.as_raw_fd(), buf.as_mut_ptr() as u64, 8, 0)
        .with_eventfd(fx.efd.as_raw_fd());
    // SAFETY: `iocb` and `buf` outlive the request: io_destroy ends it.
    let submitted = unsafe { engine.io_submit(ctx, &[&iocb as *const Iocb]) };
    assert_eq!(submitted, Ok(1));
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
    // Its event was posted (the eventfd counts it) before destroy returned.
    assert_eq!(fx.take_efd(), 1);
    write_fd(&fx.pipe_w, b"later");
    assert_eq!(fx.drain_pipe(), b"later");
}

#[test]
fn cancel_racing_with_data_never_loses_bytes() {
    let engine = Arc::new(Engine::new());
    let fx = Arc::new(Fixture::new());
    let ctx = engine.io_setup(8).unwrap();
    let (mut cancelled, mut read) = (0, 0);
    for round in 0..300u32 {
        let data = round.to_ne_bytes();
        let mut buf = [0u8; 4];
        let iocb = Iocb::pread(fx.pipe_r.as_raw_fd(), buf.as_mut_ptr() as u64, 4, 0);
        // SAFETY: `iocb` and `buf` outlive the request (its event is
        // reaped below, in this iteration).
        let submitted = unsafe { engine.io_submit(ctx, &[&iocb as *const Iocb]) };
        assert_eq!(submitted, Ok(1));
        let writer = {
            let fx = fx.clone();
            std::thread::spawn(move || write_fd(&fx.pipe_w, &data))
        };
        if round % 2 == 0 {
            std::thread::yield_now();
        }
        let c = engine.io_cancel(ctx, &iocb);
        writer.join().unwrap();
        let ev = one_event(&engine, ctx);
        let left = fx.drain_pipe();
        if ev.res == Errno::ECANCELED.as_res() {
            assert_eq!(c, Err(Errno::EINPROGRESS));
            assert_eq!(left, data, "round {round}: the bytes stay in the pipe");
            cancelled += 1;
        } else {
            assert_eq!(c, Err(Errno::EINVAL), "round {round}");
            assert_eq!(ev.res, 4, "round {round}");
            assert_eq!(buf, data, "round {round}");
            assert!(left.is_empty());
            read += 1;
        }
    }
    // Both outcomes are legal; the test checks every round either way.
    eprintln!("{cancelled} cancelled, {read} read");
    // SAFETY: this test set `ctx` up and uses it no more.
    unsafe { engine.io_destroy(ctx) }.unwrap();
}
