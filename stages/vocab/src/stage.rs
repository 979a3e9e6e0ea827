//! The `resize-vocab` kind: a model grown for an extended tokenizer, its old
//! rows untouched, its new rows started by the chosen init, and a record in
//! stats.json of how many rows each rule made and from how much text.

use std::path::Path;

use babelflow_model::hf::{self, DiskDtype};
use babelflow_model::resize::{AddedTokens, ResizedVocab};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use babelflow_tokens::hf::LoadedTokenizer;

use crate::init::{self, Evidence, Init};
use crate::sgns::SkipGram;
use crate::{align, focus, sgns, text};

pub struct ResizeVocab;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "init",
        ParamType::Choice(&["mean", "subword-mean", "multivariate", "focus", "aligned"]),
        r#""subword-mean""#,
        "how new rows start: the mean of all rows; the mean of the old tokenizer's pieces; a draw from the old \
         rows' mean and covariance; FOCUS over embeddings learnt on `corpus`; the old tokens each new one \
         aligns to in `parallel` text",
    ),
    ParamSpec::with_default(
        "noise",
        ParamType::Float,
        "0.0",
        "with `mean`: std of Gaussian noise added to new rows",
    )
    .non_negative(),
    ParamSpec::with_default(
        "covariance_scale",
        ParamType::Float,
        "1e-9",
        "with `multivariate`: draws from N(mean, scale × covariance); 1e-9 is transformers', 1e-5 Hewitt's, 1 the \
         old rows' own spread",
    )
    .non_negative(),
    ParamSpec::with_default(
        "seed",
        ParamType::Int,
        "0",
        "seed of every draw (noise, samples, FOCUS's training)",
    ),
    ParamSpec::with_default(
        "focus_dim",
        ParamType::Int,
        "100",
        "with `focus`: size of the auxiliary embeddings",
    )
    .positive(),
    ParamSpec::with_default(
        "focus_window",
        ParamType::Int,
        "5",
        "with `focus`: context tokens on each side",
    )
    .positive(),
    ParamSpec::with_default(
        "focus_epochs",
        ParamType::Int,
        "3",
        "with `focus`: passes over the corpus",
    )
    .positive(),
    ParamSpec::with_default(
        "focus_min_count",
        ParamType::Int,
        "3",
        "with `focus`: a token seen fewer times gets no auxiliary vector (a new one falls back to subword-mean)",
    )
    .positive(),
    ParamSpec::with_default(
        "focus_subsample",
        ParamType::Float,
        "1e-4",
        "with `focus`: word2vec's `sample`, how hard frequent tokens are thinned (0: never; raise it for a \
         corpus of a few thousand tokens, where 1e-4 drops most of the text)",
    )
    .non_negative(),
    ParamSpec::with_default(
        "align_iterations",
        ParamType::Int,
        "5",
        "with `aligned`: EM passes of IBM Model 1",
    )
    .positive(),
];

const INPUTS: &[InputSpec] = &[
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
    InputSpec {
        name: "corpus",
        required: false,
        many: true,
        doc: "with `init: focus`: target-language corpus tables the auxiliary embeddings learn from",
    },
    InputSpec {
        name: "parallel",
        required: false,
        many: true,
        doc: "with `init: aligned`: tables of sentence pairs (`source`, `target` columns) or ingest-instructions \
              tables (instruction + input → output)",
    },
];

fn model_err(e: babelflow_model::ModelError) -> StageError {
    StageError::failed(e.to_string())
}

fn init_of(p: &Params) -> Result<Init, StageError> {
    Ok(match p.str("init")? {
        "mean" => Init::Mean { noise: p.f64("noise")? },
        "multivariate" => Init::Multivariate {
            covariance_scale: p.f64("covariance_scale")?,
        },
        "focus" => Init::Focus,
        "aligned" => Init::Aligned,
        _ => Init::SubwordMean,
    })
}

