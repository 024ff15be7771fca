//! The `aio_ring` in host memory: header words and the event array, with
//! the exact Linux layout so user space can reap without a system call.

use aio_abi::{
    AIO_RING_COMPAT_FEATURES, AIO_RING_INCOMPAT_FEATURES, AIO_RING_MAGIC, IoEvent, RING_HEADER_LEN,
};
use zerocopy::IntoBytes;

use crate::host::RingMemory;

const OFF_ID: u64 = 0;
const OFF_NR: u64 = 4;
const OFF_HEAD: u64 = 8;
const OFF_TAIL: u64 = 12;
const OFF_MAGIC: u64 = 16;
const OFF_COMPAT: u64 = 20;
const OFF_INCOMPAT: u64 = 24;
const OFF_HEADER_LEN: u64 = 28;
const EVENT_LEN: u64 = 32;

pub(crate) struct Ring<R> {
    pub(crate) mem: R,
    /// The trusted copy of `ring->nr`; user space may scribble on the header.
    pub(crate) nr: u32,
}

impl<R: RingMemory> Ring<R> {
    /// Writes the header as `aio_setup_ring` does (`id` is set later).
    pub(crate) fn init(mem: R, nr: u32) -> Self {
        mem.store_u32(OFF_ID, u32::MAX);
        mem.store_u32(OFF_NR, nr);
        mem.store_u32(OFF_HEAD, 0);
        mem.store_u32(OFF_TAIL, 0);
        mem.store_u32(OFF_MAGIC, AIO_RING_MAGIC);
        mem.store_u32(OFF_COMPAT, AIO_RING_COMPAT_FEATURES);
        mem.store_u32(OFF_INCOMPAT, AIO_RING_INCOMPAT_FEATURES);
        mem.store_u32(OFF_HEADER_LEN, RING_HEADER_LEN);
        Ring { mem, nr }
    }

    pub(crate) fn addr(&self) -> u64 {
        self.mem.addr()
    }

    /// `ring->id` as stored (user space may have changed it).
    pub(crate) fn id(&self) -> u32 {
        self.mem.load_u32(OFF_ID)
    }

    pub(crate) fn set_id(&self, id: u32) {
        self.mem.store_u32(OFF_ID, id);
    }

    /// `ring->head` as stored, not reduced.
    pub(crate) fn head(&self) -> u32 {
        self.mem.load_u32(OFF_HEAD)
    }

    pub(crate) fn set_head(&self, head: u32) {
        self.mem.store_u32(OFF_HEAD, head);
    }

    /// `ring->tail` as stored (acquire: events before it are visible).
    pub(crate) fn tail(&self) -> u32 {
        self.mem.load_u32(OFF_TAIL)
    }

    /// Publishes `tail` after the events it covers (release).
    pub(crate) fn set_tail(&self, tail: u32) {
        self.mem.store_u32(OFF_TAIL, tail);
    }

    fn event_offset(index: u32) -> u64 {
        RING_HEADER_LEN as u64 + EVENT_LEN * index as u64
    }

    pub(crate) fn write_event(&self, index: u32, ev: &IoEvent) {
        self.mem.write(Self::event_offset(index), ev.as_bytes());
    }

    /// Copies `dst.len() / 32` events starting at `index` (no wrap).
    pub(crate) fn read_events(&self, index: u32, dst: &mut [u8]) {
        self.mem.read(Self::event_offset(index), dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::MockRing;
    use aio_abi::RingHeader;
    use zerocopy::FromBytes;

    #[test]
    fn header_has_the_linux_layout() {
        let ring = Ring::init(MockRing::new(0x10000, 4096), 127);
        ring.set_id(3);
        let mut raw = [0u8; 32];
        ring.mem.read(0, &mut raw);
        let h = RingHeader::read_from_bytes(&raw[..]).unwrap();
        assert_eq!(
            h,
            RingHeader {
                id: 3,
                nr: 127,
                head: 0,
                tail: 0,
                magic: AIO_RING_MAGIC,
                compat_features: 1,
                incompat_features: 0,
                header_length: 32
            }
        );
        let ev = IoEvent {
            data: 1,
            obj: 2,
            res: -3,
            res2: 0,
        };
        ring.write_event(126, &ev);
        let mut raw = [0u8; 32];
        ring.mem.read(32 + 32 * 126, &mut raw);
        assert_eq!(IoEvent::read_from_bytes(&raw[..]).unwrap(), ev);
    }
}
