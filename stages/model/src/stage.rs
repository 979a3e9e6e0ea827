//! Stage kinds of the model crate: `import-model` brings an HF checkpoint
//! folder into the store (checked, not converted); `init-model` makes a
//! randomly initialised LLaMA from a config for from-scratch training.

use std::path::Path;

use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};

use crate::config::LlamaConfig;
use crate::hf::{self, DiskDtype};
use crate::recast;

/// Files of an HF model folder that babelflow carries along.
const CARRIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

fn model_err(e: crate::ModelError) -> StageError {
    StageError::failed(e.to_string())
}

/// Copies a file of the user's into the store. Never a hard link: that
/// shares the inode, so editing the checkpoint in place would change the
/// cached artifact behind babelflow's back. `std::fs::copy` uses
/// `copy_file_range` on Linux, which on Btrfs, XFS (reflink=1) and NFS 4.2
/// clones extents instead of copying bytes: a 13 GB checkpoint then costs
/// no space until one side changes, and elsewhere it is a plain copy.
fn copy_in(from: &Path, to: &Path) -> Result<(), StageError> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| StageError::io(from, e))
}

pub struct ImportModel;

const IMPORT_INPUTS: &[InputSpec] = &[InputSpec {
    name: "checkpoint",
    required: true,
    many: false,
    doc: "an HF LLaMA folder (config.json + model.safetensors or shards + index, tokenizer.json), or a llama.cpp \
          .gguf file (dequantised into one)",
}];

const IMPORT_PARAMS: &[ParamSpec] = &[ParamSpec::optional(
    "dtype",
    ParamType::Choice(&["f32", "bf16"]),
    "the dtype the weights are stored in: a GGUF file is dequantised into it (default f32); an HF folder is \
     rewritten in it (default: copied as it is)",
)];

/// The first bytes of a file (up to 4), to tell a GGUF from the rest.
fn magic_of(path: &Path) -> Result<Vec<u8>, StageError> {
    let mut magic = Vec::with_capacity(4);
    let file = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 4), &mut magic).map_err(|e| StageError::io(path, e))?;
    Ok(magic)
}

/// What a checkpoint that is a file is: a GGUF (by its magic, or by its
/// name with a damaged magic, which `GgufFile::open` then names), or a
/// file babelflow does not read, with what to do instead.
fn import_file(ctx: &StageContext, file: &Path) -> Result<(), StageError> {
    let magic = magic_of(file)?;
    let name = file.file_name().unwrap_or_default().to_string_lossy().to_lowercase();
    if magic == b"GGUF" || name.ends_with(".gguf") {
        return import_gguf(ctx, file);
    }
    let why = if magic.is_empty() {
        "empty file (0 bytes)".to_string()
    } else if [".bin", ".pt", ".pth", ".ckpt"].iter().any(|ext| name.ends_with(ext)) {
        format!("pickled PyTorch weights; {}", hf::PICKLE_HINT)
    } else if name.ends_with(".safetensors") {
        "a safetensors file alone: bind `checkpoint:` to the folder that holds it with its config.json".into()
    } else {
        format!("not a GGUF file (magic `{}`, expected `GGUF`)", magic.escape_ascii())
    };
    Err(StageError::input(
        file,
        None,
        format!("{why}; a checkpoint is an HF folder (config.json + safetensors) or a .gguf file"),
    ))
}

