//! What an evaluation will cost (`plan --estimate`): forward passes over
//! the text it scores. Its size in tokens is the text's characters (read
//! when the text exists, else the upstream estimate) times the tokenizer's
//! tokens per character, measured on the text when both exist.

use std::path::PathBuf;

use babelflow_corpus::estimate::text_chars;
use babelflow_model::config::LlamaConfig;
use babelflow_model::estimate::{forward_flops_per_token, model_of};
use babelflow_stage::estimate::{Basis, Count, FitOption, Memory, Work};
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
    estimate.work = Some(forward_work(&config, tokens, max_len, batch, precision_bytes(ctx)));
    estimate
}

/// The context a model reads at most: `max_len`, or 0 for the model's own.
fn context(config: &LlamaConfig, max_len: usize) -> usize {
    if max_len == 0 {
        config.max_position_embeddings
    } else {
        max_len
    }
}

/// Tokens per character of the model's tokenizer on `texts` when it
/// exists, else the assumption; with how it was got.
fn rate_on<'a>(ctx: &EstimateContext, texts: impl Iterator<Item = &'a str>) -> (f64, Basis, String) {
    let measured = tokenizer_path(ctx).and_then(|path| babelflow_tokens::estimate::tokens_per_char_of(&path, texts));
    match measured {
        Some(rate) => (rate, Basis::Measured, format!("{rate:.3} tokens/char measured")),
        None => (
            ASSUMED_TOKENS_PER_CHAR,
            Basis::Assumed,
            format!("{ASSUMED_TOKENS_PER_CHAR} tokens/char assumed"),
        ),
    }
}

/// A forward-only instance's work: `tokens` in sequences of `t`, `rows` at once.
fn forward_work(config: &LlamaConfig, tokens: Count, t: usize, rows: usize, weight_bytes: u64) -> Work {
    let parameters = babelflow_model::stage::parameter_count(config);
    let activations = forward_activations(config, rows, t);
    let mut fit_options = Vec::new();
    if weight_bytes == 4 {
        fit_options.push(FitOption {
            change: "precision: bf16".into(),
            peak_bytes: parameters * 2 + activations,
        });
    }
    if rows > 1 {
        fit_options.push(FitOption {
            change: "batch_size: 1".into(),
            peak_bytes: parameters * weight_bytes + forward_activations(config, 1, t),
        });
    }
    Work {
        forward_flops: tokens.value * forward_flops_per_token(config, t),
        tokens,
        train_flops: 0.0,
        parameters,
        trainable_parameters: 0,
        memory: Memory {
            weights_bytes: parameters * weight_bytes,
            activations_bytes: activations,
            ..Memory::default()
        },
        fit_options,
        io_bytes: parameters * 4,
        hidden_size: config.hidden_size,
    }
}

