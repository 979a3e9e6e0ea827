//! Model shapes at plan time (`plan --estimate`): what a model folder will
//! hold before it exists, for the kinds that make one (`import-model`,
//! `init-model`, `resize-vocab`) and the ones that read one.

use std::path::Path;

use babelflow_stage::estimate::{Basis, Count, Facts, Memory, ModelFacts, PlannedInput, Work};
use babelflow_stage::{Estimate, EstimateContext};
use serde_json::Value;

use crate::config::LlamaConfig;
use crate::disk_dtype::DiskDtype;
use crate::resize::{AddedTokens, ResizedVocab};

/// A model input's shape and where its added rows begin: from the
/// upstream estimate, else from the folder when it exists.
pub fn model_of(input: &PlannedInput) -> Option<(LlamaConfig, Option<usize>)> {
    let facts = model_input_facts(input)?;
    let config: LlamaConfig = serde_json::from_value(facts.config.clone()).ok()?;
    Some((config, facts.base_vocab_size))
}

/// A model input's facts: the upstream estimate's, else read from the folder.
pub fn model_input_facts(input: &PlannedInput) -> Option<ModelFacts> {
    if let Some(model) = &input.facts.model {
        return Some(model.clone());
    }
    folder_facts(input.path.as_ref()?)
}

/// The facts of an existing model folder: its config.json as written.
pub fn folder_facts(dir: &Path) -> Option<ModelFacts> {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).ok()?).ok()?;
    let base_vocab_size = ResizedVocab::read(dir).ok().flatten().map(|r| r.base_vocab_size);
    Some(ModelFacts {
        config,
        base_vocab_size,
        tokenizer: tokenizer_file(dir),
    })
}

/// A tokenizer input's file when it exists now (a folder stands for its tokenizer.json).
pub fn tokenizer_file(path: &Path) -> Option<std::path::PathBuf> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    file.is_file().then_some(file)
}

/// The tokenizer file a model input's folder will hold, when it exists now.
pub fn model_tokenizer(input: &PlannedInput) -> Option<std::path::PathBuf> {
    model_input_facts(input)?.tokenizer
}

/// The facts of the folder importing a GGUF file writes: the config its
/// metadata implies, in f32 (the import's default; `dtype:` retags it).
/// The tokenizer is rebuilt at import, so no file stands for it yet.
fn gguf_facts(file: &Path) -> Option<ModelFacts> {
    let gguf = crate::gguf::file::GgufFile::open(file).ok()?;
    let config = crate::gguf::import::config_of(&gguf).ok()?;
    model_facts(&config, DiskDtype::F32, None, None)
}

/// The facts of a model folder babelflow writes with this config and
/// on-disk dtype, and the tokenizer file it will copy in.
pub fn model_facts(
    config: &LlamaConfig,
    dtype: DiskDtype,
    base_vocab_size: Option<usize>,
    tokenizer: Option<std::path::PathBuf>,
) -> Option<ModelFacts> {
    let mut config = serde_json::to_value(config).ok()?;
    dtype.tag(&mut config);
    Some(ModelFacts {
        config,
        base_vocab_size,
        tokenizer,
    })
}

/// The dtype a model folder's weights are in (f32 when its config names none babelflow writes).
pub fn disk_dtype(model: &ModelFacts) -> DiskDtype {
    DiskDtype::of_config(&model.config).unwrap_or(DiskDtype::F32)
}

/// A tokenizer input's vocabulary: the upstream estimate's, else counted
/// in the file (a model folder stands for its tokenizer.json).
pub fn vocab_of(input: &PlannedInput) -> Option<Count> {
    if let Some(v) = &input.facts.vocab_size {
        return Some(v.clone());
    }
    if let Some(size) = input.facts.model.as_ref().and_then(|m| m.config["vocab_size"].as_u64()) {
        return Some(Count::new(size as f64, Basis::Derived, "the model's vocab_size"));
    }
    let path = input.path.as_ref()?;
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.clone()
    };
    let facts = crate::stage::tokenizer_facts(&file).ok()?;
    Some(Count::new(
        facts.vocab_size as f64,
        Basis::Measured,
        "the tokenizer's ids",
    ))
}

/// `added_tokens.json`'s vocabulary after resizing: the estimate's, else the file's.
pub fn resized_vocab_of(input: &PlannedInput) -> Option<(usize, usize)> {
    if let Some(path) = &input.path {
        let added = AddedTokens::load(path).ok()?;
        return Some((added.base_vocab_size, added.vocab_size));
    }
    let facts: &Facts = &input.facts;
    Some((facts.base_vocab_size?, facts.vocab_size.as_ref()?.value as usize))
}

