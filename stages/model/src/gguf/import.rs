//! A GGUF file → an HF model folder: `config.json` from the `llama.*` keys,
//! `model.safetensors` with every tensor dequantised (f32, or bf16 on
//! request) under its HF name with llama.cpp's Q/K permutation undone, and
//! the tokenizer files from `tokenizer.ggml.*` (see `vocab`). Tensors are
//! dequantised and written one at a time, so memory stays at one tensor.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use super::file::{GgufFile, MetaValue, TensorInfo};
use super::names::{gguf_name, hf_name, permuted_heads, unpermute};
use super::quants::encode_float;
use super::vocab;
use crate::config::LlamaConfig;
use crate::disk_dtype::DiskDtype;
use crate::hf::expected_tensors;
use crate::safetensors_out::SafetensorsWriter;
use crate::ModelError;

/// What an import did, for the stage's log and stats.
#[derive(Debug, Clone)]
pub struct Imported {
    pub config: LlamaConfig,
    pub tensors: usize,
    /// Tensor count per stored ggml type (`Q4_1: 210`).
    pub types: BTreeMap<String, usize>,
    pub tokenizer: String,
}

fn bad(f: &GgufFile, message: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: f.path.clone(),
        message: message.into(),
    }
}

/// `llama.*` metadata as an HF LlamaConfig.
pub fn config_of(f: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let arch = f
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| bad(f, "no `general.architecture`"))?;
    if arch != "llama" {
        return Err(bad(
            f,
            format!("general.architecture is `{arch}`; babelflow imports `llama` GGUF files (LLaMA, Mistral, SmolLM, TinyLlama, ...)"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let num = |k: &str| f.get(&key(k)).and_then(MetaValue::as_u64).map(|v| v as usize);
    let need = |k: &str| num(k).ok_or_else(|| bad(f, format!("no `{}` in the file", key(k))));
    let float = |k: &str| f.get(&key(k)).and_then(MetaValue::as_f64);
    let embed = f
        .tensor("token_embd.weight")
        .ok_or_else(|| bad(f, "no `token_embd.weight` tensor"))?;
    let vocab_size = num("vocab_size").unwrap_or(embed.dims.get(1).copied().unwrap_or(0) as usize);
    let (hidden, heads) = (need("embedding_length")?, need("attention.head_count")?);
    let head_dim = num("attention.key_length").or(num("rope.dimension_count"));
    let mut config = LlamaConfig::tiny(vocab_size, hidden, need("block_count")?, heads, heads);
    config.intermediate_size = need("feed_forward_length")?;
    config.num_key_value_heads = Some(num("attention.head_count_kv").unwrap_or(heads));
    config.head_dim = head_dim.filter(|&d| d != hidden / heads);
    config.max_position_embeddings = num("context_length").unwrap_or(2048);
    config.rms_norm_eps = float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5);
    config.rope_theta = float("rope.freq_base").unwrap_or(10000.0);
    config.tie_word_embeddings = f.tensor("output.weight").is_none();
    config.attention_bias = f.tensor("blk.0.attn_q.bias").is_some();
    config.mlp_bias = f.tensor("blk.0.ffn_gate.bias").is_some();
    config.bos_token_id = f
        .get("tokenizer.ggml.bos_token_id")
        .and_then(MetaValue::as_u64)
        .map(|v| v as u32);
    config.eos_token_id = f
        .get("tokenizer.ggml.eos_token_id")
        .and_then(MetaValue::as_u64)
        .map(Value::from);
    config.rope_scaling = rope_scaling(f, &config, &key)?;
    // Values stored as f32 read back with a few decimals of noise (1e-5 as
    // 9.999999747378752e-06): keep the f32 value, as transformers does.
    config.validate(&f.path)?;
    Ok(config)
}

/// `rope_scaling` from `*.rope.scaling.*`, or from the `rope_freqs.weight`
/// factors LLaMA-3.x files carry (fitted back to the llama3 parameters and
/// checked to reproduce every factor).
fn rope_scaling(f: &GgufFile, config: &LlamaConfig, key: &dyn Fn(&str) -> String) -> Result<Option<Value>, ModelError> {
    let kind = f.get(&key("rope.scaling.type")).and_then(MetaValue::as_str);
    let factor = f.get(&key("rope.scaling.factor")).and_then(MetaValue::as_f64);
    match kind {
        None | Some("none") => {}
        Some("linear") => return Ok(Some(json!({"rope_type": "linear", "factor": factor.unwrap_or(1.0)}))),
        Some(other) => {
            return Err(bad(
                f,
                format!(
                    "{} `{other}` is not supported (babelflow computes linear and llama3 rope scaling)",
                    key("rope.scaling.type")
                ),
            ))
        }
    }
    let Some(t) = f.tensor("rope_freqs.weight") else {
        return Ok(None);
    };
    let factors = f.dequantize(t)?;
    let fitted = fit_llama3(config, &factors).ok_or_else(|| {
        bad(
            f,
            "rope_freqs.weight holds rope factors that are not LLaMA-3's scaling; babelflow cannot compute them",
        )
    })?;
    Ok(Some(fitted))
}

/// The llama3 `rope_scaling` whose per-frequency factors are `factors`.
/// Only old/low and old/high enter the formula, so
/// `original_max_position_embeddings` is fixed at 8192 and the two
/// frequency factors are solved from the transition band.
pub fn fit_llama3(config: &LlamaConfig, factors: &[f32]) -> Option<Value> {
    let hd = config.head_dim();
    let waves: Vec<f64> = (0..hd / 2)
        .map(|i| 2.0 * std::f64::consts::PI * config.rope_theta.powf((2 * i) as f64 / hd as f64))
        .collect();
    let factors: Vec<f64> = factors.iter().map(|&x| x as f64).collect();
    if factors.len() != waves.len() {
        return None;
    }
    let factor = factors.iter().cloned().fold(1.0, f64::max);
    let near = |a: f64, b: f64| (a - b).abs() <= 1e-4 * a.abs().max(1.0);
    // s = (1/f - 1/factor) / (1 - 1/factor), linear in 1/wavelength.
    let band: Vec<(f64, f64)> = factors
        .iter()
        .zip(&waves)
        .filter(|(f, _)| !near(**f, 1.0) && !near(**f, factor))
        .map(|(f, w)| (1.0 / w, (1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor)))
        .collect();
    let (inv_low, inv_high) = if band.len() >= 2 {
        let ((x1, s1), (x2, s2)) = (band[0], band[band.len() - 1]);
        let slope = (s2 - s1) / (x2 - x1);
        let x0 = x1 - s1 / slope;
        (x0, x0 + 1.0 / slope)
    } else {
        // No band to fit: put its edges halfway between the neighbours.
        let last_one = waves
            .iter()
            .zip(&factors)
            .filter(|(_, f)| near(**f, 1.0))
            .map(|(w, _)| *w)
            .fold(0.0, f64::max);
        let first_full = waves
            .iter()
            .zip(&factors)
            .filter(|(_, f)| near(**f, factor))
            .map(|(w, _)| *w)
            .fold(f64::INFINITY, f64::min);
        let edge = (last_one * first_full).sqrt();
        (1.0 / edge, 1.0 / edge * 1.0000001)
    };
    let old = 8192.0;
    let (low, high) = (old * inv_low, old * inv_high);
    let scaling = json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                         "high_freq_factor": high, "original_max_position_embeddings": old});
    // Check: the fitted parameters give back every stored factor.
    let (low_w, high_w) = (old / low, old / high);
    let ok = waves.iter().zip(&factors).all(|(&w, &f)| {
        let want = if w < high_w {
            1.0
        } else if w > low_w {
            factor
        } else {
            let s = (old / w - low) / (high - low);
            1.0 / ((1.0 - s) / factor + s)
        };
        near(want, f)
    });
    ok.then_some(scaling)
}

