//! Token embeddings learnt from target-language text alone: word2vec's
//! skip-gram with negative sampling (Mikolov et al. 2013) over the extended
//! tokenizer's ids, the small auxiliary space FOCUS compares tokens in.
//! Single-threaded and seeded, so the vectors (and the rows built from
//! them) are the same on every run; word2vec's own threads race on purpose.

use babelflow_stage::rng::Rng;

/// Training settings (word2vec's defaults for skip-gram, but for `dim`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkipGram {
    pub dim: usize,
    /// Context tokens on each side, at most (each position draws 1..=window).
    pub window: usize,
    pub negatives: usize,
    pub epochs: usize,
    /// Tokens seen fewer times get no vector.
    pub min_count: u64,
    pub learning_rate: f32,
    /// word2vec's `sample`: frequent tokens are dropped with probability
    /// 1 − (√(f/t) + 1)·t/f, f their share of the text.
    pub subsample: f64,
}

impl Default for SkipGram {
    fn default() -> Self {
        SkipGram {
            dim: 100,
            window: 5,
            negatives: 5,
            epochs: 3,
            min_count: 3,
            learning_rate: 0.025,
            subsample: 1e-4,
        }
    }
}

/// One vector per id (`vocab × dim`, zero for ids without one) and how
/// often each id occurred.
#[derive(Debug, Clone)]
pub struct TokenVectors {
    pub dim: usize,
    pub vectors: Vec<f32>,
    pub counts: Vec<u64>,
    pub min_count: u64,
}

impl TokenVectors {
    /// The vector of `id`, when it occurred often enough to learn one.
    pub fn get(&self, id: usize) -> Option<&[f32]> {
        (self.counts.get(id).copied().unwrap_or(0) >= self.min_count)
            .then(|| &self.vectors[id * self.dim..(id + 1) * self.dim])
    }
}

