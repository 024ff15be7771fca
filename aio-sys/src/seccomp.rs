//! A seccomp filter that refuses the AIO system calls, as the profiles of
//! some container runtimes do: for tests and tools that show how a program
//! behaves under one (`aio-seccomp-exec`, the `aio` driver tests).
//!
//! The filter is a hand-written classic BPF program: for this
//! architecture's numbers of the chosen calls it returns
//! `SECCOMP_RET_ERRNO` with the chosen errno; every other call, and calls
//! made under another architecture's ABI, are allowed.
//! `PR_SET_NO_NEW_PRIVS` is set first, so no privilege is needed. A filter
//! cannot be removed: install it in a process made for the purpose.

use std::io;

use aio_abi::Errno;
use aio_abi::syscall::NATIVE;
use libc::{sock_filter, sock_fprog};

/// `AUDIT_ARCH_*` of the architecture this crate is built for (the value
/// the kernel puts in `seccomp_data.arch`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 0xc000_00f3;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

/// The largest errno a system call can return (the kernel's `MAX_ERRNO`).
pub const MAX_ERRNO: i32 = 4095;

/// `SECCOMP_FILTER_FLAG_TSYNC`: every thread of the process, not only the
/// caller.
const FILTER_FLAG_TSYNC: libc::c_ulong = 1;

const fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jeq(k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The filter: refuse `calls` with `errno`, allow everything else.
fn program(calls: &[i64], errno: Errno) -> Vec<sock_filter> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut p = vec![
        stmt(load, OFF_ARCH),
        // Another ABI's numbers mean other calls: allow.
        jeq(AUDIT_ARCH, 1, 0),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
        stmt(load, OFF_NR),
    ];
    let n = calls.len();
    for (i, &nr) in calls.iter().enumerate() {
        // On a match, skip the remaining comparisons and the ALLOW.
        let to_deny = (n - i) as u8;
        p.push(jeq(nr as u32, to_deny, 0));
    }
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(
        ret,
        libc::SECCOMP_RET_ERRNO | (errno.0 as u32 & libc::SECCOMP_RET_DATA),
    ));
    p
}

/// Which calls the filter refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuse {
    /// `io_setup` only (a context can never be made).
    Setup,
    /// `io_setup`, `io_destroy`, `io_submit`, `io_cancel`, `io_getevents`
    /// and `io_pgetevents`.
    All,
}

/// Installs, for every thread of this process and everything it executes
/// from now on, a filter that makes the AIO calls of `refuse` fail with
/// `errno` (`EPERM` as Docker's profiles answer, or `ENOSYS` as a kernel
/// without AIO would).
///
/// `errno` must be in `1..=`[`MAX_ERRNO`], else nothing is installed and
/// the answer is `InvalidInput`: the kernel would turn 0 into a success
/// that did nothing (an `io_destroy` that returns 0 without waiting for the
/// requests in flight) and cap larger values.
pub fn refuse_aio(refuse: Refuse, errno: Errno) -> io::Result<()> {
    if !(1..=MAX_ERRNO).contains(&errno.0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("seccomp: errno {} is not in 1..={MAX_ERRNO}", errno.0),
        ));
    }
    let calls: &[i64] = match refuse {
        Refuse::Setup => &[NATIVE.io_setup],
        Refuse::All => &[
            NATIVE.io_setup,
            NATIVE.io_destroy,
            NATIVE.io_submit,
            NATIVE.io_cancel,
            NATIVE.io_getevents,
            NATIVE.io_pgetevents,
        ],
    };
    let filter = program(calls, errno);
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: seccomp(2) reads the program, which lives until after the
    // call (the kernel copies it).
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            FILTER_FLAG_TSYNC,
            &prog as *const sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r < 0 => Err(io::Error::last_os_error()),
        // TSYNC: the id of a thread that could not take the filter.
        tid => Err(io::Error::other(format!(
            "seccomp: thread {tid} could not be synchronised to the filter"
        ))),
    }
}
