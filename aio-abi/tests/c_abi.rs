//! Compares aio-abi's layouts and constants with the system's C headers.
//!
//! A C program that prints every size, field offset and constant is compiled
//! with `$CC` (default `cc`) against <linux/aio_abi.h>, <linux/fs.h>,
//! <poll.h> and <sys/syscall.h>, run, and its output compared with the Rust
//! values. Without a C compiler the test is skipped, unless CI=true.
#![cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]

use aio_abi::{
    AioContext, AioSigset, IoEvent, IoVec, Iocb, IocbFlags, Opcode, PollEvents, RwFlags, syscall,
};
use std::collections::BTreeMap;
use std::mem::{offset_of, size_of, size_of_val};
use std::process::Command;

const PROBE: &str = r#"
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <signal.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>

/* The io_pgetevents sigset argument: fs/aio.c defines it, the UAPI no longer does. */
struct aio_sigset {
    const sigset_t *sigmask;
    size_t sigsetsize;
};

#define SIZE(t) printf("size|%s|%lld\n", #t, (long long)sizeof(t))
#define FIELD(t, f)                                                          \
    printf("offset|%s.%s|%lld\n", #t, #f, (long long)offsetof(t, f));       \
    printf("size|%s.%s|%lld\n", #t, #f, (long long)sizeof(((t *)0)->f))
#define CONST(c) printf("const|%s|%lld\n", #c, (long long)(c))

int main(void) {
    SIZE(aio_context_t);

    SIZE(struct iocb);
    FIELD(struct iocb, aio_data);
    FIELD(struct iocb, aio_key);
    FIELD(struct iocb, aio_rw_flags);
    FIELD(struct iocb, aio_lio_opcode);
    FIELD(struct iocb, aio_reqprio);
    FIELD(struct iocb, aio_fildes);
    FIELD(struct iocb, aio_buf);
    FIELD(struct iocb, aio_nbytes);
    FIELD(struct iocb, aio_offset);
    FIELD(struct iocb, aio_reserved2);
    FIELD(struct iocb, aio_flags);
    FIELD(struct iocb, aio_resfd);

    SIZE(struct io_event);
    FIELD(struct io_event, data);
    FIELD(struct io_event, obj);
    FIELD(struct io_event, res);
    FIELD(struct io_event, res2);

    SIZE(struct iovec);
    FIELD(struct iovec, iov_base);
    FIELD(struct iovec, iov_len);

    SIZE(struct aio_sigset);
    FIELD(struct aio_sigset, sigmask);
    FIELD(struct aio_sigset, sigsetsize);

    CONST(IOCB_CMD_PREAD);
    CONST(IOCB_CMD_PWRITE);
    CONST(IOCB_CMD_FSYNC);
    CONST(IOCB_CMD_FDSYNC);
    CONST(IOCB_CMD_POLL);
    CONST(IOCB_CMD_NOOP);
    CONST(IOCB_CMD_PREADV);
    CONST(IOCB_CMD_PWRITEV);

    CONST(IOCB_FLAG_RESFD);
    CONST(IOCB_FLAG_IOPRIO);

    /* Each RWF_* flag appeared in a different kernel: compare what exists. */
#ifdef RWF_HIPRI
    CONST(RWF_HIPRI);
#endif
#ifdef RWF_DSYNC
    CONST(RWF_DSYNC);
#endif
#ifdef RWF_SYNC
    CONST(RWF_SYNC);
#endif
#ifdef RWF_NOWAIT
    CONST(RWF_NOWAIT);
#endif
#ifdef RWF_APPEND
    CONST(RWF_APPEND);
#endif
#ifdef RWF_NOAPPEND
    CONST(RWF_NOAPPEND);
#endif
#ifdef RWF_ATOMIC
    CONST(RWF_ATOMIC);
#endif
#ifdef RWF_DONTCACHE
    CONST(RWF_DONTCACHE);
#endif
#ifdef RWF_NOSIGNAL
    CONST(RWF_NOSIGNAL);
#endif
#ifdef RWF_SUPPORTED
    printf("mask|RWF_SUPPORTED|%lld\n", (long long)RWF_SUPPORTED);
#endif

    CONST(POLLIN);
    CONST(POLLPRI);
    CONST(POLLOUT);
    CONST(POLLERR);
    CONST(POLLHUP);
    CONST(POLLNVAL);
    CONST(POLLRDNORM);
    CONST(POLLRDBAND);
    CONST(POLLWRNORM);
    CONST(POLLWRBAND);
    CONST(POLLMSG);
    CONST(POLLRDHUP);

    CONST(__NR_io_setup);
    CONST(__NR_io_destroy);
    CONST(__NR_io_submit);
    CONST(__NR_io_cancel);
    CONST(__NR_io_getevents);
    CONST(__NR_io_pgetevents);
    return 0;
}
"#;

/// Whether a value must be in the C output (false: only if the header has it).
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Always,
    IfDefined,
}

struct Expected(Vec<(String, i128, Need)>);

impl Expected {
    fn add(&mut self, key: String, value: impl TryInto<i128>, need: Need) {
        let value = value
            .try_into()
            .unwrap_or_else(|_| panic!("{key} does not fit i128"));
        self.0.push((key, value, need));
    }
}

/// Offset and size of one field, keyed as the C program prints them.
macro_rules! field {
    ($e:expr, $cty:literal, $rty:ty, $f:ident) => {{
        let key = concat!($cty, ".", stringify!($f));
        $e.add(format!("offset|{key}"), offset_of!($rty, $f), Need::Always);
        let sample = <$rty>::default();
        $e.add(format!("size|{key}"), size_of_val(&sample.$f), Need::Always);
    }};
}

fn constant(e: &mut Expected, name: &str, value: impl TryInto<i128>, need: Need) {
    e.add(format!("const|{name}"), value, need);
}

fn expected() -> Expected {
    let mut e = Expected(Vec::new());
    e.add(
        "size|aio_context_t".into(),
        size_of::<AioContext>(),
        Need::Always,
    );

    e.add("size|struct iocb".into(), size_of::<Iocb>(), Need::Always);
    field!(e, "struct iocb", Iocb, aio_data);
    field!(e, "struct iocb", Iocb, aio_key);
    field!(e, "struct iocb", Iocb, aio_rw_flags);
    field!(e, "struct iocb", Iocb, aio_lio_opcode);
    field!(e, "struct iocb", Iocb, aio_reqprio);
    field!(e, "struct iocb", Iocb, aio_fildes);
    field!(e, "struct iocb", Iocb, aio_buf);
    field!(e, "struct iocb", Iocb, aio_nbytes);
    field!(e, "struct iocb", Iocb, aio_offset);
    field!(e, "struct iocb", Iocb, aio_reserved2);
    field!(e, "struct iocb", Iocb, aio_flags);
    field!(e, "struct iocb", Iocb, aio_resfd);

    e.add(
        "size|struct io_event".into(),
        size_of::<IoEvent>(),
        Need::Always,
    );
    field!(e, "struct io_event", IoEvent, data);
    field!(e, "struct io_event", IoEvent, obj);
    field!(e, "struct io_event", IoEvent, res);
    field!(e, "struct io_event", IoEvent, res2);

    e.add("size|struct iovec".into(), size_of::<IoVec>(), Need::Always);
    field!(e, "struct iovec", IoVec, iov_base);
    field!(e, "struct iovec", IoVec, iov_len);

    e.add(
        "size|struct aio_sigset".into(),
        size_of::<AioSigset>(),
        Need::Always,
    );
    field!(e, "struct aio_sigset", AioSigset, sigmask);
    field!(e, "struct aio_sigset", AioSigset, sigsetsize);

    for (name, op) in [
        ("PREAD", Opcode::PREAD),
        ("PWRITE", Opcode::PWRITE),
        ("FSYNC", Opcode::FSYNC),
        ("FDSYNC", Opcode::FDSYNC),
        ("POLL", Opcode::POLL),
        ("NOOP", Opcode::NOOP),
        ("PREADV", Opcode::PREADV),
        ("PWRITEV", Opcode::PWRITEV),
    ] {
        constant(&mut e, &format!("IOCB_CMD_{name}"), op.0, Need::Always);
    }
    constant(&mut e, "IOCB_FLAG_RESFD", IocbFlags::RESFD.0, Need::Always);
    constant(
        &mut e,
        "IOCB_FLAG_IOPRIO",
        IocbFlags::IOPRIO.0,
        Need::Always,
    );

    // In every UAPI header since 4.16.
    for (name, f) in [
        ("HIPRI", RwFlags::HIPRI),
        ("DSYNC", RwFlags::DSYNC),
        ("SYNC", RwFlags::SYNC),
        ("NOWAIT", RwFlags::NOWAIT),
        ("APPEND", RwFlags::APPEND),
    ] {
        constant(&mut e, &format!("RWF_{name}"), f.0, Need::Always);
    }
    // Not in every header: Debian 12's <linux/fs.h> stops at RWF_APPEND
    // (its glibc <sys/uio.h> adds RWF_NOAPPEND).
    for (name, f) in [
        ("NOAPPEND", RwFlags::NOAPPEND),
        ("ATOMIC", RwFlags::ATOMIC),
        ("DONTCACHE", RwFlags::DONTCACHE),
        ("NOSIGNAL", RwFlags::NOSIGNAL),
    ] {
        constant(&mut e, &format!("RWF_{name}"), f.0, Need::IfDefined);
    }

    for (name, p) in [
        ("IN", PollEvents::IN),
        ("PRI", PollEvents::PRI),
        ("OUT", PollEvents::OUT),
        ("ERR", PollEvents::ERR),
        ("HUP", PollEvents::HUP),
        ("NVAL", PollEvents::NVAL),
        ("RDNORM", PollEvents::RDNORM),
        ("RDBAND", PollEvents::RDBAND),
        ("WRNORM", PollEvents::WRNORM),
        ("WRBAND", PollEvents::WRBAND),
        ("MSG", PollEvents::MSG),
        ("RDHUP", PollEvents::RDHUP),
    ] {
        constant(&mut e, &format!("POLL{name}"), p.0, Need::Always);
    }

    let n = syscall::NATIVE;
    for (name, nr) in [
        ("io_setup", n.io_setup),
        ("io_destroy", n.io_destroy),
        ("io_submit", n.io_submit),
        ("io_cancel", n.io_cancel),
        ("io_getevents", n.io_getevents),
        ("io_pgetevents", n.io_pgetevents),
    ] {
        constant(&mut e, &format!("__NR_{name}"), nr, Need::Always);
    }
    e
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Compiles and runs the probe; `None` when there is no C compiler.
fn c_values() -> Option<BTreeMap<String, i128>> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut words = cc.split_whitespace();
    let program = words.next().unwrap_or("cc");
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let src = dir.path().join("abi_probe.c");
    let exe = dir.path().join("abi_probe");
    std::fs::write(&src, PROBE).expect("writing the C probe");
    let compiled = Command::new(program)
        .args(words)
        .args(["-std=gnu11", "-Wall", "-o"])
        .arg(&exe)
        .arg(&src)
        .output();
    let compiled = match compiled {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let msg = format!("no C compiler `{program}` ({e}); install gcc or set CC");
            if ci() {
                panic!("{msg} (CI=true: the ABI check is required)");
            }
            eprintln!("skipping the C ABI test: {msg}");
            return None;
        }
        r => r.expect("running the C compiler"),
    };
    assert!(
        compiled.status.success(),
        "`{cc}` failed on the C probe ({}); the headers come from libc6-dev and linux-libc-dev:\n{}",
        compiled.status,
        String::from_utf8_lossy(&compiled.stderr)
    );
    let ran = Command::new(&exe).output().expect("running the C probe");
    assert!(ran.status.success(), "the C probe failed: {}", ran.status);
    let text = String::from_utf8(ran.stdout).expect("probe output is ASCII");
    let mut values = BTreeMap::new();
    for line in text.lines() {
        let (key, value) = line.rsplit_once('|').expect("probe line has a value");
        let value: i128 = value.parse().expect("probe value is a number");
        assert!(
            values.insert(key.to_string(), value).is_none(),
            "duplicate {key}"
        );
    }
    Some(values)
    // `dir` is removed here, and by unwinding if anything above panicked.
}

