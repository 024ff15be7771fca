//! `aio-seccomp-exec`: runs a program with the AIO system calls refused by
//! a seccomp filter, as some container runtimes do.
//!
//! ```text
//! aio-seccomp-exec [--errno EPERM|ENOSYS] [--only-setup] [--] PROGRAM [ARGS...]
//! ```
//!
//! The filter (`aio_sys::seccomp`) refuses `io_setup`, `io_destroy`,
//! `io_submit`, `io_cancel`, `io_getevents` and `io_pgetevents` (only
//! `io_setup` with `--only-setup`) with the chosen errno (default `EPERM`).
//! Then the program is executed in place: the filter is inherited by it and
//! by all its children.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use aio_sys::abi::Errno;
use aio_sys::seccomp::{Refuse, refuse_aio};

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
    let refuse = if only_setup {
        Refuse::Setup
    } else {
        Refuse::All
    };
    if let Err(e) = refuse_aio(refuse, Errno(errno)) {
        eprintln!("aio-seccomp-exec: installing the filter: {e}");
        return ExitCode::from(126);
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