impl StageKind for ResizeVocab {
    fn name(&self) -> &'static str {
        "resize-vocab"
    }
    fn code_version(&self) -> &'static str {
        // 2: resized_vocab.json (where the added rows begin) in the model folder.
        // 3: the inits in babelflow-vocab; rows made by each rule in stats.json.
        "3"
    }
    fn summary(&self) -> &'static str {
        "grow a model's embeddings for an extended tokenizer (old rows untouched, new rows by the chosen init)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model".into(), "stats.json".into()]
    }
    fn inputs_required_by(&self, params: &Params) -> Vec<(&'static str, String)> {
        match params.str("init") {
            Ok("focus") => vec![(
                "corpus",
                "`init: focus` learns which old tokens a new one is near from target-language text".into(),
            )],
            Ok("aligned") => vec![(
                "parallel",
                "`init: aligned` learns which old tokens a new one translates to from sentence pairs".into(),
            )],
            _ => Vec::new(),
        }
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        babelflow_model::estimate::resize(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let started = std::time::Instant::now();
        let p = ctx.params;
        let init = init_of(p)?;
        let seed = p.i64("seed")? as u64;
        let model_dir = &ctx.single_input("model")?.path;
        let added_path = &ctx.single_input("added")?.path;
        let added = AddedTokens::load(added_path).map_err(model_err)?;
        let tokenizer_path = &ctx.single_input("tokenizer")?.path;
        let extended = LoadedTokenizer::load(tokenizer_path)?;
        if extended.vocab_size as usize != added.vocab_size {
            return Err(StageError::input(
                tokenizer_path,
                None,
                format!(
                    "has {} tokens but {} says the extended vocabulary has {}: bind the tokenizer extend-vocab wrote \
                     beside it",
                    extended.vocab_size,
                    added_path.display(),
                    added.vocab_size
                ),
            ));
        }

        // The text is read before the model is loaded: a missing or bad
        // table fails in seconds, not after a multi-GB load.
        // (target-text tokens FOCUS learnt from, sentence pairs aligned)
        let mut text_size = (None, None);
        let evidence = match init {
            Init::Focus => focus_evidence(ctx, &extended, &added, seed, &mut text_size.0)?,
            Init::Aligned => aligned_evidence(ctx, model_dir, &extended, &added, &mut text_size.1)?,
            _ => Vec::new(),
        };
        let rows = init::plan(init, &added, &evidence).map_err(|m| StageError::input(added_path, None, m))?;
        for (rule, count) in &rows.made_by {
            ctx.log(&format!("{count} new rows by {rule}"));
        }

        let (device, backend) =
            babelflow_model::device::select(&ctx.device.backend, ctx.device.index).map_err(model_err)?;
        let device_peak = babelflow_model::device::DevicePeak::new(&device);
        let (mut config, model) = hf::load(model_dir, &device).map_err(model_err)?;
        device_peak.sample();
        let model = babelflow_model::resize::resize(model, &mut config, &added, &device, &mut |matrix, old, d| {
            init::apply(&rows, matrix, old, d, seed, &device)
        })
        .map_err(model_err)?;
        device_peak.sample();
        let out = ctx.output("model");
        hf::save(&out, &config, &model, DiskDtype::F32).map_err(model_err)?;
        ResizedVocab {
            base_vocab_size: added.base_vocab_size,
            vocab_size: config.vocab_size,
        }
        .write(&out)
        .map_err(model_err)?;
        std::fs::copy(tokenizer_path, out.join("tokenizer.json")).map_err(|e| StageError::io(tokenizer_path, e))?;
        hf::carry_tokenizer_files(model_dir, &out).map_err(model_err)?;
        let new_rows_by =
            serde_json::Value::Object(rows.made_by.iter().map(|(k, v)| (k.clone(), (*v).into())).collect());
        let stats = serde_json::json!({
            "init": init.name(),
            "seed": seed,
            "base_vocab_size": added.base_vocab_size,
            "vocab_size": config.vocab_size,
            "new_rows_by": new_rows_by,
            "text_tokens": text_size.0,
            "sentence_pairs": text_size.1,
            "seconds": started.elapsed().as_secs_f64(),
        });
        let stats_path = ctx.output("stats.json");
        let bytes = serde_json::to_vec_pretty(&stats).map_err(|e| StageError::failed(e.to_string()))?;
        std::fs::write(&stats_path, bytes).map_err(|e| StageError::io(&stats_path, e))?;
        ctx.note("backend", backend);
        device_peak.note(ctx);
        ctx.note("vocab_size", config.vocab_size);
        ctx.note("init", init.name());
        ctx.note("new_rows_by", new_rows_by);
        Ok(())
    }
}

