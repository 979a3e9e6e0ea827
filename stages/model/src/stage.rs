//! Stage kinds of the model crate: `import-model` brings an HF checkpoint
//! folder into the store (checked, not converted); `init-model` makes a
//! randomly initialised LLaMA from a config for from-scratch training.

use std::path::Path;

use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use safetensors::SafeTensors;

use crate::config::LlamaConfig;
use crate::hf::{self, DiskDtype};

/// Files of an HF model folder that babelflow carries along.
const CARRIED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

fn model_err(e: crate::ModelError) -> StageError {
    StageError::failed(e.to_string())
}

/// Checks names and shapes from the safetensors headers alone (no weights
/// are read into memory), so importing a 7B checkpoint is cheap.
fn check_headers(dir: &Path, config: &LlamaConfig) -> Result<usize, StageError> {
    let mut found = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| StageError::io(dir, e))? {
        let path = entry.map_err(|e| StageError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let file = std::fs::File::open(&path).map_err(|e| StageError::io(&path, e))?;
            // SAFETY: the checkpoint is only read while this map lives.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| StageError::io(&path, e))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| StageError::input(&path, None, format!("not a safetensors file: {e}")))?;
            for name in st.names() {
                if name == "model.embed_tokens.weight" {
                    let shape = st.tensor(name).map(|t| t.shape().to_vec()).unwrap_or_default();
                    if shape != [config.vocab_size, config.hidden_size] {
                        return Err(StageError::input(
                            &path,
                            None,
                            format!(
                                "embed_tokens has shape {shape:?}; config.json implies [{}, {}]",
                                config.vocab_size, config.hidden_size
                            ),
                        ));
                    }
                }
            }
            found += st.len();
        }
    }
    if found == 0 {
        return Err(StageError::input(
            dir,
            None,
            "no .safetensors weights in this folder (PyTorch .bin checkpoints: convert them to safetensors first)",
        ));
    }
    Ok(found)
}

/// Hard-links when the store is on the same disk (a 13 GB checkpoint costs
/// nothing), copies otherwise.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), StageError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).map(|_| ()).map_err(|e| StageError::io(from, e))
}

pub struct ImportModel;

const IMPORT_INPUTS: &[InputSpec] = &[InputSpec {
    name: "checkpoint",
    required: true,
    many: false,
    doc: "an HF LLaMA folder: config.json + model.safetensors (or shards + index), tokenizer.json",
}];

impl StageKind for ImportModel {
    fn name(&self) -> &'static str {
        "import-model"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "bring an HF LLaMA checkpoint folder into the store, checked"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }
    fn inputs(&self) -> &'static [InputSpec] {
        IMPORT_INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model".into()]
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let dir = &ctx.single_input("checkpoint")?.path;
        if !dir.is_dir() {
            return Err(StageError::input(
                dir,
                None,
                "a checkpoint is a folder (config.json + safetensors)",
            ));
        }
        let config = LlamaConfig::load(&dir.join("config.json")).map_err(model_err)?;
        let tensors = check_headers(dir, &config)?;
        let out = ctx.output("model");
        std::fs::create_dir_all(&out).map_err(|e| StageError::io(&out, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| StageError::io(dir, e))? {
            let path = entry.map_err(|e| StageError::io(dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if CARRIED.contains(&name.as_str()) || name.ends_with(".safetensors") {
                link_or_copy(&path, &out.join(&name))?;
            }
        }
        ctx.note("tensors", tensors);
        ctx.note("layers", config.num_hidden_layers);
        ctx.log(&format!("imported {} ({tensors} tensors)", dir.display()));
        Ok(())
    }
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
        "1"
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

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let tok_path = &ctx.single_input("tokenizer")?.path;
        let tok = tokenizer_facts(tok_path)?;
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
        device.seed(p.i64("seed")? as u64);
        let model = crate::Llama::init(&config, &device);
        let out = ctx.output("model");
        hf::save(&out, &config, &model, DiskDtype::F32).map_err(model_err)?;
        std::fs::copy(tok_path, out.join("tokenizer.json")).map_err(|e| StageError::io(tok_path, e))?;
        ctx.note("backend", backend);
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
/// tokenizers crate (the model crate stays free of it).
pub fn tokenizer_facts(path: &Path) -> Result<TokenizerFacts, StageError> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| StageError::input(path, None, format!("not a tokenizer.json: {e}")))?;
    let mut max_id = v["model"]["vocab"]
        .as_object()
        .map(|m| m.values().filter_map(|x| x.as_u64()).max().unwrap_or(0))
        .unwrap_or(0);
    let mut find = |names: &[&str]| -> Option<u32> {
        for t in v["added_tokens"].as_array().into_iter().flatten() {
            if let Some(id) = t["id"].as_u64() {
                max_id = max_id.max(id);
                if names.contains(&t["content"].as_str().unwrap_or("")) {
                    return Some(id as u32);
                }
            }
        }
        names
            .iter()
            .find_map(|n| v["model"]["vocab"][n].as_u64())
            .map(|id| id as u32)
    };
    let bos = find(&["<s>", "<|begin_of_text|>", "<bos>"]);
    let eos = find(&["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"]);
    let vocab_size = v["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_u64())
        .chain(std::iter::once(max_id))
        .max()
        .unwrap_or(0) as usize
        + 1;
    Ok(TokenizerFacts { vocab_size, bos, eos })
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

pub struct ResizeVocab;

const RESIZE_PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "init",
        ParamType::Choice(&["mean", "subword-mean"]),
        r#""subword-mean""#,
        "how new rows start: mean of all rows, or mean of the old tokenizer's pieces",
    ),
    ParamSpec::with_default(
        "noise",
        ParamType::Float,
        "0.0",
        "with `mean`: std of Gaussian noise added to new rows",
    ),
    ParamSpec::with_default("seed", ParamType::Int, "0", "seed of the noise"),
];

const RESIZE_INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        many: false,
        doc: "an HF model folder (import-model / init-model / training output)",
    },
    InputSpec {
        name: "added",
        required: true,
        many: false,
        doc: "added_tokens.json from extend-vocab",
    },
    InputSpec {
        name: "tokenizer",
        required: true,
        many: false,
        doc: "the extended tokenizer.json (copied into the output)",
    },
];

impl StageKind for ResizeVocab {
    fn name(&self) -> &'static str {
        "resize-vocab"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "grow a model's embeddings for an extended tokenizer (old rows untouched)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        RESIZE_PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        RESIZE_INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model".into()]
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let model_dir = &ctx.single_input("model")?.path;
        let added = crate::resize::AddedTokens::load(&ctx.single_input("added")?.path).map_err(model_err)?;
        let tok = &ctx.single_input("tokenizer")?.path;
        let (device, backend) = crate::device::select(&ctx.device.backend, ctx.device.index).map_err(model_err)?;
        let (mut config, model) = hf::load(model_dir, &device).map_err(model_err)?;
        let init = match p.str("init")? {
            "mean" => crate::resize::ResizeInit::Mean {
                noise: p.f64("noise")?,
                seed: p.i64("seed")? as u64,
            },
            _ => crate::resize::ResizeInit::SubwordMean,
        };
        let model = crate::resize::resize(model, &mut config, &added, init, &device).map_err(model_err)?;
        let out = ctx.output("model");
        hf::save(&out, &config, &model, DiskDtype::F32).map_err(model_err)?;
        std::fs::copy(tok, out.join("tokenizer.json")).map_err(|e| StageError::io(tok, e))?;
        ctx.note("backend", backend);
        ctx.note("vocab_size", config.vocab_size);
        Ok(())
    }
}
