//! HF checkpoints in and out: `config.json` + `model.safetensors` (or shards
//! with `model.safetensors.index.json`), f32 / f16 / bf16 on disk. Tensor
//! names and layouts are HF's `LlamaForCausalLM`; babelflow's projections
//! already use HF's `[out, in]` layout and half-split rotary embedding, so
//! q/k need no permutation (the permutation exists between Meta's original
//! interleaved checkpoints and HF's, not here).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{DType, Device, Tensor};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::config::LlamaConfig;
use crate::gguf::quants::encode_float;
use crate::llama::{Attention, Block, Llama, Mlp, Proj, RmsNorm};
use crate::safetensors_out::SafetensorsWriter;
pub use crate::weights::HeldAs;
use crate::weights::Weights;
use crate::ModelError;

pub use crate::disk_dtype::DiskDtype;

/// What to do with pickled PyTorch weights, which babelflow does not read
/// (unpickling can run code, and safetensors is what the hub ships now).
pub const PICKLE_HINT: &str = "babelflow reads safetensors, not pickles: convert once with \
    `python -c \"from transformers import AutoModelForCausalLM as M; \
    M.from_pretrained('IN').save_pretrained('OUT', safe_serialization=True)\"` \
    (copy the tokenizer files along) and import OUT";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The weight files of a checkpoint folder: `model.safetensors`, or the
/// shards `model.safetensors.index.json` names, each checked to exist; and
/// the index's tensor → shard map, when there is one.
pub fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, String>), ModelError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() {
        return Ok((vec![single], BTreeMap::new()));
    }
    if !index.is_file() {
        let pickled = [
            "pytorch_model.bin",
            "pytorch_model.bin.index.json",
            "consolidated.00.pth",
        ]
        .into_iter()
        .find(|name| dir.join(name).is_file());
        let message = match pickled {
            Some(name) => format!(
                "no model.safetensors or model.safetensors.index.json in this folder, only {name}: pickled PyTorch weights; {PICKLE_HINT}"
            ),
            None => "no model.safetensors or model.safetensors.index.json in this folder".into(),
        };
        return Err(ModelError::Weights {
            path: dir.to_path_buf(),
            message,
        });
    }
    let bad = |message: String| ModelError::Weights {
        path: index.clone(),
        message,
    };
    let text = std::fs::read_to_string(&index).map_err(io(&index))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| bad("no `weight_map` (tensor name → shard file)".into()))?;
    let mut weight_map = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
        weight_map.insert(tensor.clone(), shard.to_string());
    }
    let mut shards: Vec<&String> = weight_map.values().collect();
    shards.sort();
    shards.dedup();
    let mut files = Vec::new();
    for shard in shards {
        let file = dir.join(shard);
        if !file.is_file() {
            return Err(bad(format!("names shard `{shard}`, which is not in {}", dir.display())));
        }
        files.push(file);
    }
    Ok((files, weight_map))
}

/// Every tensor a `LlamaForCausalLM` with this config has, with its shape.
pub fn expected_tensors(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, hd, h, kv, inter, v) = config.dims();
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d])];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![h * hd, d]),
            ("self_attn.k_proj.weight", vec![kv * hd, d]),
            ("self_attn.v_proj.weight", vec![kv * hd, d]),
            ("self_attn.o_proj.weight", vec![d, h * hd]),
            ("post_attention_layernorm.weight", vec![d]),
            ("mlp.gate_proj.weight", vec![inter, d]),
            ("mlp.up_proj.weight", vec![inter, d]),
            ("mlp.down_proj.weight", vec![d, inter]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
        if config.attention_bias {
            for (name, n) in [
                ("q_proj", h * hd),
                ("k_proj", kv * hd),
                ("v_proj", kv * hd),
                ("o_proj", d),
            ] {
                out.push((format!("{p}.self_attn.{name}.bias"), vec![n]));
            }
        }
        if config.mlp_bias {
            for (name, n) in [("gate_proj", inter), ("up_proj", inter), ("down_proj", d)] {
                out.push((format!("{p}.mlp.{name}.bias"), vec![n]));
            }
        }
    }
    out.push(("model.norm.weight".into(), vec![d]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![v, d]));
    }
    out
}