#[test]
fn layouts_and_constants_match_the_c_headers() {
    let Some(mut c) = c_values() else { return };
    let mut problems = Vec::new();
    let mut compared = 0;
    let mut absent = Vec::new();

    // Every RWF flag the header knows must be one aio-abi knows.
    if let Some(mask) = c.remove("mask|RWF_SUPPORTED") {
        compared += 1;
        let unknown = mask & !i128::from(RwFlags::ALL_KNOWN.0);
        if unknown != 0 {
            problems.push(format!(
                "RWF_SUPPORTED has bits {unknown:#x} that RwFlags does not name"
            ));
        }
    }

    for (key, rust, need) in expected().0 {
        match c.remove(&key) {
            Some(cv) => {
                compared += 1;
                if cv != rust {
                    problems.push(format!("{key}: C says {cv}, aio-abi says {rust}"));
                }
            }
            None if need == Need::IfDefined => absent.push(key),
            None => problems.push(format!("{key}: not printed by the C probe")),
        }
    }
    for key in c.keys() {
        problems.push(format!("{key}: printed by the C probe but not checked"));
    }

    println!("compared {compared} values with the C headers");
    if !absent.is_empty() {
        println!("not defined by these headers (newer kernels): {absent:?}");
    }
    assert!(
        problems.is_empty(),
        "aio-abi differs from the C headers:\n  {}",
        problems.join("\n  ")
    );
}
