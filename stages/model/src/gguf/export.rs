//! An HF model folder → a GGUF file llama.cpp loads: `llama.*` metadata
//! from config.json, `tokenizer.ggml.*` from the tokenizer files (see
//! `vocab`), every tensor under its llama.cpp name with Q/K permuted as
//! `convert_hf_to_gguf.py` does, in F32, F16, BF16 or Q8_0. As in
//! llama.cpp's converter, 1-D tensors (norms, biases) stay F32, and a
//! matrix whose rows are not whole Q8_0 blocks is written F16.

use std::path::Path;

use burn::tensor::{DType, Device};
use serde_json::Value;

use super::file::{write, MetaValue, TensorOut};
use super::names::{gguf_name, permute, permuted_heads};
use super::quants::{encode_float, quantize_q8_0, GgmlType};
use super::vocab::{self, SpecialIds};
use crate::config::{LlamaConfig, RopeScaling};
use crate::hf::{expected_tensors, weight_files};
use crate::weights::Weights;
use crate::ModelError;

/// The file types a user may ask for.
pub const TYPES: &[&str] = &["f32", "f16", "bf16", "q8_0"];

pub fn parse_type(name: &str) -> Option<GgmlType> {
    match name {
        "f32" => Some(GgmlType::F32),
        "f16" => Some(GgmlType::F16),
        "bf16" => Some(GgmlType::BF16),
        "q8_0" => Some(GgmlType::Q8_0),
        _ => None,
    }
}

/// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`).
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// What an export wrote.
pub struct Exported {
    pub tensors: usize,
    pub bytes: u64,
    /// Tensor count per stored ggml type (`Q8_0: 7`).
    pub types: std::collections::BTreeMap<String, usize>,
    /// Matrices stored in another type than asked: (tensor, stored type, why).
    pub fallbacks: Vec<(String, String, String)>,
}

fn bad(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The llama3 per-frequency factors `convert_hf_to_gguf.py` writes as
/// `rope_freqs.weight`.
fn llama3_factors(config: &LlamaConfig) -> Option<Vec<f32>> {
    let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: old,
    } = config.rope_scaling().ok()?
    else {
        return None;
    };
    let hd = config.head_dim();
    let (low_w, high_w) = (old / low_freq_factor, old / high_freq_factor);
    Some(
        (0..hd / 2)
            .map(|i| {
                let freq = 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / hd as f32);
                let w = 2.0 * std::f64::consts::PI / freq as f64;
                if w < high_w {
                    1.0
                } else if w > low_w {
                    factor as f32
                } else {
                    let s = (old / w - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    (1.0 / ((1.0 - s) / factor + s)) as f32
                }
            })
            .collect(),
    )
}