/// `exam`: per question, a k-shot prompt read once for the letters and
/// once per choice for the likelihoods, each cut to the context.
pub fn exam(ctx: &EstimateContext) -> Estimate {
    let mut estimate = Estimate::default();
    let p = ctx.params;
    let (Ok(shots), Ok(split), Ok(scoring), Ok(max_len), Ok(batch)) = (
        p.usize("shots"),
        p.str("split"),
        p.str("scoring"),
        p.usize("max_len"),
        p.usize("batch_size"),
    ) else {
        return estimate;
    };
    let Some((config, _)) = ctx.input("model").first().and_then(model_of) else {
        estimate.unknown = Some("the model's shape is not known before it exists".into());
        return estimate;
    };
    // (questions, characters per question, and what they were counted on).
    let mut questions = 0.0;
    let mut chars = 0.0;
    let mut basis = Basis::Measured;
    let mut texts: Vec<String> = Vec::new();
    for input in ctx.input("questions") {
        if let Some(path) = &input.path {
            let Ok(all) = crate::exam::read_questions(path) else {
                return estimate;
            };
            for q in all.iter().filter(|q| q.split == split && !q.answer.is_empty()) {
                questions += 1.0;
                let text = format!("{} {}", q.question, q.choices.join(" "));
                chars += text.chars().count() as f64;
                texts.push(text);
            }
        } else if let (Some(rows), Some(c)) = (&input.facts.rows, &input.facts.chars) {
            questions += rows.value;
            chars += c.value;
            basis = Basis::Derived;
        } else {
            estimate.unknown = Some("the questions are not known before they exist".into());
            return estimate;
        }
    }
    let (rate, rate_basis, rate_how) = rate_on(ctx, texts.iter().map(String::as_str));
    let per_question = chars / questions.max(1.0) * rate;
    let t = ((shots as f64 + 1.0) * per_question + 8.0).min(context(&config, max_len) as f64);
    let passes = match scoring {
        "letters" => 1.0,
        "likelihood" => 4.0,
        _ => 5.0,
    };
    let of = if basis == Basis::Measured {
        format!("split `{split}`")
    } else {
        "every split (the table does not exist yet)".to_string()
    };
    let tokens = Count::new(
        questions * passes * t,
        basis.max(rate_basis),
        format!(
            "{questions} questions of {of} × {passes} passes × {t:.0} tokens ({shots} shots + the question at {rate_how})"
        ),
    );
    estimate.work = Some(forward_work(&config, tokens, t as usize, batch, precision_bytes(ctx)));
    estimate
}

/// Prompt tokens of an instruction when nothing can be counted.
const ASSUMED_PROMPT_TOKENS: f64 = 64.0;

/// `respond`: each answer generated token by token (a forward of one
/// token over the cached context) after its prompt.
pub fn respond(ctx: &EstimateContext) -> Estimate {
    let mut estimate = Estimate::default();
    let p = ctx.params;
    let (Ok(max_new), Ok(max_examples), Ok(batch)) = (
        p.usize("max_new_tokens"),
        p.usize("max_examples"),
        p.usize("batch_size"),
    ) else {
        return estimate;
    };
    let Some((config, _)) = ctx.input("model").first().and_then(model_of) else {
        estimate.unknown = Some("the model's shape is not known before it exists".into());
        return estimate;
    };
    let mut examples = 0.0;
    let mut prompts: Vec<String> = Vec::new();
    for input in ctx.input("instructions") {
        if let Some(path) = &input.path {
            let Ok(all) = babelflow_corpus::read_instructions(path) else {
                return estimate;
            };
            let mut per_lang = std::collections::BTreeMap::<&str, usize>::new();
            for i in &all {
                let n = per_lang.entry(i.lang.as_str()).or_default();
                if max_examples == 0 || *n < max_examples {
                    *n += 1;
                    examples += 1.0;
                    prompts.push(format!("{} {}", i.instruction, i.input));
                }
            }
        } else if max_examples > 0 {
            examples += max_examples as f64;
        } else {
            estimate.unknown = Some("how many instructions there are is not known before they exist".into());
            return estimate;
        }
    }
    let (prompt, basis, how) = if prompts.is_empty() {
        (
            ASSUMED_PROMPT_TOKENS,
            Basis::Assumed,
            format!("{ASSUMED_PROMPT_TOKENS} prompt tokens assumed"),
        )
    } else {
        let (rate, basis, how) = rate_on(ctx, prompts.iter().map(String::as_str));
        let chars: usize = prompts.iter().map(|p| p.chars().count()).sum();
        let tokens = chars as f64 / prompts.len() as f64 * rate + 16.0;
        (
            tokens,
            basis,
            format!("{tokens:.0} prompt tokens ({how}, with the template)"),
        )
    };
    let t = prompt + max_new as f64;
    let tokens = Count::new(
        examples * t,
        basis.max(Basis::Params),
        format!("{examples} examples × ({how} + {max_new} new at most)"),
    );
    estimate.work = Some(forward_work(&config, tokens, t as usize, batch, precision_bytes(ctx)));
    estimate
}