/// Checks a checkpoint folder from the safetensors headers alone (no
/// weights are read, so a 7B checkpoint is checked in milliseconds): the
/// index against the shards, every tensor the config implies present with
/// its shape and a readable dtype, nothing else but rotary tables. Returns
/// the weight files and the tensor count.
pub fn check_checkpoint(dir: &Path, config: &LlamaConfig) -> Result<(Vec<PathBuf>, usize), ModelError> {
    let (files, weight_map) = weight_files(dir)?;
    let mut found: BTreeMap<String, (Vec<usize>, Dtype, PathBuf)> = BTreeMap::new();
    for file in &files {
        let handle = std::fs::File::open(file).map_err(io(file))?;
        // SAFETY: read while the map lives; the headers are all we touch.
        let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(io(file))?;
        let st = SafeTensors::deserialize(&map).map_err(|e| ModelError::Weights {
            path: file.clone(),
            message: format!("not a safetensors file: {e}"),
        })?;
        for (name, view) in st.tensors() {
            found.insert(name, (view.shape().to_vec(), view.dtype(), file.clone()));
        }
    }
    let index = dir.join("model.safetensors.index.json");
    for (tensor, shard) in &weight_map {
        let holder = found
            .get(tensor)
            .map(|(_, _, f)| f.file_name().unwrap_or_default().to_string_lossy().into_owned());
        if holder.as_deref() != Some(shard.as_str()) {
            return Err(ModelError::Weights {
                path: index,
                message: format!(
                    "says tensor `{tensor}` is in `{shard}`, {}",
                    match holder {
                        Some(other) => format!("but it is in `{other}`"),
                        None => "which does not hold it".into(),
                    }
                ),
            });
        }
    }
    let expected = expected_tensors(config);
    let missing: Vec<&str> = expected
        .iter()
        .filter(|(name, _)| !found.contains_key(name))
        .map(|(name, _)| name.as_str())
        .collect();
    if let Some(first) = missing.first() {
        return Err(ModelError::Weights {
            path: dir.to_path_buf(),
            message: format!(
                "tensor `{first}` is missing ({} of the {} tensors config.json implies are in none of {})",
                missing.len(),
                expected.len(),
                files
                    .iter()
                    .map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    for (name, shape) in &expected {
        let (got, dtype, file) = &found[name];
        if got != shape {
            return Err(ModelError::Weights {
                path: file.clone(),
                message: format!("tensor `{name}` has shape {got:?}; config.json implies {shape:?}"),
            });
        }
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ModelError::Weights {
                path: file.clone(),
                message: format!("tensor `{name}` has dtype {dtype:?}; babelflow reads f32, f16 and bf16"),
            });
        }
    }
    let known: std::collections::BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let tied_head = |n: &str| config.tie_word_embeddings && n == "lm_head.weight";
    if let Some(extra) = found
        .keys()
        .find(|n| !known.contains(n.as_str()) && !n.ends_with("rotary_emb.inv_freq") && !tied_head(n))
    {
        return Err(ModelError::Weights {
            path: found[extra].2.clone(),
            message: format!("unexpected tensor `{extra}` (not part of LlamaForCausalLM with this config.json)"),
        });
    }
    Ok((files, found.len()))
}

/// Builds the model from a checkpoint's weights, tensor by tensor, checking
/// every name and shape.
pub fn build_model(mut weights: Weights, config: &LlamaConfig, device: &Device) -> Result<Llama, ModelError> {
    let w = &mut weights;
    let (d, hd, h, kv, inter, v) = config.dims();
    let proj = |w: &mut Weights, name: String, shape: [usize; 2], bias: bool| -> Result<Proj, ModelError> {
        let bias = match bias {
            true => {
                let name = name.replace(".weight", ".bias");
                Some(Param::from_tensor(w.take(&name, [shape[0]], device)?))
            }
            false => None,
        };
        Ok(Proj {
            weight: Param::from_tensor(w.take(&name, shape, device)?),
            bias,
        })
    };
    let (ab, mb) = (config.attention_bias, config.mlp_bias);
    let norm = |w: &mut Weights, name: String| -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm {
            weight: Param::from_tensor(w.take(&name, [d], device)?),
            eps: config.rms_norm_eps,
        })
    };
    let embed_tokens = Param::from_tensor(w.take("model.embed_tokens.weight", [v, d], device)?);
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        layers.push(Block {
            input_layernorm: norm(w, format!("{p}.input_layernorm.weight"))?,
            self_attn: Attention {
                q_proj: proj(w, format!("{p}.self_attn.q_proj.weight"), [h * hd, d], ab)?,
                k_proj: proj(w, format!("{p}.self_attn.k_proj.weight"), [kv * hd, d], ab)?,
                v_proj: proj(w, format!("{p}.self_attn.v_proj.weight"), [kv * hd, d], ab)?,
                o_proj: proj(w, format!("{p}.self_attn.o_proj.weight"), [d, h * hd], ab)?,
                n_heads: h,
                n_kv_heads: kv,
                head_dim: hd,
            },
            post_attention_layernorm: norm(w, format!("{p}.post_attention_layernorm.weight"))?,
            mlp: Mlp {
                gate_proj: proj(w, format!("{p}.mlp.gate_proj.weight"), [inter, d], mb)?,
                up_proj: proj(w, format!("{p}.mlp.up_proj.weight"), [inter, d], mb)?,
                down_proj: proj(w, format!("{p}.mlp.down_proj.weight"), [d, inter], mb)?,
            },
        });
    }
    let final_norm = norm(w, "model.norm.weight".into())?;
    let lm_head = if config.tie_word_embeddings {
        w.skip("lm_head.weight");
        None
    } else {
        Some(proj(w, "lm_head.weight".into(), [v, d], false)?)
    };
    w.finish()?;
    Ok(Llama {
        embed_tokens,
        embed_added: None,
        layers,
        norm: final_norm,
        lm_head,
        lm_head_added: None,
    })
}

