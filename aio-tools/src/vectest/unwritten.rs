//! The ranges of the target that a pass failed to write (a write that
//! failed, or the tail of a short one). Each is reported once, as its
//! request, and left out of that pass's verification: what a failed write
//! left behind is not a corruption.

use std::ops::Range;

/// Sorted, disjoint, non-adjacent byte ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwritten(Vec<Range<u64>>);

impl Unwritten {
    /// Forgets every range (a new pass writes everything again).
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Adds `r`, merged with the ranges it touches.
    pub fn add(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        // The ranges that overlap or touch `r` are consecutive.
        let first = self.0.partition_point(|x| x.end < r.start);
        let last = self.0.partition_point(|x| x.start <= r.end);
        let merged = if first < last {
            self.0[first].start.min(r.start)..self.0[last - 1].end.max(r.end)
        } else {
            r
        };
        self.0.splice(first..last, [merged]);
    }

    /// Bytes in all ranges.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// The parts of `r` outside every range, in order.
    pub fn written_parts(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut parts = Vec::new();
        let mut at = r.start;
        let from = self.0.partition_point(|x| x.end <= r.start);
        for hole in &self.0[from..] {
            if hole.start >= r.end {
                break;
            }
            if hole.start > at {
                parts.push(at..hole.start);
            }
            at = at.max(hole.end);
        }
        if at < r.end {
            parts.push(at..r.end);
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn written_parts_are_exactly_the_bytes_outside_the_ranges(
            ranges in prop::collection::vec((0u64..200, 0u64..40), 0..12),
            start in 0u64..250,
            len in 0u64..100,
        ) {
            let mut u = Unwritten::default();
            let mut bad = [false; 400];
            for (s, l) in ranges {
                u.add(s..s + l);
                bad[s as usize..(s + l) as usize].fill(true);
            }
            prop_assert_eq!(u.bytes(), bad.iter().filter(|&&b| b).count() as u64);
            for w in u.0.windows(2) {
                prop_assert!(w[0].end < w[1].start, "sorted, disjoint, not adjacent: {:?}", u);
            }
            let mut good = Vec::new();
            for p in u.written_parts(start..start + len) {
                prop_assert!(!p.is_empty());
                good.extend(p);
            }
            let expect: Vec<u64> = (start..start + len).filter(|&i| !bad[i as usize]).collect();
            prop_assert_eq!(good, expect);
        }
    }

    #[test]
    fn a_pass_starts_with_nothing_unwritten() {
        let mut u = Unwritten::default();
        u.add(10..20);
        u.add(20..30);
        assert_eq!(u.written_parts(0..40), vec![0..10, 30..40]);
        u.clear();
        assert_eq!(u.written_parts(0..40), vec![0..40]);
    }
}