fn bound_paths<'a>(ctx: &'a StageContext, input: &str) -> Vec<&'a Path> {
    ctx.input(input).iter().map(|i| i.path.as_path()).collect()
}

/// FOCUS's weights: auxiliary embeddings of the extended vocabulary learnt
/// on the target corpus, then sparsemax over old tokens near each new one.
fn focus_evidence(
    ctx: &StageContext,
    extended: &LoadedTokenizer,
    added: &AddedTokens,
    seed: u64,
    tokens_read: &mut Option<u64>,
) -> Result<Evidence, StageError> {
    let paths = bound_paths(ctx, "corpus");
    if paths.is_empty() {
        return Err(StageError::failed(
            "`init: focus` needs target-language text: bind `corpus:` (an ingest stage) under `needs:`",
        ));
    }
    let documents = text::documents(&paths, &extended.tokenizer)?;
    let tokens: usize = documents.iter().map(Vec::len).sum();
    ctx.log(&format!(
        "focus: learning token vectors on {} documents, {tokens} tokens",
        documents.len()
    ));
    let p = ctx.params;
    let cfg = SkipGram {
        dim: p.usize("focus_dim")?,
        window: p.usize("focus_window")?,
        epochs: p.usize("focus_epochs")?,
        min_count: p.usize("focus_min_count")? as u64,
        subsample: p.f64("focus_subsample")?,
        ..SkipGram::default()
    };
    let vectors = sgns::train(&documents, added.vocab_size, &cfg, seed, &mut |done, total| {
        if done % 256 == 0 || done == total {
            ctx.progress(done, Some(total), "focus: token vectors");
        }
    })
    .map_err(StageError::failed)?;
    *tokens_read = Some(tokens as u64);
    Ok(focus::weights(&vectors, added.base_vocab_size, added.vocab_size))
}

/// Trans-tokenization's weights: the source side in the model's own
/// tokenizer, the target side in the extended one, aligned by IBM Model 1.
fn aligned_evidence(
    ctx: &StageContext,
    model_dir: &Path,
    extended: &LoadedTokenizer,
    added: &AddedTokens,
    pairs_read: &mut Option<u64>,
) -> Result<Evidence, StageError> {
    let paths = bound_paths(ctx, "parallel");
    if paths.is_empty() {
        return Err(StageError::failed(
            "`init: aligned` needs sentence pairs: bind `parallel:` (ingest-instructions, or a table with `source` \
             and `target`) under `needs:`",
        ));
    }
    let (_, base) = LoadedTokenizer::for_model(model_dir, None)?;
    let pairs = text::pairs(&paths, &base.tokenizer, &extended.tokenizer)?;
    if pairs.is_empty() {
        return Err(StageError::input(
            paths[0],
            None,
            "no sentence pair with both sides non-empty",
        ));
    }
    ctx.log(&format!("aligned: IBM Model 1 over {} sentence pairs", pairs.len()));
    *pairs_read = Some(pairs.len() as u64);
    let iterations = ctx.params.usize("align_iterations")?;
    Ok(align::weights(
        &pairs,
        added.base_vocab_size,
        added.vocab_size,
        iterations,
        &mut |done, total| ctx.progress(done, Some(total), "aligned: EM passes"),
    ))
}