impl StageKind for ImportModel {
    fn name(&self) -> &'static str {
        "import-model"
    }
    fn code_version(&self) -> &'static str {
        // 2: files are copied (or reflinked), never hard-linked; only the weight files the checkpoint uses.
        // 3: `dtype:` applies to an HF folder too.
        "3"
    }
    fn summary(&self) -> &'static str {
        "bring an HF LLaMA checkpoint folder (checked, copied) or a GGUF file (dequantised) into the store"
    }
    fn params(&self) -> &'static [ParamSpec] {
        IMPORT_PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        IMPORT_INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model".into()]
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::import(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let dir = &ctx.single_input("checkpoint")?.path;
        if dir.is_file() {
            return import_file(ctx, dir);
        }
        if !dir.is_dir() {
            return Err(StageError::input(
                dir,
                None,
                "a checkpoint is an HF folder (config.json + safetensors) or a .gguf file",
            ));
        }
        let config = LlamaConfig::load(&dir.join("config.json")).map_err(model_err)?;
        let (weights, tensors) = hf::check_checkpoint(dir, &config).map_err(model_err)?;
        let out = ctx.output("model");
        std::fs::create_dir_all(&out).map_err(|e| StageError::io(&out, e))?;
        // `dtype:` rewrites the weight files unless they are in it already.
        let dtype = import_dtype(ctx)?;
        let recast = match dtype {
            Some(d) if !recast::already(&weights, d).map_err(model_err)? => Some(d),
            _ => None,
        };
        let carried = CARRIED.iter().map(|name| dir.join(name)).filter(|p| p.is_file());
        let mut copied: Vec<std::path::PathBuf> = carried.collect();
        if recast.is_none() {
            copied.extend(weights.iter().cloned());
        }
        copied.sort();
        copied.dedup();
        for (n, path) in copied.iter().enumerate() {
            ctx.check_cancelled()?;
            ctx.progress(n as u64, Some(copied.len() as u64), "copying the checkpoint");
            let name = path.file_name().unwrap_or_default();
            copy_in(path, &out.join(name))?;
        }
        let stored = match recast {
            Some(d) => {
                let done = recast::recast(&weights, &out, d, &|n, total| {
                    ctx.progress(n as u64, Some(total as u64), &format!("rewriting the weights as {d}"))
                })
                .map_err(model_err)?;
                retag_dtype(&out, d, done.bytes)?;
                ctx.note("converted_tensors", done.converted);
                format!(
                    "rewritten as {d}: {} tensors converted, {} already {d}",
                    done.converted, done.kept
                )
            }
            None => match dtype {
                Some(d) => format!("copied, already {d}"),
                None => "copied as stored".to_string(),
            },
        };
        ctx.note("tensors", tensors);
        ctx.note("layers", config.num_hidden_layers);
        ctx.note("dtype", dtype.map_or("as stored", DiskDtype::name));
        ctx.log(&format!("imported {} ({tensors} tensors; {stored})", dir.display()));
        Ok(())
    }
}

