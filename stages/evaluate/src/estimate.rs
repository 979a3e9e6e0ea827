//! What an evaluation will cost (`plan --estimate`): forward passes over
//! the text it scores. Its size in tokens is the text's characters (read
//! when the text exists, else the upstream estimate) times the tokenizer's
//! tokens per character, measured on the text when both exist.

use std::path::{Path, PathBuf};

use babelflow_corpus::estimate::text_chars;
use babelflow_model::config::LlamaConfig;
use babelflow_model::estimate::{forward_flops_per_token, model_of};
use babelflow_model::precision::Precision;
use babelflow_stage::estimate::{Basis, Count, FitOption, Memory, Work};
use babelflow_stage::{Estimate, EstimateContext};
use babelflow_tokens::estimate::{tokens_per_char_of, Rate};

/// Why there is no estimate: `Some(reason)` to show in the plan, or `None`
/// where a parameter did not read (recipe validation rules that out).
type Attempt<T> = Result<T, Option<String>>;

fn param<T>(value: Result<T, babelflow_stage::StageError>) -> Attempt<T> {
    value.map_err(|_| None)
}

fn unknown<T>(why: &str) -> Attempt<T> {
    Err(Some(why.to_string()))
}

fn into_estimate(work: Attempt<Work>) -> Estimate {
    match work {
        Ok(work) => Estimate {
            work: Some(work),
            ..Estimate::default()
        },
        Err(unknown) => Estimate {
            unknown,
            ..Estimate::default()
        },
    }
}

/// The shape of the model an evaluation reads.
fn model(ctx: &EstimateContext) -> Attempt<LlamaConfig> {
    match ctx.input("model").first().and_then(model_of) {
        Some((config, _)) => Ok(config),
        None => unknown("the model's shape is not known before it exists"),
    }
}

/// The tokenizer file a model input will be read with, when it exists.
fn tokenizer_path(ctx: &EstimateContext) -> Option<PathBuf> {
    let bound = ctx.input("tokenizer").first().and_then(|t| t.path.clone());
    let model = || ctx.input("model").first();
    bound
        .or_else(|| model()?.path.clone())
        .or_else(|| babelflow_model::estimate::model_tokenizer(model()?))
}

/// The tokenizer file at `path` (a model folder or the file), loaded.
fn load_tokenizer(path: &Path) -> Option<(PathBuf, babelflow_tokens::hf::LoadedTokenizer)> {
    let file = babelflow_model::estimate::tokenizer_file(path)?;
    let tokenizer = babelflow_tokens::hf::LoadedTokenizer::load(&file).ok()?;
    Some((file, tokenizer))
}

/// The model's tokenizer's rate on `texts`, measured when it exists.
fn rate_on(ctx: &EstimateContext, texts: impl Iterator<Item = String>) -> Rate {
    Rate::measured_or_assumed(tokenizer_path(ctx).and_then(|path| tokens_per_char_of(&path, texts)))
}

/// Bytes per weight at the `precision` parameter.
fn precision_bytes(ctx: &EstimateContext) -> u64 {
    let precision = ctx.params.str("precision").ok().and_then(|p| Precision::parse(p).ok());
    precision.map_or(4, |p| p.dtype().size() as u64)
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
    into_estimate(perplexity_work(ctx))
}

fn perplexity_work(ctx: &EstimateContext) -> Attempt<Work> {
    let p = ctx.params;
    let (max_len, batch, max_docs) = (
        param(p.usize("max_len"))?,
        param(p.usize("batch_size"))?,
        param(p.usize("max_docs"))?,
    );
    let config = model(ctx)?;
    let texts = ctx.input("text");
    let Some(chars) = text_chars(texts, max_docs) else {
        return unknown("the text's size is not known before it exists");
    };
    let existing: Vec<PathBuf> = texts.iter().filter_map(|t| t.path.clone()).collect();
    // One sample of the text in the model's tokens gives both its tokens
    // per character and the padding its batches carry.
    let sample = match tokenizer_path(ctx) {
        Some(tokenizer) if existing.len() == texts.len() => sample_of(&tokenizer, &existing, max_len, batch, max_docs),
        _ => None,
    };
    let tokens = Rate::measured_or_assumed(sample.as_ref().map(|s| s.tokens_per_char)).tokens(&chars);
    let mut work = forward_work(&config, tokens, max_len, batch, precision_bytes(ctx));
    // Chunks are batched in reading order and padded to the batch's
    // longest: the forward computes more positions than it scores.
    if let Some(sample) = sample {
        work.forward_flops *= sample.positions_per_token;
        work.forward_rows = sample.rows_per_pass;
        work.tokens.how = format!(
            "{}; the forward computes {:.2} positions per scored token, with the padding of {} chunks of {} \
             documents (measured)",
            work.tokens.how, sample.positions_per_token, sample.chunks, sample.documents
        );
    }
    Ok(work)
}