/// Imports `gguf` into the HF folder `out`, weights as `dtype`.
pub fn import(
    gguf: &Path,
    out: &Path,
    dtype: DiskDtype,
    progress: &dyn Fn(usize, usize),
) -> Result<Imported, ModelError> {
    let f = GgufFile::open(gguf)?;
    let config = config_of(&f)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let expected = expected_tensors(&config);
    let mut infos: Vec<(&TensorInfo, String, Vec<usize>)> = Vec::new();
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for (hf, shape) in &expected {
        let name = gguf_name(hf).unwrap_or_default();
        let t = f
            .tensor(&name)
            .ok_or_else(|| bad(&f, format!("tensor `{name}` ({hf}) is missing")))?;
        if t.shape() != *shape {
            return Err(bad(
                &f,
                format!(
                    "tensor `{name}` has shape {:?}; the metadata implies {shape:?}",
                    t.shape()
                ),
            ));
        }
        *types.entry(t.ty.name().to_string()).or_default() += 1;
        infos.push((t, hf.clone(), shape.clone()));
    }
    if let Some(extra) = f.tensors.iter().find(|t| {
        t.name != "rope_freqs.weight" && hf_name(&t.name).is_none_or(|hf| !expected.iter().any(|(e, _)| *e == hf))
    }) {
        return Err(bad(
            &f,
            format!(
                "unexpected tensor `{}` (not part of a llama model with this metadata)",
                extra.name
            ),
        ));
    }
    let listing: Vec<(String, Vec<usize>)> = infos.iter().map(|(_, hf, shape)| (hf.clone(), shape.clone())).collect();
    let weights_path = out.join("model.safetensors");
    let mut writer =
        SafetensorsWriter::create(&weights_path, &listing, dtype.safetensors()).map_err(io(&weights_path))?;
    let (heads, kv) = (config.num_attention_heads, config.kv_heads());
    for (n, (t, hf, shape)) in infos.iter().enumerate() {
        progress(n, infos.len());
        let mut values = f.dequantize(t)?;
        if let Some(h) = permuted_heads(hf, heads, kv) {
            let rows = shape[0];
            let cols = shape.get(1).copied().unwrap_or(1);
            values = unpermute(&values, rows, cols, h);
        }
        let bytes = encode_float(dtype.codec(), &values);
        writer.out.write_all(&bytes).map_err(io(&weights_path))?;
    }
    writer.out.flush().map_err(io(&weights_path))?;

    let mut cfg = config.to_hf_json();
    cfg["torch_dtype"] = dtype.torch_name().into();
    let write_json = |name: &str, value: &Value| -> Result<(), ModelError> {
        let path = out.join(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap_or_default()).map_err(io(&path))
    };
    write_json("config.json", &cfg)?;
    let tok = vocab::to_hf(&f).map_err(|e| bad(&f, e))?;
    write_json("tokenizer.json", &tok.tokenizer_json)?;
    write_json("tokenizer_config.json", &tok.tokenizer_config)?;
    write_json("generation_config.json", &tok.generation_config)?;
    Ok(Imported {
        config,
        tensors: infos.len(),
        types,
        tokenizer: tok.summary,
    })
}
