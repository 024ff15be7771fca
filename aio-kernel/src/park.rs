//! Who owns a read or write parked on readiness.
//!
//! A transfer that would block is parked: it waits for its file to become
//! ready, and three parties may take it back — the readiness wake-up
//! (which continues the transfer), `io_destroy` (which ends it) and
//! `io_cancel` (which ends it only if no byte has moved yet, so that no
//! data is ever lost to a cancel). Exactly one of them wins: the state is
//! one atomic, and taking the request back is one read-modify-write.

use crate::sync::atomic::{AtomicU8, Ordering};

/// Not parked: running, or finished.
const RUNNING: u8 = 0;
/// Parked before any byte moved.
const UNSTARTED: u8 = 1;
/// Parked after some bytes moved.
const STARTED: u8 = 2;

pub(crate) struct Park(AtomicU8);

impl Park {
    pub(crate) fn new() -> Park {
        Park(AtomicU8::new(RUNNING))
    }

    /// The owner parks the request; `moved`: whether bytes moved already.
    /// From here the owner may only try to [`Park::take`] it back.
    pub(crate) fn park(&self, moved: bool) {
        let state = if moved { STARTED } else { UNSTARTED };
        self.0.store(state, Ordering::SeqCst);
    }

    /// A wake-up or `io_destroy`: true if the request was parked, and the
    /// caller now owns it.
    pub(crate) fn take(&self) -> bool {
        self.0.swap(RUNNING, Ordering::SeqCst) != RUNNING
    }

    /// `io_cancel`: true if the request was parked with nothing moved, and
    /// the caller now owns it (to end it unstarted).
    pub(crate) fn take_unstarted(&self) -> bool {
        self.0
            .compare_exchange(UNSTARTED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}
