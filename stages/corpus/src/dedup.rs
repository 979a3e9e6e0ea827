//! Exact and near-duplicate detection.
//!
//! Exact: a 128-bit blake3 digest per document (16 bytes of memory each).
//! Near: MinHash signatures over character 5-grams, banded into an LSH index
//! (Broder 1997; Leskovec et al., *Mining of Massive Datasets* ch. 3). A
//! candidate found through a shared band is confirmed by estimating Jaccard
//! similarity from the full signatures, so the threshold is honoured rather
//! than approximated only by the banding curve.
//!
//! The signature is a one-permutation MinHash (Li, Owen & Zhang 2012): each
//! shingle's hash picks one of the 128 bins and competes for that bin's
//! minimum, instead of being hashed 128 times — one hash per shingle instead
//! of 128 made near-dup ingest several times faster. Bins no shingle fell
//! into are filled by optimal densification (Shrivastava 2017): an empty
//! bin borrows the value of the first non-empty bin on its own fixed random
//! probe sequence, which keeps P(bins equal) = Jaccard similarity.

use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct ExactDedup {
    seen: HashSet<[u8; 16]>,
}

impl ExactDedup {
    /// True the first time a text is seen.
    pub fn first_time(&mut self, text: &str) -> bool {
        let digest = blake3::hash(text.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest.as_bytes()[..16]);
        self.seen.insert(key)
    }
}

const SHINGLE_CHARS: usize = 5;
const NUM_HASHES: usize = 128;
const BIN_BITS: u32 = NUM_HASHES.trailing_zeros();
const WINDOW_MASK: u128 = (1u128 << (21 * SHINGLE_CHARS)) - 1;
const BANDS: usize = 32;
const ROWS: usize = NUM_HASHES / BANDS;

pub struct NearDedup {
    threshold: f64,
    /// `last_query[doc]`: the query that last compared against `doc`, so a
    /// candidate met in several bands is compared once (an array lookup; a
    /// hash set per query dominated when many kept documents share bands).
    last_query: Vec<u64>,
    queries: u64,
    signatures: Vec<Vec<u32>>,
    bands: Vec<HashMap<u64, Vec<u32>>>,
}

impl NearDedup {
    /// `threshold`: estimated Jaccard similarity of 5-gram sets at or above
    /// which a document counts as a near copy of an earlier one.
    pub fn new(threshold: f64) -> Self {
        NearDedup {
            threshold,
            last_query: Vec::new(),
            queries: 0,
            signatures: Vec::new(),
            bands: (0..BANDS).map(|_| HashMap::new()).collect(),
        }
    }

    fn signature(&self, text: &str) -> Vec<u32> {
        let mut bins = [u32::MAX; NUM_HASHES];
        let mut filled = [false; NUM_HASHES];
        // The last five lowercased code points, 21 bits each, shifted in.
        let mut window = 0u128;
        let mut seen = 0usize;
        let mut push = |c: char| {
            window = ((window << 21) | c as u128) & WINDOW_MASK;
            seen += 1;
            if seen >= SHINGLE_CHARS {
                add_to_bins(&mut bins, &mut filled, hash_window(window));
            }
        };
        for c in text.chars() {
            if c.is_ascii() {
                push(c.to_ascii_lowercase());
            } else if is_caseless(c) {
                push(c);
            } else {
                c.to_lowercase().for_each(&mut push);
            }
        }
        if (1..SHINGLE_CHARS).contains(&seen) {
            // Shorter than one shingle: the whole text is the only one.
            add_to_bins(&mut bins, &mut filled, hash_window(window));
        }
        densify(&mut bins, &filled);
        bins.to_vec()
    }

    /// True when no earlier document is a near copy; the document is then
    /// remembered. Near copies are not remembered (the original stands for them).
    pub fn first_time(&mut self, text: &str) -> bool {
        let sig = self.signature(text);
        let band_keys: Vec<u64> = sig
            .chunks(ROWS)
            .map(|rows| {
                rows.iter()
                    .fold(0u64, |h, &r| mix64(h ^ r as u64).wrapping_add(0x9e37_79b9_7f4a_7c15))
            })
            .collect();
        self.queries += 1;
        for (band, key) in band_keys.iter().enumerate() {
            if let Some(candidates) = self.bands[band].get(key) {
                for &c in candidates {
                    let last = &mut self.last_query[c as usize];
                    if *last == self.queries {
                        continue;
                    }
                    *last = self.queries;
                    if similarity(&sig, &self.signatures[c as usize]) >= self.threshold {
                        return false;
                    }
                }
            }
        }
        let id = self.signatures.len() as u32;
        for (band, key) in band_keys.into_iter().enumerate() {
            self.bands[band].entry(key).or_default().push(id);
        }
        self.signatures.push(sig);
        self.last_query.push(self.queries);
        true
    }
}

