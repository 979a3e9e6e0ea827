//! The `sft` kind: instruction tuning on `ingest-instructions` tables. With
//! a text template each example is `[BOS] prompt response EOS` (BOS where
//! the model's tokenizer adds one, see `babelflow_tokens::specials`); the
//! loss counts only the response (and its EOS). With `template: chat` the
//! model's own chat template renders the conversation (every turn of a
//! ShareGPT row) and the loss counts the assistant turns, each with the
//! template's end of turn. Examples are padded per batch, or packed back to
//! back into `max_len` windows.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use babelflow_corpus::read_instructions;
use babelflow_corpus::template::Template;
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use babelflow_tokens::chat::{messages_of, ChatTemplate, Message};
use babelflow_tokens::hf::LoadedTokenizer;
use babelflow_tokens::specials::Specials;

use crate::start::{self, Start, MODEL_INPUT, VALIDATION_INPUT};
use crate::trainable::{self, Trainable};
use crate::trainer::{self, Batch, Examples, Settings};

pub struct Sft;

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut v = vec![
        ParamSpec::with_default(
            "template",
            ParamType::Str,
            r#""bactrian""#,
            "alpaca, bactrian, belle, chat (the model's own chat template: every turn of a conversation, the loss \
             on the assistant's), or a template string with {instruction} and {input}",
        ),
        ParamSpec::with_default(
            "max_len",
            ParamType::Int,
            "256",
            "tokens per example (longer ones are cut; validation windows use it too)",
        ),
        ParamSpec::with_default(
            "max_examples",
            ParamType::Int,
            "0",
            "use the first this many instructions (0: all) — the study's 1K / 5K / 950K",
        ),
        ParamSpec::with_default(
            "packing",
            ParamType::Bool,
            "false",
            "pack examples back to back into max_len windows instead of padding",
        ),
    ];
    v.extend_from_slice(&babelflow_tokens::specials::PARAMS);
    v.extend_from_slice(trainer::PARAMS);
    v.extend_from_slice(trainable::PARAMS);
    v
});

const INPUTS: &[InputSpec] = &[
    MODEL_INPUT,
    InputSpec {
        name: "instructions",
        required: true,
        many: true,
        doc: "instructions.parquet tables from ingest-instructions",
    },
    InputSpec {
        name: "tokenizer",
        required: false,
        many: false,
        doc: "the tokenizer.json, when the model folder has none",
    },
    VALIDATION_INPUT,
];

/// One tokenized example: ids, and per target position (predicting
/// `ids[j + 1]`) whether it counts in the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// `prefix prompt response EOS` (`prefix`: the BOS, when the model's texts
/// start with one), cut to `max_len + 1` ids; `None` when the cut leaves no
/// response token to learn from.
pub fn encode(
    tok: &LoadedTokenizer,
    prompt: &str,
    response: &str,
    prefix: &[u32],
    eos: u32,
    max_len: usize,
) -> Result<Option<Example>, String> {
    let ids_of = |text: &str| tok.ids(text).map_err(|e| e.to_string());
    // The whole text is encoded at once (as the model will see it); the
    // prompt alone only says where the response starts.
    let prompt_len = prefix.len() + ids_of(prompt)?.len();
    let mut ids = prefix.to_vec();
    ids.extend(ids_of(&format!("{prompt}{response}"))?);
    ids.push(eos);
    Ok(cut(ids, |j| j >= prompt_len, max_len))
}

/// A chat conversation through the model's template, cut to `max_len + 1`
/// ids; `None` when no assistant token is left.
pub fn encode_chat(
    tok: &LoadedTokenizer,
    chat: &ChatTemplate,
    messages: &[Message],
    max_len: usize,
) -> Result<Option<Example>, String> {
    let e = chat.encode(tok, messages)?;
    let weights = e.weights;
    Ok(cut(e.ids, |j| weights[j - 1] > 0.0, max_len))
}