/// Exports the HF model folder `dir` (config.json, safetensors, tokenizer
/// files) to the GGUF file `out`, matrices in `ty`.
pub fn export(
    dir: &Path,
    out: &Path,
    ty: GgmlType,
    name: &str,
    specials: &SpecialIds,
    progress: &dyn Fn(usize, usize),
) -> Result<Exported, ModelError> {
    let config = LlamaConfig::load(&dir.join("config.json"))?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer: Value = serde_json::from_slice(&std::fs::read(&tok_path).map_err(|source| ModelError::Io {
        path: tok_path.clone(),
        source,
    })?)
    .map_err(|e| bad(&tok_path, format!("not JSON: {e}")))?;

    let mut meta: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), MetaValue::Str("llama".into())),
        ("general.name".into(), MetaValue::Str(name.into())),
        ("general.file_type".into(), MetaValue::U32(file_type(ty))),
    ];
    if ty == GgmlType::Q8_0 {
        meta.push(("general.quantization_version".into(), MetaValue::U32(2)));
    }
    let c = &config;
    let u = |v: usize| MetaValue::U32(v as u32);
    meta.extend([
        ("llama.vocab_size".into(), u(c.vocab_size)),
        ("llama.context_length".into(), u(c.max_position_embeddings)),
        ("llama.embedding_length".into(), u(c.hidden_size)),
        ("llama.block_count".into(), u(c.num_hidden_layers)),
        ("llama.feed_forward_length".into(), u(c.intermediate_size)),
        ("llama.attention.head_count".into(), u(c.num_attention_heads)),
        ("llama.attention.head_count_kv".into(), u(c.kv_heads())),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            MetaValue::F32(c.rms_norm_eps as f32),
        ),
        ("llama.rope.freq_base".into(), MetaValue::F32(c.rope_theta as f32)),
        ("llama.rope.dimension_count".into(), u(c.head_dim())),
        ("llama.attention.key_length".into(), u(c.head_dim())),
        ("llama.attention.value_length".into(), u(c.head_dim())),
    ]);
    match c.rope_scaling().map_err(|e| bad(dir, e))? {
        RopeScaling::None | RopeScaling::Llama3 { .. } => {}
        RopeScaling::Linear { factor } => {
            meta.push(("llama.rope.scaling.type".into(), MetaValue::Str("linear".into())));
            meta.push(("llama.rope.scaling.factor".into(), MetaValue::F32(factor as f32)));
        }
        RopeScaling::Dynamic { .. } => {
            return Err(bad(
                dir,
                "rope_scaling `dynamic` has no GGUF form llama.cpp computes; export the model without it",
            ))
        }
    }
    meta.extend(vocab::from_hf(&tokenizer, specials).map_err(|e| bad(&tok_path, e))?);

    let (files, _) = weight_files(dir)?;
    let mut weights = Weights::open(dir, &files, DType::F32)?;
    let device = Device::flex();
    let expected = expected_tensors(&config);
    let factors = llama3_factors(&config);
    // The infos first (the header needs every size), then each tensor read,
    // permuted and encoded when its turn comes.
    let mut infos = Vec::with_capacity(expected.len() + 1);
    if let Some(f) = &factors {
        infos.push(TensorOut {
            name: "rope_freqs.weight".into(),
            dims: vec![f.len() as u64],
            ty: GgmlType::F32,
        });
    }
    let skip = infos.len();
    let mut fallbacks = Vec::new();
    for (hf, shape) in &expected {
        let cols = shape.get(1).copied().unwrap_or(1);
        let name = gguf_name(hf).unwrap_or_else(|| hf.clone());
        let stored = if shape.len() == 1 {
            GgmlType::F32
        } else if ty == GgmlType::Q8_0 && !cols.is_multiple_of(32) {
            // As convert_hf_to_gguf.py does: a row must be whole blocks.
            fallbacks.push((
                name.clone(),
                GgmlType::F16.name().to_string(),
                format!("its rows of {cols} values are not whole Q8_0 blocks of 32"),
            ));
            GgmlType::F16
        } else {
            ty
        };
        infos.push(TensorOut {
            name,
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            ty: stored,
        });
    }
    let (heads, kv) = (config.num_attention_heads, config.kv_heads());
    let mut failure: Option<ModelError> = None;
    let mut data = |i: usize| -> std::io::Result<Vec<u8>> {
        if i < skip {
            return Ok(encode_float(GgmlType::F32, factors.as_deref().unwrap_or_default()));
        }
        let (hf, shape) = &expected[i - skip];
        progress(i - skip, expected.len());
        let values = read(&mut weights, hf, shape, &device).map_err(|e| {
            let message = e.to_string();
            failure = Some(e);
            std::io::Error::other(message)
        })?;
        let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
        let values = match permuted_heads(hf, heads, kv) {
            Some(h) => permute(&values, rows, cols, h),
            None => values,
        };
        Ok(match infos[i].ty {
            GgmlType::Q8_0 => quantize_q8_0(&values),
            other => encode_float(other, &values),
        })
    };
    let written = write(out, &meta, &infos, &mut data);
    if let Some(e) = failure {
        return Err(e);
    }
    written.map_err(|source| ModelError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut types = std::collections::BTreeMap::new();
    for t in &infos {
        *types.entry(t.ty.name().to_string()).or_default() += 1;
    }
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(Exported {
        tensors: infos.len(),
        bytes,
        types,
        fallbacks,
    })
}

/// One tensor as f32 values.
fn read(weights: &mut Weights, name: &str, shape: &[usize], device: &Device) -> Result<Vec<f32>, ModelError> {
    let data = match *shape {
        [n] => weights.take(name, [n], device)?.into_data(),
        [r, c] => weights.take(name, [r, c], device)?.into_data(),
        _ => return Err(bad(Path::new(name), "a tensor of unexpected rank")),
    };
    Ok(data.convert::<f32>().try_to_vec::<f32>().unwrap_or_default())
}
