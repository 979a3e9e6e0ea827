//! Growing the vocabulary of a model after `extend-vocab`: existing rows of
//! the embedding (and of an untied head) are kept bit for bit; new rows start
//! from a named strategy:
//! - `mean`: the mean of all existing rows, plus optional Gaussian noise;
//! - `subword-mean`: the mean of the rows of the pieces the *old* tokenizer
//!   splits the new token into (`base_pieces` in added_tokens.json).

use std::path::Path;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;

use crate::config::LlamaConfig;
use crate::llama::{Llama, Proj};
use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ResizeInit {
    Mean { noise: f64, seed: u64 },
    SubwordMean,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddedToken {
    pub id: usize,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub base_pieces: Vec<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AddedTokens {
    pub base_vocab_size: usize,
    pub vocab_size: usize,
    pub added: Vec<AddedToken>,
}

impl AddedTokens {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: format!("not an added_tokens.json from extend-vocab: {e}"),
        })
    }
}

/// `resized_vocab.json`, which `resize-vocab` leaves in the model folder it
/// writes (and training carries on): where the rows it added begin, for
/// `trainable: new-embeddings`.
pub const RESIZED_VOCAB: &str = "resized_vocab.json";

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, Deserialize)]
pub struct ResizedVocab {
    /// Rows the model had before (the first added row's id).
    pub base_vocab_size: usize,
    pub vocab_size: usize,
}

impl ResizedVocab {
    /// The record in model folder `dir`; `None` when the folder has none
    /// (the model was not resized).
    pub fn read(dir: &Path) -> Result<Option<ResizedVocab>, ModelError> {
        let path = dir.join(RESIZED_VOCAB);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ModelError::Io { path, source }),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| ModelError::Config {
            path,
            message: format!("not a {RESIZED_VOCAB} from resize-vocab: {e}"),
        })
    }

    pub fn write(&self, dir: &Path) -> Result<(), ModelError> {
        let path = dir.join(RESIZED_VOCAB);
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| ModelError::Io { path, source })
    }
}

/// Normal draws from a seeded generator (Box–Muller over SplitMix64).
struct Gauss(u64);

impl Gauss {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

/// Grows a `[old_rows, d]` matrix to `[new_rows, d]`.
pub fn grow_rows(
    old: &[f32],
    old_rows: usize,
    d: usize,
    new_rows: usize,
    added: &[AddedToken],
    init: ResizeInit,
) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(new_rows * d);
    out.extend_from_slice(&old[..old_rows * d]);
    let mut mean = vec![0f64; d];
    for r in 0..old_rows {
        for (m, x) in mean.iter_mut().zip(&old[r * d..(r + 1) * d]) {
            *m += *x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= old_rows.max(1) as f64);
    let mut gauss = Gauss(match init {
        ResizeInit::Mean { seed, .. } => seed,
        ResizeInit::SubwordMean => 0,
    });
    for id in old_rows..new_rows {
        let pieces = added
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.base_pieces.as_slice())
            .unwrap_or(&[]);
        let row: Vec<f32> = match init {
            ResizeInit::SubwordMean if !pieces.is_empty() => {
                let mut acc = vec![0f64; d];
                for &p in pieces {
                    let p = p as usize;
                    if p >= old_rows {
                        return Err(format!("token {id}: piece {p} is not an existing row (< {old_rows})"));
                    }
                    for (a, x) in acc.iter_mut().zip(&old[p * d..(p + 1) * d]) {
                        *a += *x as f64;
                    }
                }
                acc.iter().map(|a| (a / pieces.len() as f64) as f32).collect()
            }
            ResizeInit::Mean { noise, .. } => mean.iter().map(|m| (m + noise * gauss.normal()) as f32).collect(),
            // A new token the old tokenizer cannot split: fall back to the mean.
            ResizeInit::SubwordMean => mean.iter().map(|m| *m as f32).collect(),
        };
        out.extend(row);
    }
    Ok(out)
}

fn rows_of(t: Tensor<2>) -> (usize, usize, Vec<f32>) {
    let [r, d] = t.dims();
    (
        r,
        d,
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default(),
    )
}

/// Resizes embeddings (and an untied head) to `added.vocab_size` rows.
pub fn resize(
    model: Llama,
    config: &mut LlamaConfig,
    added: &AddedTokens,
    init: ResizeInit,
    device: &Device,
) -> Result<Llama, ModelError> {
    let bad = |m: String| ModelError::Config {
        path: "added_tokens.json".into(),
        message: m,
    };
    if added.base_vocab_size != config.vocab_size {
        return Err(bad(format!(
            "the extended tokenizer was built on a vocabulary of {}, the model has {}",
            added.base_vocab_size, config.vocab_size
        )));
    }
    let new_rows = added.vocab_size;
    let grow = |t: Tensor<2>| -> Result<Tensor<2>, ModelError> {
        let (r, d, data) = rows_of(t);
        let grown = grow_rows(&data, r, d, new_rows, &added.added, init).map_err(bad)?;
        Ok(Tensor::from_data(TensorData::new(grown, [new_rows, d]), device))
    };
    let embed = grow(model.embed_tokens.val())?;
    let head = match &model.lm_head {
        Some(h) => Some(Proj {
            weight: Param::from_tensor(grow(h.weight.val())?),
            bias: None,
        }),
        None => None,
    };
    config.vocab_size = new_rows;
    Ok(Llama {
        embed_tokens: Param::from_tensor(embed),
        lm_head: head,
        ..model
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_rows_stay_and_subword_mean_rows_are_means_of_their_pieces() {
        let old = vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]; // 3 rows of width 2
        let added = vec![AddedToken {
            id: 3,
            token: "ab".into(),
            base_pieces: vec![0, 2],
        }];
        let grown = grow_rows(&old, 3, 2, 5, &added, ResizeInit::SubwordMean).unwrap();
        assert_eq!(&grown[..6], &old[..]);
        assert_eq!(&grown[6..8], &[3.0, 4.0]); // mean of rows 0 and 2
        assert_eq!(&grown[8..10], &[3.0, 4.0]); // no pieces: mean of all rows
        let noisy = grow_rows(&old, 3, 2, 4, &[], ResizeInit::Mean { noise: 0.1, seed: 1 }).unwrap();
        assert_eq!(&noisy[..6], &old[..]);
        assert!(noisy[6] != 3.0 && (noisy[6] - 3.0).abs() < 1.0);
    }
}
