//! Every bad input of the classic AIO test suites that user space can reach,
//! each with its exact errno, against the running kernel.

mod common;

use std::os::fd::AsRawFd;
use std::ptr;
use std::time::Duration;

use aio_sys::abi::{AioContext, AioSigset, Errno, IoEvent, Iocb, Opcode};
use aio_sys::{
    KERNEL_SIGSET_SIZE, io_cancel, io_destroy, io_getevents, io_getevents_raw, io_pgetevents_raw,
    io_setup, io_setup_raw, io_submit_raw,
};
use common::*;

/// A page mapped with `prot`, unmapped on drop.
struct Page(*mut libc::c_void);

impl Page {
    fn new(prot: libc::c_int) -> Page {
        // SAFETY: an anonymous private mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Page(p)
    }

    /// An address the kernel cannot read or write: a PROT_NONE page kept
    /// for the whole run. (A page mapped then unmapped was reused by other
    /// test threads' mappings, and a write from it succeeded.)
    fn inaccessible_addr() -> u64 {
        static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *PAGE.get_or_init(|| {
            let p = Page::new(libc::PROT_NONE);
            let addr = p.0 as u64;
            std::mem::forget(p);
            addr
        })
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: mapped in `new`, 4096 bytes.
        unsafe { libc::munmap(self.0, 4096) };
    }
}

const KERNEL_ADDR: u64 = 0xffff_8800_0000_0000;

fn setup_raw(nr: u32, ctxp: *mut AioContext) -> Result<(), Errno> {
    // SAFETY: the kernel validates `ctxp`; the tests pass only pointers to
    // locals or to their own pages.
    unsafe { io_setup_raw(nr, ctxp) }
}

fn submit_raw(ctx: AioContext, nr: libc::c_long, iocbpp: *mut *mut Iocb) -> Result<i64, Errno> {
    // SAFETY: the iocbs and buffers the tests pass are live, or bad on
    // purpose in a way the kernel detects (EFAULT) without touching ours.
    unsafe { io_submit_raw(ctx, nr, iocbpp) }
}

fn submit_one(ctx: &Ctx, iocb: &mut Iocb) -> Result<i64, Errno> {
    let mut p = iocb as *mut Iocb;
    submit_raw(ctx.0, 1, &mut p)
}

#[test]
fn io_setup_rejects_nonzero_ctx_and_bad_counts() {
    let mut ctx: AioContext = 1;
    assert_eq!(setup_raw(1, &mut ctx), Err(Errno::EINVAL));
    let mut ctx: AioContext = 0;
    assert_eq!(setup_raw(0, &mut ctx), Err(Errno::EINVAL));
    assert_eq!(setup_raw(u32::MAX, &mut ctx), Err(Errno::EINVAL));
    assert_eq!(ctx, 0, "no context may be written on failure");
}

#[test]
fn io_setup_faults_on_bad_ctxp() {
    assert_eq!(setup_raw(1, ptr::null_mut()), Err(Errno::EFAULT));
    assert_eq!(
        setup_raw(1, Page::inaccessible_addr() as *mut AioContext),
        Err(Errno::EFAULT)
    );
    // Readable (and zero) but not writable: the kernel creates the context,
    // fails to store it, destroys it and reports EFAULT.
    let ro = Page::new(libc::PROT_READ);
    let before = aio_sys::probe::read_fs_sysctl("aio-nr");
    assert_eq!(setup_raw(1, ro.0.cast()), Err(Errno::EFAULT));
    let after = aio_sys::probe::read_fs_sysctl("aio-nr");
    if let (Some(b), Some(a)) = (before, after) {
        // Other processes may set up contexts meanwhile; ours must not leak.
        assert!(a <= b + 64, "aio-nr grew from {b} to {a}");
    }
}