/// `ids` cut to `max_len + 1`, with a loss weight for each target `j` (1..)
/// as `counts` says; `None` when no target counts.
fn cut(mut ids: Vec<u32>, counts: impl Fn(usize) -> bool, max_len: usize) -> Option<Example> {
    ids.truncate(max_len + 1);
    let weights: Vec<f32> = (1..ids.len()).map(|j| if counts(j) { 1.0 } else { 0.0 }).collect();
    weights.contains(&1.0).then_some(Example { ids, weights })
}

/// Examples batched by padding (or already packed to one length).
pub struct InstructionSet {
    pub examples: Vec<Example>,
    pad: u32,
}

impl InstructionSet {
    /// One row per example, padded with `pad` (never a loss position).
    pub fn padded(examples: Vec<Example>, pad: u32) -> Self {
        InstructionSet { examples, pad }
    }

    /// Packs the examples into windows of `max_len + 1` ids; a window's
    /// loss positions are those of the examples' responses in it.
    pub fn packed(examples: Vec<Example>, max_len: usize, pad: u32) -> Self {
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        for e in examples {
            // The first id of each example is predicted from the previous
            // example's end: it is a BOS, never a loss position.
            if !ids.is_empty() {
                weights.push(0.0);
            }
            ids.extend(e.ids);
            weights.extend(e.weights);
        }
        let windows = ids.len().saturating_sub(1) / max_len;
        let examples = (0..windows)
            .map(|w| Example {
                ids: ids[w * max_len..w * max_len + max_len + 1].to_vec(),
                weights: weights[w * max_len..w * max_len + max_len].to_vec(),
            })
            .collect();
        InstructionSet { examples, pad }
    }
}

impl Examples for InstructionSet {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn batch(&self, indices: &[usize]) -> Batch {
        let cols = indices
            .iter()
            .map(|&i| self.examples[i].ids.len() - 1)
            .max()
            .unwrap_or(1);
        let mut b = Batch {
            inputs: Vec::with_capacity(indices.len() * cols),
            targets: Vec::with_capacity(indices.len() * cols),
            weights: Some(Vec::with_capacity(indices.len() * cols)),
            rows: indices.len(),
            cols,
            tokens: 0,
        };
        let weights = b.weights.as_mut().expect("set above");
        for &i in indices {
            let e = &self.examples[i];
            let n = e.ids.len() - 1;
            b.tokens += n;
            b.inputs.extend(e.ids[..n].iter().map(|&id| id as i64));
            b.targets.extend(e.ids[1..].iter().map(|&id| id as i64));
            weights.extend_from_slice(&e.weights);
            for _ in n..cols {
                b.inputs.push(self.pad as i64);
                b.targets.push(self.pad as i64);
                weights.push(0.0);
            }
        }
        b
    }
}