/// Documents tokenized to sample a scored text, and rows of a table read
/// at most to find them: a plan never reads a whole corpus.
const SAMPLE_DOCS: usize = 200;
const SAMPLE_ROWS_READ: usize = 20_000;

/// A scored text, sampled in the model's tokens.
#[derive(Debug, Clone, PartialEq)]
struct TextSample {
    tokens_per_char: f64,
    /// Positions the forward computes per token it scores (padding).
    positions_per_token: f64,
    /// Positions of one batch, on average: the rows its products multiply.
    rows_per_pass: usize,
    chunks: usize,
    documents: usize,
}

/// The first documents of `tables` (`max_docs` a language, as the stage
/// reads them) in `tokenizer`'s tokens: tokens per character, and the
/// positions computed per token scored when `perplexity` cuts each
/// document into chunks of `max_len` (after a context token) and runs
/// them `batch` at a time, each batch padded to its longest chunk. `None`
/// when the tokenizer or a table does not read, or the sample is empty.
fn sample_of(
    tokenizer: &Path,
    tables: &[PathBuf],
    max_len: usize,
    batch: usize,
    max_docs: usize,
) -> Option<TextSample> {
    let (_, tokenizer) = load_tokenizer(tokenizer)?;
    let mut lengths: Vec<usize> = Vec::new();
    let (mut documents, mut chars) = (0, 0);
    let per_table = SAMPLE_DOCS / tables.len().max(1) + 1;
    for path in tables {
        let mut per_lang = std::collections::BTreeMap::<String, usize>::new();
        let mut taken = 0;
        babelflow_corpus::read_corpus_head(path, SAMPLE_ROWS_READ, &mut |doc| {
            let seen = per_lang.entry(doc.lang.clone()).or_default();
            if taken >= per_table || (max_docs > 0 && *seen >= max_docs) {
                return Ok(());
            }
            *seen += 1;
            taken += 1;
            let ids = tokenizer.ids(&doc.text).unwrap_or_default();
            lengths.extend(crate::perplexity::chunks(Some(0), &ids, max_len).iter().map(Vec::len));
            documents += 1;
            chars += doc.text.chars().count();
            Ok(())
        })
        .ok()?;
    }
    let scored: usize = lengths.iter().map(|l| l - 1).sum();
    let batches = lengths.chunks(batch.max(1));
    let passes = batches.len();
    let computed: usize = batches
        .map(|group| group.len() * group.iter().copied().max().unwrap_or(0))
        .sum();
    (scored > 0 && chars > 0).then(|| TextSample {
        tokens_per_char: scored as f64 / chars as f64,
        positions_per_token: computed as f64 / scored as f64,
        rows_per_pass: computed / passes.max(1),
        chunks: lengths.len(),
        documents,
    })
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
        forward_rows: rows * t,
        all_reduce_bytes: 0,
        optimizer_updates: 0.0,
    }
}

/// `exam`: per question, a k-shot prompt read once for the letters and
/// once per choice for the likelihoods, each cut to the context.
pub fn exam(ctx: &EstimateContext) -> Estimate {
    into_estimate(exam_work(ctx))
}