#[test]
fn io_submit_rejects_bad_contexts_and_counts() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    let mut buf = [0u8; 8];
    let mut iocb = Iocb::pread(file.as_raw_fd(), buf.as_mut_ptr() as u64, 8, 0);
    let mut p = &mut iocb as *mut Iocb;
    assert_eq!(submit_raw(0, 1, &mut p), Err(Errno::EINVAL));
    assert_eq!(submit_raw(0x0dea_dbee_f000, 1, &mut p), Err(Errno::EINVAL));
    // A mapped page that is not a ring: its `id` (0) names a context
    // whose address differs. (Not ctx + 4096: a parallel test's ring may
    // be there.)
    let not_a_ring = Page::new(libc::PROT_READ | libc::PROT_WRITE);
    assert_eq!(
        submit_raw(not_a_ring.0 as u64, 1, &mut p),
        Err(Errno::EINVAL)
    );
    // nr is checked before the context.
    assert_eq!(submit_raw(0, -1, &mut p), Err(Errno::EINVAL));
    assert_eq!(submit_raw(ctx.0, -1, &mut p), Err(Errno::EINVAL));
    assert_eq!(submit_raw(ctx.0, 0, &mut p), Ok(0));
    assert_eq!(submit_raw(ctx.0, 0, ptr::null_mut()), Ok(0));
}

#[test]
fn io_submit_faults_on_bad_iocb_pointers() {
    let ctx = Ctx::new(4);
    assert_eq!(submit_raw(ctx.0, 1, ptr::null_mut()), Err(Errno::EFAULT));
    assert_eq!(
        submit_raw(ctx.0, 1, usize::MAX as *mut *mut Iocb),
        Err(Errno::EFAULT)
    );
    let mut null: *mut Iocb = ptr::null_mut();
    assert_eq!(submit_raw(ctx.0, 1, &mut null), Err(Errno::EFAULT));
    let mut unmapped = Page::inaccessible_addr() as *mut Iocb;
    assert_eq!(submit_raw(ctx.0, 1, &mut unmapped), Err(Errno::EFAULT));
}

#[test]
fn io_submit_rejects_bad_fds_and_modes() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    std::fs::write(format!("/proc/self/fd/{}", file.as_raw_fd()), b"hello").unwrap();
    let mut buf = [0u8; 8];
    let b = buf.as_mut_ptr() as u64;
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pread(-1, b, 8, 0)),
        Err(Errno::EBADF)
    );
    let ro = reopen(&file, false);
    let wo = reopen(&file, true);
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pwrite(ro.as_raw_fd(), b, 8, 0)),
        Err(Errno::EBADF)
    );
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pread(wo.as_raw_fd(), b, 8, 0)),
        Err(Errno::EBADF)
    );
    // A closed fd: a high number, which the lowest-free allocation of
    // other threads' opens does not reuse while this test runs.
    let closed = {
        let f = reopen(&file, false);
        // SAFETY: dup2 onto an fd number nothing else uses; closed at once.
        let high = unsafe { libc::dup2(f.as_raw_fd(), 4000) };
        assert_eq!(high, 4000);
        // SAFETY: `high` is ours.
        unsafe { libc::close(high) };
        high
    };
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pread(closed, b, 8, 0)),
        Err(Errno::EBADF)
    );
    // O_PATH descriptors are refused like closed ones.
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    // SAFETY: a valid C string; the fd is closed below.
    let opath = unsafe { libc::open(path.as_ptr(), libc::O_PATH) };
    assert!(opath >= 0);
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pread(opath, b, 8, 0)),
        Err(Errno::EBADF)
    );
    // SAFETY: `opath` is ours.
    unsafe { libc::close(opath) };
    // The right modes work.
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pread(ro.as_raw_fd(), b, 8, 0)),
        Ok(1)
    );
    assert_eq!(ctx.wait(1)[0].res, 5);
}