impl StageKind for Sft {
    fn name(&self) -> &'static str {
        "sft"
    }
    fn code_version(&self) -> &'static str {
        // 4: the fused NLL and SwiGLU backward reuse their inputs' buffers (NLL: exp once per logit): last bits differ.
        // 5: BOS/EOS/PAD as transformers reads them; `template: chat`.
        // 6: LoRA as the frozen product plus the low-rank path (last bits differ); `precision`,
        // `checkpoint_activations`, `save_dtype`; stats.json `memory` split.
        // 7: validation in bits per character too (`val_bits_per_char`, stats.json).
        // 8: LoRA's A drawn from the run's seed and the weight's path, not burn's per-process generator.
        // 9: gradient clipping's norms summed in a fixed order (repeatable on any threads; last bits differ);
        // stats.json `optimizer_seconds`.
        "9"
    }
    fn summary(&self) -> &'static str {
        "instruction-tune a LLaMA (alpaca/bactrian/belle/chat templates, loss on responses only)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        start::outputs()
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let mut problems = trainable::check(params);
        if let Ok(t) = params.str("template") {
            if let Err(e) = Template::parse(t) {
                problems.push(("template".into(), e.to_string()));
            }
        }
        if params.i64("max_len").is_ok_and(|v| v < 2) {
            problems.push(("max_len".into(), "must be at least 2".into()));
        }
        problems
    }

    fn data_parallel(&self) -> bool {
        true
    }

    fn resume_point(&self, resume_dir: &std::path::Path) -> Option<String> {
        crate::checkpoint::resume_point(resume_dir)
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        let seq_len = ctx.params.usize("max_len").unwrap_or(1);
        crate::estimate::estimate_training(ctx, seq_len, "tokens at most (examples padded or cut to max_len)")
            .unwrap_or_default()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let max_len = p.usize("max_len")?;
        let template = Template::parse(p.str("template")?).map_err(|e| StageError::failed(e.to_string()))?;
        let settings = Settings::from_params(p)?;
        let trainable = Trainable::from_params(p)?.for_model(&ctx.single_input("model")?.path)?;
        let model_dir = &ctx.single_input("model")?.path;
        let bound = ctx.input("tokenizer").first().map(|i| i.path.as_path());
        let (tok_path, tok) = LoadedTokenizer::for_model(model_dir, bound)?;
        let specials = Specials::for_model(
            &tok,
            model_dir,
            &tok_path,
            &babelflow_tokens::specials::overrides_of(p)?,
        )?;
        let eos = specials.eos.as_ref().map(|t| t.id).ok_or_else(|| {
            StageError::failed(
                "the tokenizer has no EOS token, and instruction tuning teaches the model to end its answer with \
                 one; set `eos_token`",
            )
        })?;
        let prefix = specials.prefix();
        let chat = match template {
            Template::Chat => Some(ChatTemplate::of_model(&specials, &model_dir.display().to_string())?),
            _ => None,
        };

        let mut examples = Vec::new();
        let mut per_lang = BTreeMap::<String, usize>::new();
        let mut dropped = 0usize;
        let limit = match p.usize("max_examples")? {
            0 => usize::MAX,
            n => n,
        };
        let mut taken = 0usize;
        for item in ctx.input("instructions") {
            for row in read_instructions(&item.path)? {
                if taken == limit {
                    break;
                }
                taken += 1;
                let encoded = match &chat {
                    Some(chat) => {
                        let turns: Vec<Message> = row.turns.iter().map(|(r, c)| Message::new(r, c)).collect();
                        let messages = messages_of(&row.instruction, &row.input, Some(&row.output), &turns);
                        encode_chat(&tok, chat, &messages, max_len)
                    }
                    None => {
                        let prompt = template.prompt(&row.instruction, &row.input);
                        encode(&tok, &prompt, &row.output, &prefix, eos, max_len)
                    }
                };
                match encoded
                    .map_err(|e| StageError::input(&item.path, None, format!("tokenizing example `{}`: {e}", row.id)))?
                {
                    Some(e) => {
                        examples.push(e);
                        *per_lang.entry(row.lang).or_default() += 1;
                    }
                    None => dropped += 1,
                }
            }
        }
        if examples.is_empty() {
            return Err(StageError::failed(format!(
                "no example has a response within max_len {max_len} ({dropped} dropped)"
            )));
        }
        let count = examples.len();
        let pad = specials.pad_id();
        let set = if p.bool("packing")? {
            InstructionSet::packed(examples, max_len, pad)
        } else {
            InstructionSet::padded(examples, pad)
        };
        if set.examples.is_empty() {
            return Err(StageError::failed(format!(
                "the {count} examples hold fewer than max_len {max_len} + 1 tokens to pack"
            )));
        }
        ctx.log(&format!(
            "{count} examples ({dropped} dropped: prompt longer than max_len), {} training rows",
            set.examples.len()
        ));

        let (start, model) = Start::load(ctx, &trainable, max_len, settings.seed)?;
        start.check_vocab(tok.vocab_size as usize, "the tokenizer")?;
        let outcome = trainer::train(ctx, &settings, &start, model, &set)?;
        ctx.note("examples", count);
        let extra = serde_json::json!({
            "template": p.str("template")?,
            "examples": count,
            "examples_dropped": dropped,
            "examples_per_lang": per_lang,
            "training_rows": set.examples.len(),
            "special_tokens": specials.describe(),
        });
        crate::output::write(ctx, &start, &trainable, &outcome, Some(&tok_path), extra)?;
        Ok(())
    }
}
