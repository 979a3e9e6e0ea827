//! Exact and near-duplicate detection.
//!
//! Exact: a 128-bit blake3 digest per document (16 bytes of memory each).
//! Near: MinHash signatures over character 5-grams, banded into an LSH index
//! (Broder 1997; Leskovec et al., *Mining of Massive Datasets* ch. 3). A
//! candidate found through a shared band is confirmed by estimating Jaccard
//! similarity from the full signatures, so the threshold is honoured rather
//! than approximated only by the banding curve.

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
const BANDS: usize = 32;
const ROWS: usize = NUM_HASHES / BANDS;

pub struct NearDedup {
    threshold: f64,
    seeds: Vec<(u64, u64)>,
    signatures: Vec<Vec<u32>>,
    bands: Vec<HashMap<u64, Vec<u32>>>,
}

impl NearDedup {
    /// `threshold`: estimated Jaccard similarity of 5-gram sets at or above
    /// which a document counts as a near copy of an earlier one.
    pub fn new(threshold: f64) -> Self {
        // Fixed seeds: the same corpus gives the same result on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let seeds = (0..NUM_HASHES).map(|_| (next() | 1, next())).collect();
        NearDedup {
            threshold,
            seeds,
            signatures: Vec::new(),
            bands: (0..BANDS).map(|_| HashMap::new()).collect(),
        }
    }

    fn signature(&self, text: &str) -> Vec<u32> {
        let chars: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
        let mut shingles: Vec<u64> = if chars.len() <= SHINGLE_CHARS {
            vec![hash_chars(&chars)]
        } else {
            chars.windows(SHINGLE_CHARS).map(hash_chars).collect()
        };
        shingles.sort_unstable();
        shingles.dedup();
        self.seeds
            .iter()
            .map(|&(a, b)| {
                shingles
                    .iter()
                    .map(|&s| (a.wrapping_mul(s).wrapping_add(b) >> 32) as u32)
                    .min()
                    .unwrap_or(u32::MAX)
            })
            .collect()
    }

    /// True when no earlier document is a near copy; the document is then
    /// remembered. Near copies are not remembered (the original stands for them).
    pub fn first_time(&mut self, text: &str) -> bool {
        let sig = self.signature(text);
        let band_keys: Vec<u64> = sig
            .chunks(ROWS)
            .map(|rows| {
                let mut h = blake3::Hasher::new();
                for r in rows {
                    h.update(&r.to_le_bytes());
                }
                u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
            })
            .collect();
        let mut checked = HashSet::new();
        for (band, key) in band_keys.iter().enumerate() {
            if let Some(candidates) = self.bands[band].get(key) {
                for &c in candidates {
                    if checked.insert(c) && similarity(&sig, &self.signatures[c as usize]) >= self.threshold {
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
        true
    }
}

/// A fast 64-bit hash of a shingle (one per 5-gram, so this is the hot
/// path): FNV-1a over the code points, then a SplitMix64 finaliser so the
/// bits are well mixed for the multiply-shift permutations.
fn hash_chars(chars: &[char]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for c in chars {
        h = (h ^ *c as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
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

    #[test]
    fn exact_copies_are_caught() {
        let mut d = ExactDedup::default();
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        assert!(d.first_time("b"));
    }
}