fn exam_work(ctx: &EstimateContext) -> Attempt<Work> {
    let p = ctx.params;
    let (shots, split, shot_split, scoring) = (
        param(p.usize("shots"))?,
        param(p.str("split"))?,
        param(p.str("shot_split"))?,
        param(p.str("scoring"))?,
    );
    let (max_len, batch) = (param(p.usize("max_len"))?, param(p.usize("batch_size"))?);
    let config = model(ctx)?;
    let context = if max_len == 0 {
        config.max_position_embeddings
    } else {
        max_len
    };
    let (letters, likelihood) = (scoring != "likelihood", scoring != "letters");
    // The questions scored: counted in the table, else (every split) in the upstream estimate.
    let (mut questions, mut chars, mut basis) = (0.0, 0.0, Basis::Measured);
    let mut all = Vec::new();
    for input in ctx.input("questions") {
        if let Some(path) = &input.path {
            let read = crate::exam::read_questions(path).map_err(|_| None)?;
            for q in read.iter().filter(|q| q.split == split && !q.answer.is_empty()) {
                questions += 1.0;
                chars += format!("{} {}", q.question, q.choices.join(" ")).chars().count() as f64;
            }
            all.extend(read);
        } else if let (Some(rows), Some(c)) = (&input.facts.rows, &input.facts.chars) {
            questions += rows.value;
            chars += c.value;
            basis = Basis::Derived;
        } else {
            return unknown("the questions are not known before they exist");
        }
    }
    // Where the tables and the tokenizer exist: the prompts themselves,
    // built and batched as the run builds them.
    if basis == Basis::Measured {
        if let Some(sample) = exam_sample(
            ctx,
            &all,
            (split, shot_split),
            shots,
            context,
            batch,
            (letters, likelihood),
        ) {
            let scale = questions / sample.questions.max(1) as f64;
            let tokens = Count::new(
                sample.positions() as f64 * scale,
                Basis::Measured,
                format!(
                    "{questions} questions of split `{split}`: the positions the forward passes compute, padding \
                     included ({} passes{}; prompts of {shots} shots built and tokenized{})",
                    sample.shapes.len(),
                    if letters && likelihood {
                        ": the letters and each choice"
                    } else {
                        ""
                    },
                    if sample.questions < questions as usize {
                        format!(" for the first {} questions", sample.questions)
                    } else {
                        String::new()
                    },
                ),
            );
            let mut work = forward_work(&config, tokens, sample.longest(), batch, precision_bytes(ctx));
            work.forward_flops = sample.flops(&config) * scale;
            work.forward_rows = sample.positions() / sample.shapes.len();
            return Ok(work);
        }
    }
    let rate = rate_on(ctx, std::iter::empty());
    let per_question = chars / questions.max(1.0) * rate.tokens_per_char;
    let t = ((shots as f64 + 1.0) * per_question + 8.0).min(context as f64);
    let passes = letters as u8 as f64 + 4.0 * likelihood as u8 as f64;
    let tokens = Count::new(
        questions * passes * t,
        basis.max(rate.basis),
        format!(
            "{questions} questions of every split (the table does not exist yet) × {passes} passes × {t:.0} tokens \
             ({shots} shots + the question at {})",
            rate.how()
        ),
    );
    Ok(forward_work(&config, tokens, t as usize, batch, precision_bytes(ctx)))
}

/// Questions whose prompts a plan builds at most: the rest are priced as these.
const SAMPLE_QUESTIONS: usize = 200;

/// The forward passes of an exam's first questions, as the run batches them.
#[derive(Debug, Clone, PartialEq)]
struct ExamSample {
    questions: usize,
    /// `(rows, length)` of every pass: each computes rows × its longest sequence.
    shapes: Vec<(usize, usize)>,
}

impl ExamSample {
    fn positions(&self) -> usize {
        self.shapes.iter().map(|(rows, t)| rows * t).sum()
    }

    /// The longest sequence of any pass.
    fn longest(&self) -> usize {
        self.shapes.iter().map(|s| s.1).max().unwrap_or(0)
    }

    /// Forward FLOPs of the passes, attention at each pass's length.
    fn flops(&self, config: &LlamaConfig) -> f64 {
        self.shapes
            .iter()
            .map(|&(rows, t)| (rows * t) as f64 * forward_flops_per_token(config, t))
            .sum()
    }
}