#[test]
fn io_submit_validates_fields_in_the_kernels_order() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    let fd = file.as_raw_fd();
    let mut buf = [0u8; 8];
    let b = buf.as_mut_ptr() as u64;
    let einval = Err(Errno::EINVAL);
    assert_eq!(submit_one(&ctx, &mut Iocb::pread(fd, b, 8, -1)), einval);
    assert_eq!(submit_one(&ctx, &mut Iocb::pwrite(fd, b, 8, -1)), einval);
    // offset + count overflows loff_t.
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pwrite(fd, b, 8, i64::MAX - 3)),
        einval
    );
    for op in [4u16, 6, 9, 0xffff] {
        let mut iocb = Iocb {
            aio_lio_opcode: Opcode(op),
            ..Iocb::pread(fd, b, 8, 0)
        };
        assert_eq!(submit_one(&ctx, &mut iocb), einval, "opcode {op}");
    }
    let mut reserved = Iocb {
        aio_reserved2: 1,
        ..Iocb::pread(fd, b, 8, 0)
    };
    assert_eq!(submit_one(&ctx, &mut reserved), einval);
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pread(fd, b, 1 << 63, 0)),
        einval
    );
    assert_eq!(
        submit_one(
            &ctx,
            &mut Iocb::fsync(fd).with_rw_flags(aio_sys::abi::RwFlags::DSYNC)
        ),
        einval
    );
    // Linux checks the reserved field before the fd, and the fd before the opcode.
    let mut bad_fd_bad_op = Iocb {
        aio_lio_opcode: Opcode(42),
        ..Iocb::pread(-1, b, 8, 0)
    };
    assert_eq!(submit_one(&ctx, &mut bad_fd_bad_op), Err(Errno::EBADF));
    let mut bad_fd_reserved = Iocb {
        aio_reserved2: 1,
        ..Iocb::pread(-1, b, 8, 0)
    };
    assert_eq!(submit_one(&ctx, &mut bad_fd_reserved), einval);
    // The kernel writes aio_key before it looks at the opcode: a read-only
    // iocb with a bad opcode faults.
    let ro = Page::new(libc::PROT_READ | libc::PROT_WRITE);
    let iocb = Iocb {
        aio_lio_opcode: Opcode(42),
        ..Iocb::pread(fd, b, 8, 0)
    };
    // SAFETY: the page is 4096 writable bytes, aligned for an Iocb.
    unsafe { ro.0.cast::<Iocb>().write(iocb) };
    // SAFETY: the page stays mapped; mprotect only changes its protection.
    assert_eq!(unsafe { libc::mprotect(ro.0, 4096, libc::PROT_READ) }, 0);
    let mut p = ro.0.cast::<Iocb>();
    assert_eq!(submit_raw(ctx.0, 1, &mut p), Err(Errno::EFAULT));
}

#[test]
fn io_submit_reports_the_count_accepted_before_an_error() {
    let ctx = Ctx::new(8);
    let file = scratch_file();
    let mut buf = [0u8; 8];
    let b = buf.as_mut_ptr() as u64;
    let fd = file.as_raw_fd();
    let mut iocbs = [
        Iocb::pwrite(fd, b, 8, 0).with_data(1),
        Iocb::pwrite(fd, b, 8, 8).with_data(2),
        Iocb::pwrite(-1, b, 8, 0).with_data(3),
        Iocb::pwrite(fd, b, 8, 16).with_data(4),
    ];
    assert_eq!(
        ctx.submit(&mut iocbs),
        Ok(2),
        "stops at the first invalid iocb"
    );
    let evs = ctx.wait(2);
    assert_eq!(evs.iter().map(|e| e.data).collect::<Vec<_>>(), [1, 2]);
    let mut none = IoEvent::default();
    // SAFETY: no ring view of the context exists.
    let r = unsafe {
        io_getevents(
            ctx.0,
            0,
            std::slice::from_mut(&mut none),
            Some(Duration::ZERO),
        )
    };
    assert_eq!(r, Ok(0), "no event for the rejected iocb");
}

