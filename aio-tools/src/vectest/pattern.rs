//! The verification pattern: every aligned 8-byte word of the target
//! encodes its own offset, the pass that wrote it and a tag of the seed, so
//! a mismatch says exactly what landed where.

/// Bits of the word that hold `offset / 8`: 2^40 words, 8 TiB of target.
const OFFSET_BITS: u32 = 40;
const PASS_BITS: u32 = 8;

/// Bytes of target the pattern tells apart (8 TiB): a word further on
/// encodes the same as the word 8 TiB before it.
pub const REACH: u64 = 8 << OFFSET_BITS;

/// What one word of the target is expected to contain, or was found to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    /// Data this run wrote: for file offset `offset`, in pass `pass`.
    Ours { offset: u64, pass: u8 },
    /// All zeros: never written (or zeroed).
    Zeros,
    /// Anything else, raw.
    Foreign(u64),
}

/// Encodes and decodes words for one seed.
#[derive(Clone, Copy, Debug)]
pub struct Pattern {
    tag: u64,
    whiten: u64,
}

impl Pattern {
    /// The pattern of a run with this seed.
    pub fn new(seed: u64) -> Pattern {
        let mix = splitmix(seed);
        // The tag is never 0, so an encoded word is never all zeros.
        let tag = (mix >> 48) | 1;
        Pattern {
            tag,
            whiten: splitmix(mix) & ((1 << (OFFSET_BITS + PASS_BITS)) - 1),
        }
    }

    /// The word stored at `offset` (a multiple of 8) by `pass`.
    pub fn encode(&self, offset: u64, pass: u8) -> u64 {
        let body = ((offset >> 3) & ((1 << OFFSET_BITS) - 1)) | ((pass as u64) << OFFSET_BITS);
        // Whitening keeps neighbouring words unlike each other, so a
        // compressing or deduplicating target still stores real data.
        (self.tag << (OFFSET_BITS + PASS_BITS)) | (body ^ self.whiten)
    }

    /// What a word read back says about itself.
    pub fn decode(&self, word: u64) -> Word {
        if word == 0 {
            return Word::Zeros;
        }
        if word >> (OFFSET_BITS + PASS_BITS) != self.tag {
            return Word::Foreign(word);
        }
        let body = (word ^ self.whiten) & ((1 << (OFFSET_BITS + PASS_BITS)) - 1);
        Word::Ours {
            offset: (body & ((1 << OFFSET_BITS) - 1)) << 3,
            pass: (body >> OFFSET_BITS) as u8,
        }
    }

    /// Fills `buf`, which holds the bytes of the target from `offset` on
    /// (any alignment), with what `pass` writes there.
    pub fn fill(&self, buf: &mut [u8], offset: u64, pass: u8) {
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let word_start = at & !7;
            let bytes = self.encode(word_start, pass).to_le_bytes();
            let skip = (at - word_start) as usize;
            let n = (8 - skip).min(buf.len() - pos);
            buf[pos..pos + n].copy_from_slice(&bytes[skip..skip + n]);
            pos += n;
        }
    }

    /// Checks `buf`, read from the target at `offset`, against `pass`; the
    /// first mismatching word, if any, and how many bytes differ in all.
    pub fn verify(&self, buf: &[u8], offset: u64, pass: u8) -> Option<Mismatch> {
        let mut first = None;
        let mut bad_bytes = 0u64;
        let mut pos = 0usize;
        while pos < buf.len() {
            let at = offset + pos as u64;
            let word_start = at & !7;
            let skip = (at - word_start) as usize;
            let n = (8 - skip).min(buf.len() - pos);
            let want = self.encode(word_start, pass).to_le_bytes();
            let got = &buf[pos..pos + n];
            if got != &want[skip..skip + n] {
                bad_bytes += n as u64;
                if first.is_none() {
                    // Decode the whole word when it is wholly in the buffer.
                    let found = if n == 8 {
                        self.decode(u64::from_le_bytes(got.try_into().unwrap()))
                    } else if got.iter().all(|&b| b == 0) {
                        Word::Zeros
                    } else {
                        let mut w = [0u8; 8];
                        w[skip..skip + n].copy_from_slice(got);
                        Word::Foreign(u64::from_le_bytes(w))
                    };
                    first = Some((word_start, found));
                }
            }
            pos += n;
        }
        first.map(|(offset, found)| Mismatch {
            offset,
            expected_pass: pass,
            found,
            bad_bytes,
        })
    }
}

