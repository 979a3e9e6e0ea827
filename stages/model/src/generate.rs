//! Text generation: greedy or sampled (temperature, top-k, top-p),
//! repetition penalty, stop tokens, a seed; with or without the KV cache.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::llama::{KvCache, Llama, Rope};

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// > 1 discourages tokens already in the sequence (CTRL's formulation).
    pub repetition_penalty: f64,
    pub max_new_tokens: usize,
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            max_new_tokens: 32,
            stop_tokens: Vec::new(),
            seed: 0,
        }
    }
}

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from one row of logits.
pub fn pick(logits: &mut [f32], history: &[u32], s: &Sampling, rng_state: &mut u64) -> u32 {
    if s.repetition_penalty != 1.0 {
        for &t in history {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / s.repetition_penalty as f32
                } else {
                    *l * s.repetition_penalty as f32
                };
            }
        }
    }
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = s.top_k {
        order.truncate(k.max(1));
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| ((logits[i] as f64 - max) / s.temperature).exp())
        .collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if let Some(top_p) = s.top_p {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        order.truncate(keep);
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
    }
    let mut rng = Rng(*rng_state);
    let u = rng.uniform();
    *rng_state = rng.0;
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return order[i] as u32;
        }
    }
    order[order.len() - 1] as u32
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn last_logits(logits: Tensor<3>) -> Vec<f32> {
    let [_, t, v] = logits.dims();
    logits
        .narrow(1, t - 1, 1)
        .reshape([v])
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), device)
}

/// Generates a continuation of one prompt; returns only the new tokens.
/// With `use_cache`, each step feeds one token and reuses earlier keys and
/// values; without, each step recomputes the whole sequence (the reference
/// the cache must agree with).
pub fn generate(
    model: &Llama,
    rope: &Rope,
    prompt: &[u32],
    s: &Sampling,
    use_cache: bool,
    device: &Device,
) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    let mut rng = s.seed ^ 0x2545_f491_4f6c_dd1d;
    let mut cache = KvCache::new(model.layers.len());
    let mut out = Vec::new();
    for step in 0..s.max_new_tokens {
        let logits = if use_cache {
            let feed = if step == 0 { &seq[..] } else { &seq[seq.len() - 1..] };
            model.forward(ids_tensor(feed, device), rope, Some(&mut cache))
        } else {
            model.forward(ids_tensor(&seq, device), rope, None)
        };
        let mut row = last_logits(logits);
        let next = pick(&mut row, &seq, s, &mut rng);
        seq.push(next);
        out.push(next);
        if s.stop_tokens.contains(&next) {
            break;
        }
    }
    out
}

/// Generates continuations of several prompts of different lengths at once,
/// each as `generate` would alone: prompts are left-padded and the padding
/// is hidden from attention. Row `i` samples with seed `s.seed + i`; each row
/// stops at its own stop token.
pub fn generate_batch(
    model: &Llama,
    rope: &Rope,
    prompts: &[Vec<u32>],
    s: &Sampling,
    device: &Device,
) -> Vec<Vec<u32>> {
    let b = prompts.len();
    if b == 0 {
        return Vec::new();
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * width);
    let mut pad = Vec::with_capacity(b * width);
    for p in prompts {
        ids.extend(std::iter::repeat_n(0i64, width - p.len()).chain(p.iter().map(|&i| i as i64)));
        pad.extend((0..width).map(|j| j < width - p.len()));
    }
    let mut padding = Tensor::<2, Bool>::from_data(TensorData::new(pad, [b, width]), device);
    let mut feed = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, width]), device);
    let mut cache = KvCache::new(model.layers.len());
    let mut histories: Vec<Vec<u32>> = prompts.to_vec();
    let mut rngs: Vec<u64> = (0..b as u64).map(|i| (s.seed + i) ^ 0x2545_f491_4f6c_dd1d).collect();
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..s.max_new_tokens {
        let logits = model.forward_padded(feed, rope, Some(&mut cache), Some(&padding));
        let [_, t, v] = logits.dims();
        let last: Vec<f32> = logits
            .narrow(1, t - 1, 1)
            .reshape([b * v])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        let mut next = Vec::with_capacity(b);
        for (i, row) in last.chunks(v).enumerate() {
            let token = if done[i] {
                0
            } else {
                let mut row = row.to_vec();
                let t = pick(&mut row, &histories[i], s, &mut rngs[i]);
                histories[i].push(t);
                out[i].push(t);
                done[i] = s.stop_tokens.contains(&t);
                t
            };
            next.push(token as i64);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        feed = Tensor::from_data(TensorData::new(next, [b, 1]), device);
        padding = Tensor::cat(
            vec![
                padding,
                Tensor::<2, Bool>::from_data(TensorData::new(vec![false; b], [b, 1]), device),
            ],
            1,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_top_k_1_matches_greedy() {
        let s = Sampling {
            temperature: 0.7,
            top_k: Some(1),
            ..Sampling::default()
        };
        let mut state = 1;
        assert_eq!(pick(&mut [0.1, 2.0, -1.0], &[], &s, &mut state), 1);
        assert_eq!(pick(&mut [0.1, 2.0, -1.0], &[], &Sampling::default(), &mut state), 1);
    }

    #[test]
    fn repetition_penalty_can_flip_the_choice() {
        let s = Sampling {
            repetition_penalty: 3.0,
            ..Sampling::default()
        };
        let mut state = 1;
        assert_eq!(pick(&mut [1.0, 2.0], &[1], &s, &mut state), 0);
    }

    #[test]
    fn sampling_is_reproducible_with_a_seed() {
        let s = Sampling {
            temperature: 1.0,
            ..Sampling::default()
        };
        let draw = |seed: u64| {
            let mut state = seed;
            (0..20)
                .map(|_| pick(&mut [0.0, 0.0, 0.0, 0.0], &[], &s, &mut state))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
