//! Our `libaio.h` against `aio-abi` (and against the system's `libaio.h`
//! when libaio-dev is installed): sizes, offsets, opcodes, and the bytes the
//! inline helpers write.

mod common;

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use aio_abi::{AioSigset, IoEvent, Iocb, Opcode, PollEvents, RwFlags};
use common::{Against, compile, have_tool, scratch};
use zerocopy::IntoBytes;

fn layout(against: Against) -> BTreeMap<String, String> {
    let dir = scratch();
    let exe = compile(&["layout.c"], "layout", dir.path(), against);
    let out = std::process::Command::new(&exe)
        .env("LD_LIBRARY_PATH", common::lib_dir())
        .output()
        .expect("run layout");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let (k, v) = l
                .rsplit_once(") ")
                .map_or_else(|| l.split_once(' ').expect("name value"), |(k, v)| (k, v));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn our_header_matches_aio_abi() {
    if !have_tool("cc", "compiles the layout probe") {
        return;
    }
    let ours = layout(Against::Ours);
    let n = |k: &str| -> usize {
        ours.get(k)
            .unwrap_or_else(|| panic!("{k} missing"))
            .parse()
            .expect("number")
    };
    assert_eq!(n("sizeof(struct iocb"), size_of::<Iocb>());
    assert_eq!(n("offsetof(struct iocb, data"), offset_of!(Iocb, aio_data));
    assert_eq!(n("offsetof(struct iocb, key"), offset_of!(Iocb, aio_key));
    assert_eq!(
        n("offsetof(struct iocb, aio_rw_flags"),
        offset_of!(Iocb, aio_rw_flags)
    );
    assert_eq!(
        n("offsetof(struct iocb, aio_lio_opcode"),
        offset_of!(Iocb, aio_lio_opcode)
    );
    assert_eq!(
        n("offsetof(struct iocb, aio_reqprio"),
        offset_of!(Iocb, aio_reqprio)
    );
    assert_eq!(
        n("offsetof(struct iocb, aio_fildes"),
        offset_of!(Iocb, aio_fildes)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.c.buf"),
        offset_of!(Iocb, aio_buf)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.c.nbytes"),
        offset_of!(Iocb, aio_nbytes)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.c.offset"),
        offset_of!(Iocb, aio_offset)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.c.__pad3"),
        offset_of!(Iocb, aio_reserved2)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.c.flags"),
        offset_of!(Iocb, aio_flags)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.c.resfd"),
        offset_of!(Iocb, aio_resfd)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.v.vec"),
        offset_of!(Iocb, aio_buf)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.v.nr"),
        offset_of!(Iocb, aio_nbytes)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.v.offset"),
        offset_of!(Iocb, aio_offset)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.saddr.addr"),
        offset_of!(Iocb, aio_buf)
    );
    assert_eq!(
        n("offsetof(struct iocb, u.saddr.len"),
        offset_of!(Iocb, aio_nbytes)
    );
    // The poll mask is the low 32 bits of aio_buf.
    #[cfg(target_endian = "little")]
    assert_eq!(
        n("offsetof(struct iocb, u.poll.events"),
        offset_of!(Iocb, aio_buf)
    );
    assert_eq!(n("sizeof(struct io_event"), size_of::<IoEvent>());
    assert_eq!(
        n("offsetof(struct io_event, data"),
        offset_of!(IoEvent, data)
    );
    assert_eq!(n("offsetof(struct io_event, obj"), offset_of!(IoEvent, obj));
    assert_eq!(n("offsetof(struct io_event, res"), offset_of!(IoEvent, res));
    assert_eq!(
        n("offsetof(struct io_event, res2"),
        offset_of!(IoEvent, res2)
    );
    assert_eq!(n("sizeof(struct io_sigset"), size_of::<AioSigset>());
    assert_eq!(
        n("offsetof(struct io_sigset, ss"),
        offset_of!(AioSigset, sigmask)
    );
    assert_eq!(
        n("offsetof(struct io_sigset, ss_len"),
        offset_of!(AioSigset, sigsetsize)
    );
    assert_eq!(n("sizeof(io_context_t"), size_of::<aio_abi::AioContext>());
    for (name, op) in [
        ("IO_CMD_PREAD", Opcode::PREAD),
        ("IO_CMD_PWRITE", Opcode::PWRITE),
        ("IO_CMD_FSYNC", Opcode::FSYNC),
        ("IO_CMD_FDSYNC", Opcode::FDSYNC),
        ("IO_CMD_POLL", Opcode::POLL),
        ("IO_CMD_NOOP", Opcode::NOOP),
        ("IO_CMD_PREADV", Opcode::PREADV),
        ("IO_CMD_PWRITEV", Opcode::PWRITEV),
    ] {
        assert_eq!(n(name), op.0 as usize, "{name}");
    }
    // The helpers write the bytes aio-abi's constructors describe.
    let iocb = Iocb::pwritev2(7, 0x1000, 3, 4096, RwFlags::DSYNC)
        .with_eventfd(9)
        .with_data(0x55);
    assert_eq!(
        ours["io_prep_pwritev2+io_set_eventfd"],
        hex(iocb.as_bytes())
    );
    let poll = Iocb::poll(5, PollEvents(0x41));
    assert_eq!(ours["io_prep_poll"], hex(poll.as_bytes()));
}

/// Every line the probe prints is the same with the system's libaio.h: the
/// layouts, the opcodes and the helpers' bytes.
#[test]
fn our_header_matches_the_system_libaio_h() {
    if !have_tool("cc", "compiles the layout probe") {
        return;
    }
    if !common::have_system_libaio() {
        assert!(!common::in_ci(), "libaio-dev is required in CI");
        eprintln!("SKIP: libaio-dev not installed");
        return;
    }
    assert_eq!(layout(Against::Ours), layout(Against::System));
}