/// Entries in the table negatives are drawn from (unigram^0.75).
const NOISE_TABLE: usize = 1 << 20;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Learns vectors for ids `< vocab` from `sequences` (documents of ids).
/// `progress(done, total)` is called once per document.
pub fn train(
    sequences: &[Vec<u32>],
    vocab: usize,
    cfg: &SkipGram,
    seed: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<TokenVectors, String> {
    let dim = cfg.dim;
    if dim == 0 || cfg.window == 0 || cfg.epochs == 0 {
        return Err("focus_dim, focus_window and focus_epochs must be at least 1".into());
    }
    let mut counts = vec![0u64; vocab];
    for &id in sequences.iter().flatten() {
        let slot = counts
            .get_mut(id as usize)
            .ok_or_else(|| format!("token id {id} is outside the vocabulary of {vocab}"))?;
        *slot += 1;
    }
    let kept = |id: u32| counts[id as usize] >= cfg.min_count;
    let total: u64 = counts.iter().filter(|&&c| c >= cfg.min_count).sum();
    let mut vectors = TokenVectors {
        dim,
        vectors: vec![0.0; vocab * dim],
        counts: counts.clone(),
        min_count: cfg.min_count,
    };
    if total == 0 {
        return Ok(vectors);
    }

    // Negatives in proportion to count^0.75.
    let weights: Vec<f64> = counts
        .iter()
        .map(|&c| if c >= cfg.min_count { (c as f64).powf(0.75) } else { 0.0 })
        .collect();
    let weight_sum: f64 = weights.iter().sum();
    let mut noise = Vec::with_capacity(NOISE_TABLE);
    let mut cumulative = 0.0;
    for (id, w) in weights.iter().enumerate() {
        cumulative += w;
        let until = ((cumulative / weight_sum) * NOISE_TABLE as f64).round() as usize;
        while noise.len() < until.min(NOISE_TABLE) {
            noise.push(id as u32);
        }
    }

    let mut rng = Rng::new(seed);
    let input = &mut vectors.vectors;
    for v in input.iter_mut() {
        *v = ((rng.uniform() - 0.5) / dim as f64) as f32;
    }
    let mut output = vec![0f32; vocab * dim];
    let keep_probability: Vec<f64> = counts
        .iter()
        .map(|&c| {
            let t = cfg.subsample * total as f64;
            if cfg.subsample <= 0.0 || c == 0 {
                1.0
            } else {
                ((c as f64 / t).sqrt() + 1.0) * t / c as f64
            }
        })
        .collect();

    let steps = total * cfg.epochs as u64;
    let mut seen = 0u64;
    let mut gradient = vec![0f32; dim];
    let mut kept_ids = Vec::new();
    let documents = sequences.len() as u64 * cfg.epochs as u64;
    let mut document = 0;
    for _ in 0..cfg.epochs {
        for sequence in sequences {
            document += 1;
            progress(document, documents);
            kept_ids.clear();
            for &id in sequence {
                if kept(id) {
                    seen += 1;
                    if rng.uniform() < keep_probability[id as usize] {
                        kept_ids.push(id as usize);
                    }
                }
            }
            // Linear decay over the whole run, as word2vec.
            let lr = cfg.learning_rate * (1.0 - seen as f32 / (steps + 1) as f32).max(1e-4);
            for (pos, &centre) in kept_ids.iter().enumerate() {
                let reach = 1 + rng.below(cfg.window);
                let from = pos.saturating_sub(reach);
                let to = (pos + reach).min(kept_ids.len() - 1);
                for (c, &context) in kept_ids.iter().enumerate().take(to + 1).skip(from) {
                    if c == pos {
                        continue;
                    }
                    let l1 = &mut input[context * dim..(context + 1) * dim];
                    gradient.iter_mut().for_each(|g| *g = 0.0);
                    for n in 0..=cfg.negatives {
                        let (target, label) = if n == 0 {
                            (centre, 1.0)
                        } else {
                            let t = noise[rng.below(noise.len())] as usize;
                            if t == centre {
                                continue;
                            }
                            (t, 0.0)
                        };
                        let l2 = &mut output[target * dim..(target + 1) * dim];
                        let dot: f32 = l1.iter().zip(l2.iter()).map(|(a, b)| a * b).sum();
                        let g = (label - sigmoid(dot)) * lr;
                        for ((gr, o), i) in gradient.iter_mut().zip(l2.iter_mut()).zip(l1.iter()) {
                            *gr += g * *o;
                            *o += g * i;
                        }
                    }
                    for (i, g) in l1.iter_mut().zip(&gradient) {
                        *i += g;
                    }
                }
            }
        }
    }
    // Ids below min_count keep no vector: zero them so nothing reads noise.
    for (id, &c) in counts.iter().enumerate() {
        if c < cfg.min_count {
            input[id * dim..(id + 1) * dim].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    /// Two topics: ids 0..10 only ever appear among each other, ids 10..20
    /// likewise.
    fn two_topics(rng: &mut Rng) -> Vec<Vec<u32>> {
        (0..400)
            .map(|i| {
                let base = if i % 2 == 0 { 0 } else { 10 };
                (0..30).map(|_| base + rng.below(10) as u32).collect()
            })
            .collect()
    }

    #[test]
    fn tokens_sharing_contexts_end_up_closer_than_tokens_that_never_meet() {
        let text = two_topics(&mut Rng::new(3));
        let cfg = SkipGram {
            dim: 16,
            subsample: 0.0,
            epochs: 2,
            ..SkipGram::default()
        };
        let v = train(&text, 25, &cfg, 1, &mut |_, _| {}).unwrap();
        let same = cosine(v.get(1).unwrap(), v.get(2).unwrap());
        let apart = cosine(v.get(1).unwrap(), v.get(12).unwrap());
        assert!(same > apart + 0.3, "same topic {same}, other topic {apart}");
        assert!(v.get(22).is_none(), "an id that never occurs has no vector");
        let again = train(&text, 25, &cfg, 1, &mut |_, _| {}).unwrap();
        assert_eq!(v.vectors, again.vectors, "seeded: the same vectors");
    }

    #[test]
    fn an_id_past_the_vocabulary_is_refused() {
        let err = train(&[vec![1, 30]], 25, &SkipGram::default(), 0, &mut |_, _| {}).unwrap_err();
        assert!(err.contains("token id 30"), "{err}");
    }
}
