//! Tokenizer fertility per language: how many tokens a language costs per
//! character, per whitespace word and per UTF-8 byte, and how often the
//! tokenizer falls back to raw bytes. High fertility and many byte tokens
//! are what make extending the vocabulary worth considering.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Languages written without spaces between words: tokens per word is not
/// meaningful for them and is left out.
const NO_WORD_SPACES: &[&str] = &["zh", "ja", "th", "my", "km", "lo", "bo"];

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub documents: u64,
    /// Text tokens only (BOS/EOS excluded).
    pub tokens: u64,
    pub chars: u64,
    pub words: u64,
    pub bytes: u64,
    pub byte_fallback_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fertility {
    #[serde(flatten)]
    pub counts: Counts,
    pub tokens_per_char: f64,
    /// `None` for languages without spaces between words.
    pub tokens_per_word: Option<f64>,
    pub tokens_per_byte: f64,
    pub byte_fallback_share: f64,
}

#[derive(Debug, Default)]
pub struct FertilityCounter {
    per_lang: BTreeMap<String, Counts>,
}

impl FertilityCounter {
    /// Counts one document; returns its length in characters (the caller
    /// records it too, and counting is the costly part).
    pub fn add(&mut self, lang: &str, text: &str, ids: &[u32], is_byte_fallback: &[bool]) -> u64 {
        let chars = text.chars().count() as u64;
        let c = self.per_lang.entry(lang.to_string()).or_default();
        c.documents += 1;
        c.tokens += ids.len() as u64;
        c.chars += chars;
        c.words += text.split_whitespace().count() as u64;
        c.bytes += text.len() as u64;
        c.byte_fallback_tokens += ids
            .iter()
            .filter(|&&id| is_byte_fallback.get(id as usize).copied().unwrap_or(false))
            .count() as u64;
        chars
    }

    pub fn finish(self) -> BTreeMap<String, Fertility> {
        self.per_lang
            .into_iter()
            .map(|(lang, counts)| {
                let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
                let f = Fertility {
                    tokens_per_char: ratio(counts.tokens, counts.chars),
                    tokens_per_word: (!NO_WORD_SPACES.contains(&lang.as_str()) && counts.words > 0)
                        .then(|| ratio(counts.tokens, counts.words)),
                    tokens_per_byte: ratio(counts.tokens, counts.bytes),
                    byte_fallback_share: ratio(counts.byte_fallback_tokens, counts.tokens),
                    counts,
                };
                (lang, f)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_follow_the_counts() {
        let mut c = FertilityCounter::default();
        // "héllo wörld": 11 chars, 2 words, 13 bytes; 4 tokens, one a byte piece.
        assert_eq!(c.add("de", "héllo wörld", &[5, 6, 7, 1], &[false, true]), 11);
        assert_eq!(c.add("zh", "你好", &[9, 9, 9], &[]), 2);
        let f = c.finish();
        let de = &f["de"];
        assert_eq!((de.counts.chars, de.counts.words, de.counts.bytes), (11, 2, 13));
        assert!((de.tokens_per_char - 4.0 / 11.0).abs() < 1e-12);
        assert_eq!(de.tokens_per_word, Some(2.0));
        assert!((de.tokens_per_byte - 4.0 / 13.0).abs() < 1e-12);
        assert!((de.byte_fallback_share - 0.25).abs() < 1e-12);
        assert_eq!(f["zh"].tokens_per_word, None);
    }
}