/// The files beside tokenizer.json that say how the model's texts look
/// (special tokens, BOS/EOS, the chat template, generation defaults).
pub const TOKENIZER_COMPANIONS: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Copies the `TOKENIZER_COMPANIONS` that `from` has into `to`, so a model
/// made from another keeps its special tokens and chat template (and loads
/// in transformers with them).
pub fn carry_tokenizer_files(from: &Path, to: &Path) -> Result<(), ModelError> {
    for name in TOKENIZER_COMPANIONS {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// Loads an HF LLaMA folder: config.json + safetensors, weights in f32.
pub fn load(dir: &Path, device: &Device) -> Result<(LlamaConfig, Llama), ModelError> {
    load_in(dir, device, DType::F32)
}

/// Loads an HF LLaMA folder with every weight held in `dtype` (f32, bf16,
/// f16), read one tensor at a time straight into it: no copy of the whole
/// checkpoint ever sits beside the model.
pub fn load_in(dir: &Path, device: &Device, dtype: DType) -> Result<(LlamaConfig, Llama), ModelError> {
    load_held_as(dir, device, Box::new(move |_, _| dtype))
}

/// Loads an HF LLaMA folder with each tensor held in `held_as(name, rank)`,
/// by its name in the checkpoint (`model.layers.0.mlp.up_proj.weight`).
pub fn load_held_as(dir: &Path, device: &Device, held_as: HeldAs) -> Result<(LlamaConfig, Llama), ModelError> {
    let config = LlamaConfig::load(&dir.join("config.json"))?;
    let (files, _) = weight_files(dir)?;
    let model = build_model(Weights::open_held_as(dir, &files, held_as)?, &config, device)?;
    Ok((config, model))
}

/// A checkpoint's tensor name as the module path burn gives the parameter
/// (`model.layers.0.mlp.up_proj.weight` → `layers.0.mlp.up_proj.weight`,
/// `model.embed_tokens.weight` → `embed_tokens`): what `freeze` patterns
/// and parameter groups match.
pub fn module_path(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => "embed_tokens".to_string(),
        _ => name.strip_prefix("model.").unwrap_or(name).to_string(),
    }
}

/// One of a model's tensors, by reference: its values (for a LoRA-adapted
/// weight, base plus the adapter's product) are computed only when read.
enum Held<'a> {
    Vector(&'a Param<Tensor<1>>),
    Matrix(&'a Param<Tensor<2>>),
    /// A matrix held as two blocks of rows (`Llama::embed_added`).
    Rows(&'a Param<Tensor<2>>, &'a Param<Tensor<2>>),
}

impl Held<'_> {
    fn shape(&self) -> Vec<usize> {
        match self {
            Held::Vector(p) => p.base().dims().to_vec(),
            Held::Matrix(p) => p.base().dims().to_vec(),
            Held::Rows(a, b) => {
                let ([r1, d], [r2, _]) = (a.base().dims(), b.base().dims());
                vec![r1 + r2, d]
            }
        }
    }

    fn f32s(&self) -> Vec<f32> {
        let data = match self {
            Held::Vector(p) => p.val().into_data(),
            Held::Matrix(p) => p.val().into_data(),
            Held::Rows(a, b) => {
                let dtype = b.val().dtype();
                Tensor::cat(vec![crate::precision::in_dtype(a.val(), dtype), b.val()], 0).into_data()
            }
        };
        data.convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
    }
}

/// HF name → tensor, in the checkpoint's naming.
fn held_tensors<'a>(model: &'a Llama) -> BTreeMap<String, Held<'a>> {
    let mut out = BTreeMap::new();
    let rows = |first, added: &'a Option<Param<Tensor<2>>>| match added {
        Some(added) => Held::Rows(first, added),
        None => Held::Matrix(first),
    };
    out.insert(
        "model.embed_tokens.weight".into(),
        rows(&model.embed_tokens, &model.embed_added),
    );
    for (i, b) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let mut put = |name: &str, t| {
            out.insert(format!("{p}.{name}"), t);
        };
        put("input_layernorm.weight", Held::Vector(&b.input_layernorm.weight));
        put(
            "post_attention_layernorm.weight",
            Held::Vector(&b.post_attention_layernorm.weight),
        );
        let a = &b.self_attn;
        let m = &b.mlp;
        for (name, proj) in [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ] {
            put(&format!("{name}.weight"), Held::Matrix(&proj.weight));
            if let Some(bias) = &proj.bias {
                put(&format!("{name}.bias"), Held::Vector(bias));
            }
        }
    }
    out.insert("model.norm.weight".into(), Held::Vector(&model.norm.weight));
    if let Some(head) = &model.lm_head {
        out.insert("lm_head.weight".into(), rows(&head.weight, &model.lm_head_added));
    }
    out
}

