//! Contexts served by the `aio-kernel` engine (placeholder until its API lands).

use aio_abi::{AioContext, AioSigset, Errno};
use libc::c_long;

pub(crate) fn setup(_nr_events: u32, _ctxp: u64) -> Result<(), Errno> {
    Err(Errno::ENOSYS)
}
pub(crate) fn destroy(_id: AioContext) -> Result<(), Errno> {
    Err(Errno::EINVAL)
}
pub(crate) fn submit(_id: AioContext, _nr: c_long, _iocbpp: u64) -> Result<c_long, Errno> {
    Err(Errno::EINVAL)
}
pub(crate) fn cancel(_id: AioContext, _iocb: u64) -> Result<(), Errno> {
    Err(Errno::EINVAL)
}
pub(crate) fn getevents(
    _id: AioContext,
    _min_nr: c_long,
    _nr: c_long,
    _events: u64,
    _timeout: u64,
) -> Result<c_long, Errno> {
    Err(Errno::EINVAL)
}
pub(crate) fn pgetevents(
    _id: AioContext,
    _min_nr: c_long,
    _nr: c_long,
    _events: u64,
    _timeout: u64,
    _sig: &AioSigset,
) -> Result<c_long, Errno> {
    Err(Errno::EINVAL)
}