#[test]
fn zero_byte_requests_complete_with_zero() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    let mut buf = [0u8; 1];
    let b = buf.as_mut_ptr() as u64;
    assert_eq!(
        ctx.run(Iocb::pread(file.as_raw_fd(), b, 0, 0)).unwrap().res,
        0
    );
    assert_eq!(
        ctx.run(Iocb::pwrite(file.as_raw_fd(), b, 0, 0))
            .unwrap()
            .res,
        0
    );
}

#[test]
fn bad_buffers_fault_synchronously_or_in_the_event() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    std::fs::write(format!("/proc/self/fd/{}", file.as_raw_fd()), [1u8; 4096]).unwrap();
    let fd = file.as_raw_fd();
    // Outside the user address space: refused before the driver runs.
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pread(fd, KERNEL_ADDR, 4096, 0)),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        submit_one(&ctx, &mut Iocb::pwrite(fd, KERNEL_ADDR, 4096, 0)),
        Err(Errno::EFAULT)
    );
    // In range but unmapped: the copy fails inside the driver, so the error
    // travels in the event.
    for iocb in [
        Iocb::pread(fd, 0, 4096, 0),
        Iocb::pwrite(fd, Page::inaccessible_addr(), 4096, 0),
    ] {
        let ev = ctx.run(iocb).expect("accepted");
        assert_eq!(ev.res, Errno::EFAULT.as_res(), "{iocb:?}");
    }
}

#[test]
fn fork_child_cannot_use_the_parents_context() {
    let ctx = Ctx::new(4);
    // SAFETY: the child only makes raw system calls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut ev = IoEvent::default();
        // SAFETY: `ev` is writable; a null timeout.
        let r = unsafe { io_getevents_raw(ctx.0, 0, 1, &mut ev, ptr::null()) };
        let code = match r {
            Err(Errno::EINVAL) => 0,
            Ok(_) => 1,
            Err(_) => 2,
        };
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child: 1 = accepted, 2 = other errno than EINVAL"
    );
    // The parent's context is unaffected.
    let mut ev = [IoEvent::default()];
    // SAFETY: no ring view of the context exists.
    let r = unsafe { io_getevents(ctx.0, 0, &mut ev, Some(Duration::ZERO)) };
    assert_eq!(r, Ok(0));
}

#[test]
fn io_getevents_rejects_bad_arguments() {
    let ctx = Ctx::new(4);
    let mut ev = [IoEvent::default(); 2];
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let call = |ctx: AioContext, min: libc::c_long, nr: libc::c_long| {
        // SAFETY: `ev` holds 2 events and nr never exceeds 2 when positive.
        unsafe { io_getevents_raw(ctx, min, nr, ev.as_ptr().cast_mut(), &zero) }
    };
    assert_eq!(call(0, 0, 1), Err(Errno::EINVAL));
    assert_eq!(call(ctx.0, 2, 1), Err(Errno::EINVAL));
    assert_eq!(call(ctx.0, 0, -1), Err(Errno::EINVAL));
    assert_eq!(call(ctx.0, -1, 1), Err(Errno::EINVAL));
    assert_eq!(call(ctx.0, 0, 2), Ok(0));
    // The timeout pointer is read first.
    // SAFETY: the kernel rejects the bad timeout pointer before writing events.
    let r = unsafe { io_getevents_raw(ctx.0, 0, 1, ev.as_mut_ptr(), KERNEL_ADDR as *const _) };
    assert_eq!(r, Err(Errno::EFAULT));
    // min_nr == 0 never blocks, even without a timeout.
    // SAFETY: no ring view of the context exists.
    assert_eq!(unsafe { io_getevents(ctx.0, 0, &mut ev, None) }, Ok(0));
}