/// Words a window must hold for [`written_by_vectest`] to recognise it
/// (fewer when the window is shorter).
const RECOGNISED_WORDS: usize = 16;

/// Whether `window`, read from a target at `offset` (a multiple of 8), holds
/// what some vectest run wrote, whatever its seed: every nonzero word carries
/// the same tag and, relative to the others, its own offset (the pass may
/// differ; zero words are ranges not written yet), and at least
/// [`RECOGNISED_WORDS`] words are nonzero (all of them in a shorter window).
pub fn written_by_vectest(window: &[u8], offset: u64) -> bool {
    debug_assert_eq!(offset % 8, 0);
    let head_bits = OFFSET_BITS + PASS_BITS;
    let offset_mask = (1u64 << OFFSET_BITS) - 1;
    let words = window.chunks_exact(8).enumerate().filter_map(|(i, b)| {
        let w = u64::from_le_bytes(b.try_into().unwrap());
        (w != 0).then_some(((offset >> 3) + i as u64, w))
    });
    let mut first = None;
    let mut nonzero = 0;
    for (index, w) in words {
        // Pattern::new makes every tag odd.
        if (w >> head_bits) & 1 == 0 {
            return false;
        }
        let (index0, w0) = *first.get_or_insert((index, w));
        if w >> head_bits != w0 >> head_bits
            || (w ^ w0) & offset_mask != (index ^ index0) & offset_mask
        {
            return false;
        }
        nonzero += 1;
    }
    nonzero > 0 && nonzero >= RECOGNISED_WORDS.min(window.len() / 8)
}

/// A verification failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Offset of the first wrong word.
    pub offset: u64,
    /// The pass whose data was expected there.
    pub expected_pass: u8,
    /// What was there instead.
    pub found: Word,
    /// Bytes of the checked range that lie in words that differ.
    pub bad_bytes: u64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at offset {} expected data of offset {} pass {}, found ",
            self.offset, self.offset, self.expected_pass
        )?;
        match self.found {
            Word::Ours { offset, pass } => write!(f, "data of offset {offset} pass {pass}")?,
            Word::Zeros => f.write_str("zeros")?,
            Word::Foreign(w) => write!(f, "foreign data {w:#018x}")?,
        }
        write!(f, " ({} bytes wrong in this request)", self.bad_bytes)
    }
}

