//! How a pass cuts the target into requests and each request into
//! segments; reproducible from the seed.

/// SplitMix64: small, fast, and the same sequence for the same seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.range(0, i as u64) as usize);
        }
    }
}

/// The SplitMix64 output function.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One vectored request: a range of the target split into segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Target offset of the first byte.
    pub offset: u64,
    /// Segment lengths, in order; they add up to the request's length.
    pub segments: Vec<usize>,
}

impl Request {
    /// Bytes the request transfers.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|&s| s as u64).sum()
    }
}

/// Limits for [`plan`].
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Every length and offset is a multiple of this (the direct-I/O
    /// alignment, or 1 for buffered I/O).
    pub unit: u64,
    /// Largest request in bytes.
    pub max_request: u64,
    /// Most segments in one request (`UIO_MAXIOV` is 1024).
    pub max_segments: usize,
}

/// Cuts `0..size` into requests of random length (whole units) and each
/// into 1..=`max_segments` segments of random, unequal lengths; returns them
/// in a random order.
pub fn plan(size: u64, shape: Shape, rng: &mut Rng) -> Vec<Request> {
    assert!(shape.unit > 0 && size % shape.unit == 0 && shape.max_request >= shape.unit);
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < size {
        let max_units = (shape.max_request.min(size - offset)) / shape.unit;
        let units = rng.range(1, max_units);
        let nsegs = rng.range(1, units.min(shape.max_segments as u64)) as usize;
        out.push(Request {
            offset,
            segments: split(units, nsegs, shape.unit, rng),
        });
        offset += units * shape.unit;
    }
    rng.shuffle(&mut out);
    out
}

/// `units` whole units split into `n` nonempty parts at random cut points.
pub fn split(units: u64, n: usize, unit: u64, rng: &mut Rng) -> Vec<usize> {
    let mut cuts: Vec<u64> = Vec::with_capacity(n + 1);
    if n as u64 * 4 > units {
        // Dense: choose which of the units-1 gaps are cuts.
        let mut gaps: Vec<u64> = (1..units).collect();
        rng.shuffle(&mut gaps);
        cuts.extend_from_slice(&gaps[..n - 1]);
    } else {
        let mut seen = std::collections::HashSet::with_capacity(n);
        while cuts.len() < n - 1 {
            let c = rng.range(1, units - 1);
            if seen.insert(c) {
                cuts.push(c);
            }
        }
    }
    cuts.push(0);
    cuts.push(units);
    cuts.sort_unstable();
    cuts.windows(2)
        .map(|w| ((w[1] - w[0]) * unit) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn plans_cover_the_target_exactly_once(
            seed: u64,
            units in 1u64..5000,
            unit in prop::sample::select(vec![1u64, 512, 4096]),
            max_req_units in 1u64..300,
            max_segments in 1usize..1100,
        ) {
            let size = units * unit;
            let shape = Shape { unit, max_request: max_req_units * unit, max_segments };
            let mut reqs = plan(size, shape, &mut Rng::new(seed));
            reqs.sort_by_key(|r| r.offset);
            let mut next = 0;
            for r in &reqs {
                prop_assert_eq!(r.offset, next);
                prop_assert!(!r.segments.is_empty() && r.segments.len() <= max_segments);
                prop_assert!(r.segments.iter().all(|&s| s > 0 && s as u64 % unit == 0));
                prop_assert!(r.len() <= shape.max_request);
                next += r.len();
            }
            prop_assert_eq!(next, size);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        let shape = Shape {
            unit: 512,
            max_request: 1 << 20,
            max_segments: 1024,
        };
        let a = plan(64 << 20, shape, &mut Rng::new(1));
        assert_eq!(a, plan(64 << 20, shape, &mut Rng::new(1)));
        assert_ne!(a, plan(64 << 20, shape, &mut Rng::new(2)));
        assert!(
            a.iter().any(|r| r.segments.len() > 100),
            "many-segment requests occur"
        );
    }
}
