//! Growing the vocabulary of a model after `extend-vocab`: what
//! added_tokens.json says was added, the resize itself (existing rows of the
//! embedding and of an untied head kept bit for bit), and the record it
//! leaves for `trainable: new-embeddings`. How the new rows start is
//! babelflow-vocab's `resize-vocab` kind.

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

/// Which matrix new rows are grown for: the input embedding, or the output
/// head when it is not tied to the embedding (a tied head is the embedding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matrix {
    Embedding,
    Head,
}

/// `(matrix, old values, d)` → the added rows' values (see [`resize`]).
pub type NewRows<'a> = dyn FnMut(Matrix, &[f32], usize) -> Result<Vec<f32>, String> + 'a;

/// A `[rows, d]` matrix's values as f32, row-major.
fn rows_of(t: Tensor<2>) -> (usize, usize, Vec<f32>) {
    let [r, d] = t.dims();
    (
        r,
        d,
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default(),
    )
}

/// Resizes the embedding (and an untied head) to `added.vocab_size` rows.
/// Existing rows are kept bit for bit; `new_rows(matrix, old, d)` gives the
/// `(vocab_size - base_vocab_size) × d` values of the added rows from the
/// old `[base_vocab_size, d]` matrix (how they start is the caller's
/// choice: babelflow-vocab's inits).
pub fn resize(
    model: Llama,
    config: &mut LlamaConfig,
    added: &AddedTokens,
    device: &Device,
    new_rows: &mut NewRows,
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
    let vocab = added.vocab_size;
    let mut grow = |matrix: Matrix, t: Tensor<2>| -> Result<Tensor<2>, ModelError> {
        let (rows, d, mut data) = rows_of(t);
        let grown = new_rows(matrix, &data, d).map_err(bad)?;
        if grown.len() != (vocab - rows) * d {
            return Err(bad(format!(
                "{} new values for {} new rows of width {d}",
                grown.len(),
                vocab - rows
            )));
        }
        data.extend(grown);
        Ok(Tensor::from_data(TensorData::new(data, [vocab, d]), device))
    };
    let embed = grow(Matrix::Embedding, model.embed_tokens.val())?;
    let head = match &model.lm_head {
        Some(h) => Some(Proj {
            weight: Param::from_tensor(grow(Matrix::Head, h.weight.val())?),
            bias: None,
        }),
        None => None,
    };
    config.vocab_size = vocab;
    Ok(Llama {
        embed_tokens: Param::from_tensor(embed),
        lm_head: head,
        ..model
    })
}