/// After a recast: `config.json` names the new dtype (transformers reads
/// `torch_dtype`, and `dtype` in version 5) and the shard index its new
/// total size.
fn retag_dtype(out: &Path, dtype: DiskDtype, total_bytes: u64) -> Result<(), StageError> {
    let edit = |name: &str, change: &dyn Fn(&mut serde_json::Value)| -> Result<(), StageError> {
        let path = out.join(name);
        if !path.is_file() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| StageError::input(&path, None, format!("not JSON: {e}")))?;
        change(&mut v);
        let bytes = serde_json::to_vec_pretty(&v).map_err(|e| StageError::failed(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(|e| StageError::io(&path, e))
    };
    edit("config.json", &|v| {
        v["torch_dtype"] = dtype.torch_name().into();
        if v.get("dtype").is_some() {
            v["dtype"] = dtype.torch_name().into();
        }
    })?;
    edit("model.safetensors.index.json", &|v| {
        if v.get("metadata").is_some_and(serde_json::Value::is_object) {
            v["metadata"]["total_size"] = total_bytes.into();
        }
    })
}

/// import-model's `dtype`, when the recipe sets one.
fn import_dtype(ctx: &StageContext) -> Result<Option<DiskDtype>, StageError> {
    let Some(name) = ctx.params.opt_str("dtype")? else {
        return Ok(None);
    };
    DiskDtype::parse(name).map(Some).ok_or_else(|| StageError::Param {
        name: "dtype".into(),
        message: format!("`{name}` is not a dtype babelflow writes (f32, bf16, f16)"),
    })
}

/// A GGUF file dequantised into an HF folder (`gguf::import`).
fn import_gguf(ctx: &StageContext, file: &Path) -> Result<(), StageError> {
    let out = ctx.output("model");
    let dtype = import_dtype(ctx)?.unwrap_or(DiskDtype::F32);
    let imported = crate::gguf::import::import(file, &out, dtype, &|done, total| {
        ctx.progress(done as u64, Some(total as u64), "dequantising")
    })
    .map_err(model_err)?;
    let types: Vec<String> = imported.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    ctx.log(&format!(
        "imported {} ({} tensors: {}; tokenizer: {}) as {dtype}",
        file.display(),
        imported.tensors,
        types.join(", "),
        imported.tokenizer
    ));
    ctx.note("tensors", imported.tensors);
    ctx.note("layers", imported.config.num_hidden_layers);
    ctx.note("gguf_types", serde_json::json!(imported.types));
    Ok(())
}

pub struct InitModel;

const INIT_PARAMS: &[ParamSpec] = &[
    ParamSpec::required("hidden_size", ParamType::Int, "model width"),
    ParamSpec::required("num_hidden_layers", ParamType::Int, "transformer blocks"),
    ParamSpec::required("num_attention_heads", ParamType::Int, "query heads"),
    ParamSpec::optional(
        "num_key_value_heads",
        ParamType::Int,
        "key/value heads (grouped-query attention); default: all",
    ),
    ParamSpec::optional(
        "intermediate_size",
        ParamType::Int,
        "MLP width (default: about 8/3 of hidden_size)",
    ),
    ParamSpec::with_default("max_position_embeddings", ParamType::Int, "512", "longest sequence"),
    ParamSpec::with_default("rope_theta", ParamType::Float, "10000.0", "rotary base"),
    ParamSpec::with_default(
        "tie_word_embeddings",
        ParamType::Bool,
        "false",
        "share embedding and output head",
    ),
    ParamSpec::with_default("seed", ParamType::Int, "0", "initialisation seed"),
];

const INIT_INPUTS: &[InputSpec] = &[InputSpec {
    name: "tokenizer",
    required: true,
    many: false,
    doc: "the tokenizer.json the model will read (sets vocab_size, BOS/EOS)",
}];

impl StageKind for InitModel {
    fn name(&self) -> &'static str {
        "init-model"
    }
    fn code_version(&self) -> &'static str {
        // 2: drawn from babelflow's seeded generator, not the backend's per-process one.
        "2"
    }
    fn summary(&self) -> &'static str {
        "a randomly initialised LLaMA (HF layout) for training from scratch"
    }
    fn params(&self) -> &'static [ParamSpec] {
        INIT_PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INIT_INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model".into()]
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let d = params.i64("hidden_size").unwrap_or(0);
        let h = params.i64("num_attention_heads").unwrap_or(1).max(1);
        let kv = params.opt_i64("num_key_value_heads").ok().flatten().unwrap_or(h);
        let mut problems = Vec::new();
        if d <= 0 || d % h != 0 || (d / h) % 2 != 0 {
            problems.push((
                "hidden_size".into(),
                format!("must be a positive multiple of num_attention_heads ({h}) with an even head size"),
            ));
        }
        if kv <= 0 || h % kv != 0 {
            problems.push((
                "num_key_value_heads".into(),
                format!("must divide num_attention_heads ({h})"),
            ));
        }
        problems
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::init(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let tok_path = &ctx.single_input("tokenizer")?.path;
        let tok = tokenizer_facts(tok_path)?;
        if tok.bos.is_none() || tok.eos.is_none() {
            ctx.warn(&format!(
                "{}: no {} token found (looked for <s>, <|begin_of_text|>, <bos> / </s>, <|end_of_text|>, <eos>, \
                 <|endoftext|>); config.json leaves it unset",
                tok_path.display(),
                if tok.bos.is_none() { "BOS" } else { "EOS" }
            ));
        }
        let d = p.usize("hidden_size")?;
        let mut config = LlamaConfig::tiny(
            tok.vocab_size,
            d,
            p.usize("num_hidden_layers")?,
            p.usize("num_attention_heads")?,
            1,
        );
        config.num_key_value_heads = Some(
            p.opt_usize("num_key_value_heads")?
                .unwrap_or(config.num_attention_heads),
        );
        if let Some(i) = p.opt_usize("intermediate_size")? {
            config.intermediate_size = i;
        }
        config.max_position_embeddings = p.usize("max_position_embeddings")?;
        config.rope_theta = p.f64("rope_theta")?;
        config.tie_word_embeddings = p.bool("tie_word_embeddings")?;
        config.bos_token_id = tok.bos;
        config.eos_token_id = tok.eos.map(Into::into);
        let (device, backend) = crate::device::select(&ctx.device.backend, ctx.device.index).map_err(model_err)?;
        let device_peak = crate::device::DevicePeak::new(&device);
        let model = crate::Llama::init(&config, p.i64("seed")? as u64, &device);
        device_peak.sample();
        let out = ctx.output("model");
        hf::save(&out, &config, &model, DiskDtype::F32).map_err(model_err)?;
        std::fs::copy(tok_path, out.join("tokenizer.json")).map_err(|e| StageError::io(tok_path, e))?;
        ctx.note("backend", backend);
        device_peak.note(ctx);
        ctx.note("parameters", parameter_count(&config));
        Ok(())
    }
}

