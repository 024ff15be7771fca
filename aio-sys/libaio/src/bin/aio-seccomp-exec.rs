//! `aio-seccomp-exec`: runs a program with the AIO system calls refused by
//! a seccomp filter, as some container runtimes do.
//!
//! ```text
//! aio-seccomp-exec [--errno EPERM|ENOSYS] [--only-setup] [--] PROGRAM [ARGS...]
//! ```
//!
//! The filter is a hand-written classic BPF program: for this architecture's
//! system call numbers of `io_setup`, `io_destroy`, `io_submit`,
//! `io_cancel`, `io_getevents` and `io_pgetevents` (only `io_setup` with
//! `--only-setup`) it returns `SECCOMP_RET_ERRNO` with the chosen errno
//! (default `EPERM`); every other call, and calls made under another
//! architecture's ABI, are allowed. `PR_SET_NO_NEW_PRIVS` is set first, so no
//! privilege is needed. Then the program is executed in place: the filter
//! is inherited by it and by all its children.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use aio_abi::syscall::NATIVE;
use libc::{sock_filter, sock_fprog};

/// `AUDIT_ARCH_*` of the architecture this program is built for (the value
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
fn program(calls: &[i64], errno: i32) -> Vec<sock_filter> {
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
        libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
    ));
    p
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: aio-seccomp-exec [--errno EPERM|ENOSYS] [--only-setup] [--] PROGRAM [ARGS...]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut errno = libc::EPERM;
    let mut only_setup = false;
    while let Some(first) = args.first() {
        match first.to_str() {
            Some("--errno") if args.len() > 1 => {
                errno = match args[1].to_str() {
                    Some("EPERM") => libc::EPERM,
                    Some("ENOSYS") => libc::ENOSYS,
                    _ => return usage(),
                };
                args.drain(..2);
            }
            Some("--only-setup") => {
                only_setup = true;
                args.remove(0);
            }
            Some("--") => {
                args.remove(0);
                break;
            }
            Some(s) if s.starts_with("--") => return usage(),
            _ => break,
        }
    }
    if args.is_empty() {
        return usage();
    }
    let calls: Vec<i64> = if only_setup {
        vec![NATIVE.io_setup]
    } else {
        vec![
            NATIVE.io_setup,
            NATIVE.io_destroy,
            NATIVE.io_submit,
            NATIVE.io_cancel,
            NATIVE.io_getevents,
            NATIVE.io_pgetevents,
        ]
    };
    let filter = program(&calls, errno);
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: plain prctl calls with integer arguments and a pointer to a
    // filter that lives until after the call (the kernel copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            eprintln!(
                "aio-seccomp-exec: PR_SET_NO_NEW_PRIVS: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(126);
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const sock_fprog,
        ) != 0
        {
            eprintln!(
                "aio-seccomp-exec: PR_SET_SECCOMP: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(126);
        }
    }
    let cargs: Vec<CString> = match args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
    {
        Ok(v) => v,
        Err(_) => return usage(),
    };
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: `argv` is a NULL-terminated array of C strings that outlive
    // the call; execvp only returns on failure.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    eprintln!(
        "aio-seccomp-exec: cannot run {:?}: {}",
        args[0],
        std::io::Error::last_os_error()
    );
    ExitCode::from(127)
}
