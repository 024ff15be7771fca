//! Whether a buffered read is worth trying inside `io_submit`.
//!
//! A read with `RWF_NOWAIT` copies what the page cache holds without
//! waiting, but one that misses still starts readahead, and the submitter
//! pays for it (the block layer, and on a virtual disk an exit to the
//! hypervisor: tens of microseconds). `cachestat` (Linux 6.5) answers the
//! same question without starting anything, for a system call. So a
//! device whose recent reads all hit is read blindly, one that mixes hits
//! and misses asks `cachestat` before every read, and a cold one sends its
//! reads to the workers, asking only now and then whether it warmed up.
//! Used by the engine (reads tried inline) and by aio's `Auto` driver
//! (reads tried in the kernel first; and writes, which have no `cachestat`
//! to ask: there an unsure guess tries, and the outcome is whether the
//! kernel took the write without `EAGAIN`).

/// Misses (up one per miss, down one per hit) from which a device is cold.
const COLD: u8 = 8;
/// While cold, one read in this many asks `cachestat`.
const PROBE_COLD: u8 = 32;
/// Hits in a row after which reads are tried without asking: at a hit
/// rate of 99%, a device mostly stays below this and keeps asking.
const WARM: u16 = 1024;

/// What the recent reads of one device found in the page cache.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct CacheGuess {
    misses: u8,
    /// Hits since the last miss, up to [`WARM`].
    streak: u16,
    /// Reads planned while cold.
    tick: u8,
}

/// What to do with the next buffered read of a device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ReadPlan {
    /// Try it with `RWF_NOWAIT`: recent reads all hit.
    Try,
    /// Ask `cachestat` first, try only if it says the range is cached
    /// (and report that answer as the outcome if not).
    AskFirst,
    /// Do not try: the device is cold.
    Skip,
}

impl CacheGuess {
    /// Whether to try the next read with `RWF_NOWAIT`, calling `cached`
    /// (`cachestat` of the read's range; `None` where the kernel has
    /// none) where the guess is unsure. A "not cached" answer counts as a
    /// miss; the caller reports the outcome of a try with
    /// [`CacheGuess::outcome`].
    pub fn should_try(&mut self, cached: impl FnOnce() -> Option<bool>) -> bool {
        match self.plan() {
            ReadPlan::Try => true,
            ReadPlan::Skip => false,
            ReadPlan::AskFirst => match cached() {
                Some(true) | None => true,
                Some(false) => {
                    self.outcome(false);
                    false
                }
            },
        }
    }

    /// The plan for the next read (counts it while cold).
    fn plan(&mut self) -> ReadPlan {
        if self.misses >= COLD {
            self.tick = self.tick.wrapping_add(1);
            if self.tick % PROBE_COLD == 0 {
                ReadPlan::AskFirst
            } else {
                ReadPlan::Skip
            }
        } else if self.streak >= WARM {
            ReadPlan::Try
        } else {
            ReadPlan::AskFirst
        }
    }

    /// Whether a read (tried, or answered by `cachestat`) found its data.
    pub fn outcome(&mut self, hit: bool) {
        if hit {
            self.misses = self.misses.saturating_sub(1);
            self.streak = self.streak.saturating_add(1).min(WARM);
        } else {
            self.misses = self.misses.saturating_add(1).min(2 * COLD);
            self.streak = 0;
        }
    }

    /// Packed into a `u32`, for a guess shared through an atomic.
    pub fn to_bits(self) -> u32 {
        u32::from(self.misses) | u32::from(self.streak) << 8 | u32::from(self.tick) << 24
    }

    /// The guess [`CacheGuess::to_bits`] packed.
    pub fn from_bits(bits: u32) -> CacheGuess {
        CacheGuess {
            misses: bits as u8,
            streak: (bits >> 8) as u16,
            tick: (bits >> 24) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn any_packed_guess_takes_outcomes() {
        for bits in [u32::MAX, 0x00ff_ffff, 0xff] {
            for hit in [true, false] {
                let mut g = CacheGuess::from_bits(bits);
                let _ = g.should_try(|| Some(false));
                g.outcome(hit);
            }
        }
    }

    fn after(outcomes: impl IntoIterator<Item = bool>) -> CacheGuess {
        let mut g = CacheGuess::default();
        for hit in outcomes {
            g.outcome(hit);
        }
        g
    }

    #[test]
    fn a_new_device_asks_before_it_reads() {
        assert_eq!(CacheGuess::default().plan(), ReadPlan::AskFirst);
    }

    #[test]
    fn only_a_long_run_of_hits_reads_blindly() {
        let mut g = after(std::iter::repeat_n(true, WARM as usize - 1));
        assert_eq!(g.plan(), ReadPlan::AskFirst);
        g.outcome(true);
        assert_eq!(g.plan(), ReadPlan::Try);
        // One miss, and it asks again until the next long run.
        g.outcome(false);
        assert_eq!(g.plan(), ReadPlan::AskFirst);
    }

    #[test]
    fn a_cold_device_asks_one_read_in_probe_cold() {
        let mut g = after(std::iter::repeat_n(false, COLD as usize));
        let plans: Vec<ReadPlan> = (0..PROBE_COLD as usize * 4).map(|_| g.plan()).collect();
        let asked = plans.iter().filter(|p| **p == ReadPlan::AskFirst).count();
        assert_eq!(asked, 4);
        assert!(plans.iter().all(|p| *p != ReadPlan::Try));
    }

    #[test]
    fn a_cold_device_warms_up_as_probes_hit() {
        let mut g = after(std::iter::repeat_n(false, 2 * COLD as usize));
        assert_eq!(g.misses, 2 * COLD);
        for _ in 0..=COLD {
            g.outcome(true);
        }
        assert_eq!(g.plan(), ReadPlan::AskFirst);
        assert!(g.misses < COLD);
    }

    #[test]
    fn should_try_asks_only_when_unsure() {
        let mut g = CacheGuess::default();
        assert!(!g.should_try(|| Some(false)));
        assert_eq!((g.misses, g.streak), (1, 0));
        assert!(g.should_try(|| Some(true)));
        assert!(g.should_try(|| None), "no cachestat: try");
        let mut warm = after(std::iter::repeat_n(true, WARM as usize));
        assert!(warm.should_try(|| panic!("a warm device does not ask")));
        let mut cold = after(std::iter::repeat_n(false, COLD as usize));
        let tried = (0..PROBE_COLD as usize)
            .filter(|_| cold.should_try(|| Some(true)))
            .count();
        assert_eq!(tried, 1);
    }

    #[test]
    fn bits_round_trip() {
        let mut g = after([true, true, false, true]);
        for _ in 0..300 {
            g.plan();
        }
        g.misses = 13;
        g.tick = 200;
        assert_eq!(CacheGuess::from_bits(g.to_bits()), g);
    }
}