#[test]
fn io_destroy_rejects_bad_contexts() {
    // SAFETY: not a context; the kernel rejects it.
    assert_eq!(unsafe { io_destroy(u64::MAX) }, Err(Errno::EINVAL));
    // SAFETY: as above.
    assert_eq!(unsafe { io_destroy(0) }, Err(Errno::EINVAL));
    // A context's id is its ring's address: once destroyed, another test
    // thread's io_setup may map its ring at that address and the stale id
    // names that context (io_getevents then returned Ok(0), in the 6.1 VM;
    // a second io_destroy would destroy it). So the destroyed context is
    // used in a forked child, where no other thread makes contexts.
    // SAFETY: the child only makes raw system calls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = (|| {
            let Ok(ctx) = io_setup(1) else { return 1 };
            // SAFETY: no view of this ring exists.
            if unsafe { io_destroy(ctx) } != Ok(()) {
                return 2;
            }
            // SAFETY: destroyed already; the kernel must refuse it.
            if unsafe { io_destroy(ctx) } != Err(Errno::EINVAL) {
                return 3;
            }
            let mut ev = IoEvent::default();
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ev` is writable, `zero` readable.
            if unsafe { io_getevents_raw(ctx, 0, 1, &mut ev, &zero) } != Err(Errno::EINVAL) {
                return 4;
            }
            0
        })();
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child: 1 = io_setup failed, 2 = io_destroy failed, 3 = a second \
         io_destroy was not EINVAL, 4 = io_getevents on the destroyed context \
         was not EINVAL"
    );
}

#[test]
fn io_cancel_faults_on_null_iocb() {
    let ctx = Ctx::new(1);
    // SAFETY: the kernel rejects the null pointer before reading.
    let r = unsafe { io_cancel(ctx.0, ptr::null_mut()) };
    assert_eq!(r, Err(Errno::EFAULT));
    let mut never_submitted = Iocb::fsync(0);
    // SAFETY: a live iocb.
    let r = unsafe { io_cancel(ctx.0, &mut never_submitted) };
    assert_eq!(r, Err(Errno::EINVAL));
    never_submitted.aio_key = 1;
    // SAFETY: a live iocb.
    let r = unsafe { io_cancel(ctx.0, &mut never_submitted) };
    assert_eq!(r, Err(Errno::EINVAL));
}

#[test]
fn io_pgetevents_validates_its_arguments() {
    let ctx = Ctx::new(4);
    let file = scratch_file();
    let mut ev = [IoEvent::default(); 1];
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: an empty, valid sigset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is writable.
    unsafe { libc::sigemptyset(&mut set) };
    let bad_size = AioSigset {
        sigmask: &set as *const _ as u64,
        sigsetsize: 128,
    };
    let bad_mask = AioSigset {
        sigmask: KERNEL_ADDR,
        sigsetsize: KERNEL_SIGSET_SIZE,
    };
    let call = |events: *mut IoEvent, ts: *const libc::timespec, sig: *const AioSigset| {
        // SAFETY: pointers are live locals or bad on purpose, caught by the kernel.
        unsafe { io_pgetevents_raw(ctx.0, 0, 1, events, ts, sig) }
    };
    assert_eq!(call(ev.as_mut_ptr(), &zero, &bad_size), Err(Errno::EINVAL));
    assert_eq!(
        call(ev.as_mut_ptr(), &zero, KERNEL_ADDR as *const _),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        call(ev.as_mut_ptr(), KERNEL_ADDR as *const _, ptr::null()),
        Err(Errno::EFAULT)
    );
    // A bad sigmask pointer faults when the kernel copies the mask.
    assert_eq!(call(ev.as_mut_ptr(), &zero, &bad_mask), Err(Errno::EFAULT));
    // Events ready but nowhere to put them.
    ctx.submit(&mut [Iocb::fsync(file.as_raw_fd())]).unwrap();
    // The fsync runs on a kernel workqueue: wait until its event is in the
    // ring (a fixed sleep was too short under qemu's emulation).
    // SAFETY: `ctx` outlives the view, which only reads the ring here.
    let view = unsafe { aio_sys::RingView::new(ctx.0) };
    let start = std::time::Instant::now();
    while view.ready() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fsync never completed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        call(ptr::null_mut(), &zero, ptr::null()),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        ctx.wait(1)[0].res,
        0,
        "the event is still there after the fault"
    );
}