/// Builds the prompts of the first `SAMPLE_QUESTIONS` answered questions
/// of `split` as `exam` does (shots of `shot_split`, dropped to fit
/// `context`; the model's BOS where its tokenizer adds one) and batches
/// them as it does: the prompts for the letters, then every choice's
/// continuation, `batch` at a time, each pass padded to its longest.
fn exam_sample(
    ctx: &EstimateContext,
    all: &[crate::exam::Question],
    (split, shot_split): (&str, &str),
    shots: usize,
    context: usize,
    batch: usize,
    (letters, likelihood): (bool, bool),
) -> Option<ExamSample> {
    use babelflow_tokens::specials::Specials;
    let (file, tokenizer) = load_tokenizer(&tokenizer_path(ctx)?)?;
    let overrides = babelflow_tokens::specials::overrides_of(ctx.params).ok()?;
    // How the run decides the model's BOS: its folder when it exists yet.
    let specials = match ctx.input("model").first().and_then(|m| m.path.as_deref()) {
        Some(model_dir) => Specials::for_model(&tokenizer, model_dir, &file, &overrides),
        None => Specials::resolve(&tokenizer, file.parent(), &overrides),
    }
    .ok()?;
    let pool = crate::exam::shot_pool(all, shot_split);
    let answered: Vec<&crate::exam::Question> = all
        .iter()
        .filter(|q| q.split == split && !q.answer.is_empty())
        .take(SAMPLE_QUESTIONS)
        .collect();
    let (items, _) = crate::exam::build_items(&answered, &pool, shots, context, &specials.prefix(), |text| {
        tokenizer.ids(text)
    })
    .ok()?;
    let mut lengths: Vec<Vec<usize>> = Vec::new();
    if letters {
        lengths.extend(
            items
                .chunks(batch.max(1))
                .map(|c| c.iter().map(|it| it.prompt.len()).collect()),
        );
    }
    if likelihood {
        let flat: Vec<usize> = items
            .iter()
            .flat_map(|it| it.continuations.iter().map(|c| c.0.len()))
            .collect();
        lengths.extend(flat.chunks(batch.max(1)).map(<[usize]>::to_vec));
    }
    let shapes: Vec<(usize, usize)> = lengths
        .iter()
        .map(|pass| (pass.len(), pass.iter().copied().max().unwrap_or(0)))
        .collect();
    (!shapes.is_empty()).then_some(ExamSample {
        questions: answered.len(),
        shapes,
    })
}

/// Prompt tokens of an instruction when nothing can be counted.
const ASSUMED_PROMPT_TOKENS: f64 = 64.0;

/// `respond`: each answer generated token by token (a forward of one
/// token over the cached context) after its prompt.
pub fn respond(ctx: &EstimateContext) -> Estimate {
    into_estimate(respond_work(ctx))
}

fn respond_work(ctx: &EstimateContext) -> Attempt<Work> {
    let p = ctx.params;
    let (max_new, max_examples) = (param(p.usize("max_new_tokens"))?, param(p.usize("max_examples"))?);
    let batch = param(p.usize("batch_size"))?;
    let config = model(ctx)?;
    let mut examples = 0.0;
    let mut prompts: Vec<String> = Vec::new();
    for input in ctx.input("instructions") {
        if let Some(path) = &input.path {
            let all = babelflow_corpus::read_instructions(path).map_err(|_| None)?;
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
            return unknown("how many instructions there are is not known before they exist");
        }
    }
    let (prompt, basis, how) = if prompts.is_empty() {
        let how = format!("{ASSUMED_PROMPT_TOKENS} prompt tokens assumed");
        (ASSUMED_PROMPT_TOKENS, Basis::Assumed, how)
    } else {
        let chars: usize = prompts.iter().map(|p| p.chars().count()).sum();
        let per_prompt = chars as f64 / prompts.len() as f64;
        let rate = rate_on(ctx, prompts.into_iter());
        let tokens = per_prompt * rate.tokens_per_char + 16.0;
        (
            tokens,
            rate.basis,
            format!("{tokens:.0} prompt tokens ({}, with the template)", rate.how()),
        )
    };
    let t = prompt + max_new as f64;
    let tokens = Count::new(
        examples * t,
        basis.max(Basis::Params),
        format!("{examples} examples × ({how} + {max_new} new at most)"),
    );
    let mut work = forward_work(&config, tokens, t as usize, batch, precision_bytes(ctx));
    // Most passes generate: one new token a sequence over the cached context.
    if max_new as f64 >= prompt {
        work.forward_rows = batch;
    }
    Ok(work)
}