/// HF name → (shape, f32 values) of every tensor, LoRA merged.
pub fn named_tensors(model: &Llama) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    held_tensors(model)
        .into_iter()
        .map(|(name, t)| (name, (t.shape(), t.f32s())))
        .collect()
}

/// Writes `config.json` and `model.safetensors` (one file) into `dir`, one
/// tensor at a time: the file's bytes never sit in memory whole, and a
/// LoRA-adapted weight is merged only while it is written.
pub fn save(dir: &Path, config: &LlamaConfig, model: &Llama, dtype: DiskDtype) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut cfg = config.to_hf_json();
    cfg["torch_dtype"] = dtype.torch_name().into();
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap_or_default()).map_err(io(&cfg_path))?;

    let tensors = held_tensors(model);
    let shapes: Vec<(String, Vec<usize>)> = tensors.iter().map(|(name, t)| (name.clone(), t.shape())).collect();
    let path = dir.join("model.safetensors");
    let mut writer = SafetensorsWriter::create(&path, &shapes, dtype.safetensors()).map_err(io(&path))?;
    for (_, tensor) in tensors {
        let bytes = encode_float(dtype.codec(), &tensor.f32s());
        writer.out.write_all(&bytes).map_err(io(&path))?;
    }
    writer.out.flush().map_err(io(&path))
}
