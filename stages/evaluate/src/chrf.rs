//! chrF (Popović 2015), computed as sacreBLEU 2 does by default: character
//! n-grams of orders 1–6 with whitespace removed, precision and recall
//! averaged over the orders both sides have, then F with β = 2. A corpus
//! score sums the n-gram statistics of all sentences first.

use std::collections::HashMap;

const ORDER: usize = 6;
const BETA: f64 = 2.0;

/// Per order: (hypothesis n-grams, reference n-grams, matches).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats([[u64; 3]; ORDER]);

fn ngrams(text: &str, n: usize) -> HashMap<&str, u64> {
    let mut out = HashMap::new();
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    for w in bounds.windows(n + 1) {
        *out.entry(&text[w[0]..w[n]]).or_default() += 1;
    }
    out
}

impl Stats {
    pub fn of(hypothesis: &str, reference: &str) -> Self {
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        let (h, r) = (squash(hypothesis), squash(reference));
        let mut stats = [[0u64; 3]; ORDER];
        for (n, slot) in stats.iter_mut().enumerate() {
            let (hg, rg) = (ngrams(&h, n + 1), ngrams(&r, n + 1));
            let matches = hg.iter().map(|(g, c)| (*c).min(rg.get(g).copied().unwrap_or(0))).sum();
            *slot = [hg.values().sum(), rg.values().sum(), matches];
        }
        Stats(stats)
    }

    pub fn add(&mut self, other: &Stats) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            for k in 0..3 {
                a[k] += b[k];
            }
        }
    }

    /// The score, 0–100.
    pub fn score(&self) -> f64 {
        let (mut precision, mut recall, mut orders) = (0.0, 0.0, 0);
        for &[hyp, reference, matches] in &self.0 {
            if hyp > 0 && reference > 0 {
                precision += matches as f64 / hyp as f64;
                recall += matches as f64 / reference as f64;
                orders += 1;
            }
        }
        if orders == 0 {
            return 0.0;
        }
        let (p, r) = (precision / orders as f64, recall / orders as f64);
        let f = BETA * BETA;
        if p + r == 0.0 {
            0.0
        } else {
            100.0 * (1.0 + f) * p * r / (f * p + r)
        }
    }
}

/// Sentence-level chrF.
pub fn chrf(hypothesis: &str, reference: &str) -> f64 {
    Stats::of(hypothesis, reference).score()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values from sacreBLEU 2 (`CHRF().sentence_score` / `corpus_score`).
    #[test]
    fn agrees_with_sacrebleu() {
        let cases = [
            ("the cat sat on the mat", "the cat is on the mat", 64.5779420625287),
            (
                "Soko linafunguliwa kabla jua halijatoka.",
                "Soko hufunguliwa kabla ya jua kuchomoza.",
                47.60037245024505,
            ),
            ("abc", "xyz", 0.0),
            (
                "饭前洗手可以预防疾病",
                "饭前用肥皂洗手可以预防疾病。",
                54.04108166149276,
            ),
        ];
        for (h, r, expected) in cases {
            assert!(
                (chrf(h, r) - expected).abs() < 1e-9,
                "{h}: {} vs {expected}",
                chrf(h, r)
            );
        }
        let mut corpus = Stats::default();
        corpus.add(&Stats::of(cases[0].0, cases[0].1));
        corpus.add(&Stats::of(cases[1].0, cases[1].1));
        assert!((corpus.score() - 52.6441673339148).abs() < 1e-9, "{}", corpus.score());
        assert_eq!(chrf("same text", "same text"), 100.0);
    }
}