/// Fills each empty bin from the first filled bin on a probe sequence that
/// depends only on the bin and the attempt, so two documents whose bin `i`
/// is empty borrow from the same places.
fn densify(bins: &mut [u32; NUM_HASHES], filled: &[bool; NUM_HASHES]) {
    if !filled.iter().any(|&f| f) {
        return;
    }
    for i in 0..NUM_HASHES {
        if filled[i] {
            continue;
        }
        for attempt in 0u64.. {
            let probe = mix64(((i as u64) << 32) | attempt) as usize % NUM_HASHES;
            if filled[probe] {
                bins[i] = bins[probe];
                break;
            }
        }
    }
}

/// SplitMix64's finaliser: a cheap bijection that mixes every input bit.
fn mix64(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Blocks of scripts without letter case (Hebrew to Sinhala — Arabic and
/// all Indic scripts —, Thai to Tibetan, CJK, Hangul syllables): lowercasing
/// leaves them as they are, so they skip the case tables.
fn is_caseless(c: char) -> bool {
    matches!(c as u32, 0x0590..=0x0dff | 0x0e00..=0x0fff | 0x3040..=0x9fff | 0xac00..=0xd7af)
}

/// Offers a shingle hash to its bin: the top bits choose the bin, the low
/// 32 bits compete for that bin's minimum.
fn add_to_bins(bins: &mut [u32; NUM_HASHES], filled: &mut [bool; NUM_HASHES], h: u64) {
    let bin = (h >> (64 - BIN_BITS)) as usize;
    bins[bin] = bins[bin].min(h as u32);
    filled[bin] = true;
}

/// A shingle's 64-bit hash (one per position, so this is the hot path): the
/// 105-bit window folded to 64 bits, then SplitMix64's finaliser so the bin
/// bits and the value bits are both well mixed.
fn hash_window(window: u128) -> u64 {
    let folded = (window as u64) ^ ((window >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mix64(folded)
}

fn similarity(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_copy_is_caught_and_a_different_text_is_not() {
        let original = "The river flooded the lower town in the spring of that year, and the \
                        people moved their goats to the hills above the old mill for three weeks.";
        let near = "The river flooded the lower town in the spring of that year, and the \
                    people moved their goats to the hills above the old mill for four weeks.";
        let other = "A recipe for flatbread needs flour, water, salt and a very hot pan; \
                     knead for ten minutes and rest the dough before rolling it thin.";
        let mut d = NearDedup::new(0.7);
        assert!(d.first_time(original));
        assert!(!d.first_time(near));
        assert!(d.first_time(other));
    }

    /// The signature's share of equal bins estimates the Jaccard similarity
    /// of the 5-gram sets (standard error ≈ 0.045 at 128 bins).
    #[test]
    fn equal_bins_estimate_the_jaccard_similarity() {
        let words: Vec<String> = (0..400u64).map(|i| format!("w{:x}", mix64(i) % 100_000)).collect();
        let base = words[..200].join(" ");
        let d = NearDedup::new(0.5);
        for keep in [60, 100, 140, 180] {
            let other = format!("{} {}", words[..keep].join(" "), words[200..400 - keep].join(" "));
            let grams = |t: &str| -> HashSet<Vec<char>> {
                let c: Vec<char> = t.chars().collect();
                c.windows(SHINGLE_CHARS).map(<[char]>::to_vec).collect()
            };
            let (a, b) = (grams(&base), grams(&other));
            let exact = a.intersection(&b).count() as f64 / a.union(&b).count() as f64;
            let estimate = similarity(&d.signature(&base), &d.signature(&other));
            assert!(
                (estimate - exact).abs() < 0.15,
                "keep {keep}: estimate {estimate:.3} vs exact {exact:.3}"
            );
        }
    }

    #[test]
    fn caseless_blocks_really_have_no_case() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32).filter(|&c| is_caseless(c)) {
            assert!(c.to_lowercase().eq(std::iter::once(c)), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn exact_copies_are_caught() {
        let mut d = ExactDedup::default();
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        assert!(d.first_time("b"));
    }
}