pub struct TokenizerFacts {
    pub vocab_size: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// Vocabulary size and BOS/EOS ids from a tokenizer.json, without the
/// tokenizers crate (the model crate stays free of it). Anything that is not
/// an HF tokenizer (no `model` with a vocabulary) is refused, naming the
/// file and what is missing: a model sized from it would be useless.
pub fn tokenizer_facts(path: &Path) -> Result<TokenizerFacts, StageError> {
    let bad = |message: String| StageError::input(path, None, message);
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
    let Some(model) = v.get("model").filter(|m| m.is_object()) else {
        let keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        return Err(bad(format!(
            "not an HF tokenizer.json: it has no `model` (its keys: {}); give the tokenizer.json of \
             `train-tokenizer`, `extend-vocab` or a model folder",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        )));
    };
    // BPE, WordPiece and WordLevel map pieces to ids; Unigram lists pieces in id order.
    let vocab: Vec<(String, u64)> = match &model["vocab"] {
        serde_json::Value::Object(m) => m.iter().filter_map(|(k, id)| Some((k.clone(), id.as_u64()?))).collect(),
        serde_json::Value::Array(pieces) => pieces
            .iter()
            .enumerate()
            .filter_map(|(id, p)| Some((p.get(0)?.as_str()?.to_string(), id as u64)))
            .collect(),
        _ => Vec::new(),
    };
    if vocab.is_empty() {
        return Err(bad(format!(
            "not a usable tokenizer.json: `model.vocab` is missing or empty (model type {})",
            model["type"].as_str().unwrap_or("not given")
        )));
    }
    let added: Vec<(String, u64)> = v["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["content"].as_str()?.to_string(), t["id"].as_u64()?)))
        .collect();
    let find = |names: &[&str]| -> Option<u32> {
        names.iter().find_map(|n| {
            added
                .iter()
                .chain(&vocab)
                .find(|(piece, _)| piece == n)
                .map(|(_, id)| *id as u32)
        })
    };
    let bos = find(&["<s>", "<|begin_of_text|>", "<bos>"]);
    let eos = find(&["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"]);
    let max_id = added.iter().chain(&vocab).map(|(_, id)| *id).max().unwrap_or(0);
    Ok(TokenizerFacts {
        vocab_size: max_id as usize + 1,
        bos,
        eos,
    })
}

/// Parameters of a LLaMA with this config.
pub fn parameter_count(c: &LlamaConfig) -> u64 {
    let (d, hd, h, kv, i, v) = (
        c.hidden_size as u64,
        c.head_dim() as u64,
        c.num_attention_heads as u64,
        c.kv_heads() as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
    );
    let per_layer = 2 * d + d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * i;
    let head = if c.tie_word_embeddings { 0 } else { v * d };
    v * d + c.num_hidden_layers as u64 * per_layer + d + head
}
