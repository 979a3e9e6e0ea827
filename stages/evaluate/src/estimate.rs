//! What an evaluation will cost (`plan --estimate`): forward passes over
//! the text it scores. Its size in tokens is the text's characters (read
//! when the text exists, else the upstream estimate) times the tokenizer's
//! tokens per character, measured on the text when both exist.

use std::path::PathBuf;

use babelflow_corpus::estimate::text_chars;
use babelflow_model::config::LlamaConfig;
use babelflow_model::estimate::{forward_flops_per_token, model_of};
use babelflow_stage::estimate::{Basis, Memory, Work};
use babelflow_stage::{Estimate, EstimateContext};
use babelflow_tokens::estimate::{tokens_per_char, ASSUMED_TOKENS_PER_CHAR};

/// The tokenizer file a model input will be read with, when it exists.
fn tokenizer_path(ctx: &EstimateContext) -> Option<PathBuf> {
    let bound = ctx.input("tokenizer").first().and_then(|t| t.path.clone());
    let path = bound.or_else(|| Some(ctx.input("model").first()?.path.as_ref()?.to_path_buf()))?;
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path
    };
    file.is_file().then_some(file)
}

/// Bytes per weight at a `precision` parameter.
fn precision_bytes(ctx: &EstimateContext) -> u64 {
    match ctx.params.str("precision") {
        Ok("bf16" | "f16") => 2,
        _ => 4,
    }
}

/// Forward-pass working memory of `rows` sequences of `t`: the logits and
/// one block's widest tensors (the MLP's gate and up, the attention scores).
fn forward_activations(config: &LlamaConfig, rows: usize, t: usize) -> u64 {
    let per_token =
        config.vocab_size + 4 * config.hidden_size + 2 * config.intermediate_size + config.num_attention_heads * t;
    (rows * t * per_token * 4) as u64
}

/// `perplexity`: every text token predicted once, in chunks of `max_len`.
pub fn perplexity(ctx: &EstimateContext) -> Estimate {
    let mut estimate = Estimate::default();
    let p = ctx.params;
    let (Ok(max_len), Ok(batch), Ok(max_docs)) = (p.usize("max_len"), p.usize("batch_size"), p.usize("max_docs"))
    else {
        return estimate;
    };
    let Some((config, _)) = ctx.input("model").first().and_then(model_of) else {
        estimate.unknown = Some("the model's shape is not known before it exists".into());
        return estimate;
    };
    let texts = ctx.input("text");
    let Some(chars) = text_chars(texts, max_docs) else {
        estimate.unknown = Some("the text's size is not known before it exists".into());
        return estimate;
    };
    let existing: Vec<PathBuf> = texts.iter().filter_map(|t| t.path.clone()).collect();
    let measured = match (tokenizer_path(ctx), existing.len() == texts.len()) {
        (Some(tokenizer), true) => tokens_per_char(&tokenizer, &existing),
        _ => None,
    };
    let tokens = match measured {
        Some(rate) => chars.scaled(rate, Basis::Measured, format!("× {rate:.3} tokens/char measured")),
        None => chars.scaled(
            ASSUMED_TOKENS_PER_CHAR,
            Basis::Assumed,
            format!("× {ASSUMED_TOKENS_PER_CHAR} tokens/char assumed (no tokenizer or text yet)"),
        ),
    };
    let parameters = babelflow_model::stage::parameter_count(&config);
    estimate.work = Some(Work {
        forward_flops: tokens.value * forward_flops_per_token(&config, max_len),
        tokens,
        train_flops: 0.0,
        parameters,
        trainable_parameters: 0,
        memory: Memory {
            weights_bytes: parameters * precision_bytes(ctx),
            activations_bytes: forward_activations(&config, batch, max_len + 1),
            ..Memory::default()
        },
        fit_options: Vec::new(),
        io_bytes: parameters * 4,
        hidden_size: config.hidden_size,
    });
    estimate
}