fn model_output(facts: Option<ModelFacts>) -> Estimate {
    let mut estimate = Estimate::default();
    if let Some(model) = facts {
        estimate.outputs.insert(
            "model".into(),
            Facts {
                model: Some(model),
                ..Facts::default()
            },
        );
    }
    estimate
}

/// `import-model`: the folder's config as it is (its dtype rewritten by
/// `dtype:`); a GGUF file's as its import will write it, read from its
/// header (the weights are not read).
pub fn import(ctx: &EstimateContext) -> Estimate {
    let Some(path) = ctx.input("checkpoint").first().and_then(|i| i.path.as_ref()) else {
        return Estimate::default();
    };
    let mut facts = if path.is_dir() {
        folder_facts(path)
    } else {
        gguf_facts(path)
    };
    if let (Some(facts), Ok(Some(dtype))) = (&mut facts, ctx.params.opt_str("dtype")) {
        if let Some(dtype) = DiskDtype::parse(dtype) {
            dtype.tag(&mut facts.config);
        }
    }
    model_output(facts)
}

/// `init-model`: the config its parameters and the tokenizer's vocabulary make.
pub fn init(ctx: &EstimateContext) -> Estimate {
    let p = ctx.params;
    let Some(vocab) = ctx.input("tokenizer").first().and_then(vocab_of) else {
        return Estimate::default();
    };
    let config = (|| -> Result<LlamaConfig, babelflow_stage::StageError> {
        let heads = p.usize("num_attention_heads")?;
        let mut config = LlamaConfig::tiny(
            vocab.value as usize,
            p.usize("hidden_size")?,
            p.usize("num_hidden_layers")?,
            heads,
            p.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        );
        if let Some(i) = p.opt_usize("intermediate_size")? {
            config.intermediate_size = i;
        }
        config.tie_word_embeddings = p.bool("tie_word_embeddings")?;
        Ok(config)
    })();
    let tokenizer = ctx
        .input("tokenizer")
        .first()
        .and_then(|t| tokenizer_file(t.path.as_ref()?));
    model_output(
        config
            .ok()
            .and_then(|c| model_facts(&c, DiskDtype::F32, None, tokenizer)),
    )
}

/// `resize-vocab`: the input model with the extended vocabulary; its work
/// is holding the whole model in f32 while it resizes.
pub fn resize(ctx: &EstimateContext) -> Estimate {
    let model = ctx.input("model").first().and_then(model_of);
    let added = ctx.input("added").first().and_then(resized_vocab_of);
    let (Some((mut config, _)), Some((base, vocab))) = (model, added) else {
        return Estimate::default();
    };
    let read = ctx
        .input("model")
        .first()
        .and_then(model_input_facts)
        .map_or(DiskDtype::F32, |m| disk_dtype(&m));
    config.vocab_size = vocab;
    let tokenizer = ctx
        .input("tokenizer")
        .first()
        .and_then(|t| tokenizer_file(t.path.as_ref()?));
    let mut estimate = model_output(model_facts(&config, DiskDtype::F32, Some(base), tokenizer));
    let parameters = crate::stage::parameter_count(&config);
    estimate.work = Some(Work {
        tokens: Count::new(0.0, Basis::Params, "none: rows are computed, not trained"),
        train_flops: 0.0,
        forward_flops: 0.0,
        parameters,
        trainable_parameters: 0,
        memory: Memory {
            weights_bytes: 4 * parameters,
            ..Memory::default()
        },
        fit_options: Vec::new(),
        io_bytes: parameters * (read.bytes() + DiskDtype::F32.bytes()),
        hidden_size: config.hidden_size,
        forward_rows: 0,
        all_reduce_bytes: 0,
        optimizer_updates: 0.0,
    });
    estimate
}

/// Weights that enter a matrix product for every token: the blocks'
/// projections and the head (the embedding is a lookup; a tied head
/// multiplies by it all the same).
pub fn product_weights(config: &LlamaConfig) -> u64 {
    let (d, hd, h, kv, inter, v) = config.dims();
    let per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * inter;
    (config.num_hidden_layers * per_layer + v * d) as u64
}

/// Attention's two products (`Q·Kᵀ`, `P·V`) per token over a `t × t` square.
pub fn attention_flops_per_token(config: &LlamaConfig, t: usize) -> f64 {
    4.0 * (config.num_hidden_layers * t * config.num_attention_heads * config.head_dim()) as f64
}

/// Forward FLOPs per token in sequences of `t`.
pub fn forward_flops_per_token(config: &LlamaConfig, t: usize) -> f64 {
    2.0 * product_weights(config) as f64 + attention_flops_per_token(config, t)
}