fn splitmix(x: u64) -> u64 {
    super::plan::mix(x.wrapping_add(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn words_decode_to_what_encoded_them(seed: u64, word in 0u64..(1 << 40), pass: u8) {
            let p = Pattern::new(seed);
            let w = p.encode(word * 8, pass);
            prop_assert_ne!(w, 0);
            prop_assert_eq!(p.decode(w), Word::Ours { offset: word * 8, pass });
        }

        #[test]
        fn fill_then_verify_at_any_alignment(seed: u64, offset in 0u64..1_000_000, len in 1usize..200, pass: u8) {
            let p = Pattern::new(seed);
            let mut buf = vec![0u8; len];
            p.fill(&mut buf, offset, pass);
            prop_assert_eq!(p.verify(&buf, offset, pass), None);
            // Filling piecewise gives the same bytes as filling at once.
            let cut = len / 3;
            let mut pieces = vec![0u8; len];
            p.fill(&mut pieces[..cut], offset, pass);
            p.fill(&mut pieces[cut..], offset + cut as u64, pass);
            prop_assert_eq!(&pieces, &buf);
        }
    }

    #[test]
    fn a_misplaced_block_is_reported_with_both_offsets() {
        let p = Pattern::new(42);
        let mut buf = vec![0u8; 8192];
        p.fill(&mut buf, 1 << 20, 3);
        // The seed's bug: a segment filled from the wrong file offset.
        let mut wrong = vec![0u8; 4096];
        p.fill(&mut wrong, (1 << 20) - 4096, 3);
        buf[4096..].copy_from_slice(&wrong);
        let m = p.verify(&buf, 1 << 20, 3).unwrap();
        assert_eq!(m.offset, (1 << 20) + 4096);
        assert_eq!(
            m.found,
            Word::Ours {
                offset: (1 << 20) - 4096,
                pass: 3
            }
        );
        assert_eq!(
            m.to_string(),
            "at offset 1052672 expected data of offset 1052672 pass 3, \
             found data of offset 1044480 pass 3 (4096 bytes wrong in this request)"
        );
    }

    #[test]
    fn vectest_data_of_any_seed_and_pass_is_recognised_and_other_data_is_not() {
        for seed in [0, 1, 42, u64::MAX] {
            let p = Pattern::new(seed);
            let mut buf = vec![0u8; 4096];
            p.fill(&mut buf, 1 << 20, 1);
            // Another pass wrote part of it, a part is not written yet.
            p.fill(&mut buf[1000..2000], (1 << 20) + 1000, 2);
            buf[2400..3200].fill(0);
            assert!(written_by_vectest(&buf, 1 << 20), "seed {seed}");
            // Shifted by a word, it names the wrong offsets.
            assert!(!written_by_vectest(&buf[8..], 1 << 20), "seed {seed}");
            // A short file of its own.
            let mut short = vec![0u8; 100];
            p.fill(&mut short, 0, 1);
            assert!(written_by_vectest(&short[..96], 0));
        }
        assert!(!written_by_vectest(&[0u8; 4096], 0), "zeros are no one's");
        let text = b"#!/bin/sh\necho hello, this is a user's script\n".repeat(40);
        assert!(!written_by_vectest(&text[..text.len() / 8 * 8], 0));
        // Two runs with different seeds in one window.
        let mut mixed = vec![0u8; 4096];
        Pattern::new(1).fill(&mut mixed[..2048], 0, 1);
        Pattern::new(2).fill(&mut mixed[2048..], 2048, 1);
        assert!(!written_by_vectest(&mixed, 0));
    }

    #[test]
    fn zeros_in_part_of_a_word_are_reported_as_zeros() {
        let p = Pattern::new(5);
        // Buffered requests start anywhere: the first word is cut.
        let m = p.verify(&[0u8; 13], 3, 1).unwrap();
        assert_eq!((m.offset, m.found), (0, Word::Zeros));
        assert!(m.to_string().contains("found zeros"), "{m}");
        assert!(matches!(
            p.verify(&[0, 0, 7, 0, 0], 3, 1).unwrap().found,
            Word::Foreign(_)
        ));
    }

    #[test]
    fn stale_pass_zeros_and_foreign_data_are_told_apart() {
        let p = Pattern::new(7);
        let mut buf = vec![0u8; 64];
        p.fill(&mut buf, 0, 1);
        assert_eq!(
            p.verify(&buf, 0, 2).unwrap().found,
            Word::Ours { offset: 0, pass: 1 }
        );
        assert_eq!(p.verify(&[0u8; 64], 0, 2).unwrap().found, Word::Zeros);
        let other = Pattern::new(8);
        let mut foreign = vec![0u8; 64];
        other.fill(&mut foreign, 0, 2);
        assert!(matches!(
            p.verify(&foreign, 0, 2).unwrap().found,
            Word::Foreign(_)
        ));
    }
}
