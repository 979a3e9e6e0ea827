//! The `pretrain` kind: further pretraining of a LLaMA (from `init-model`,
//! `import-model` or `resize-vocab`) on a token artifact, packed into
//! fixed-length windows. The loop itself (optimizer, schedule, validation,
//! checkpoints) is `trainer`; which weights move is `trainable`. The result
//! is an HF model folder.

use std::path::PathBuf;
use std::sync::LazyLock;

use babelflow_model::{device, hf, Rope};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};

use crate::data::Windows;
use crate::trainable::{self, Trainable};
use crate::trainer::{self, Settings};

pub struct Pretrain;

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut v = vec![ParamSpec::with_default(
        "seq_len",
        ParamType::Int,
        "128",
        "tokens per sequence (documents are packed)",
    )];
    v.extend_from_slice(trainer::PARAMS);
    v.extend_from_slice(trainable::PARAMS);
    v
});

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        many: false,
        doc: "an HF model folder (init-model, import-model, resize-vocab, or an earlier training)",
    },
    InputSpec {
        name: "tokens",
        required: true,
        many: false,
        doc: "the training token artifact (usually `mix`)",
    },
    InputSpec {
        name: "validation",
        required: false,
        many: true,
        doc: "held-out token artifacts, one per language, for perplexity during training",
    },
];

fn bin_of(path: &std::path::Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokens.bin")
    } else {
        path.with_file_name("tokens.bin")
    }
}

impl StageKind for Pretrain {
    fn name(&self) -> &'static str {
        "pretrain"
    }
    fn code_version(&self) -> &'static str {
        "2"
    }
    fn summary(&self) -> &'static str {
        "further-pretrain a LLaMA on a token stream (AdamW, warmup + decay, per-language validation)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model".into(), "metrics.parquet".into(), "stats.json".into()]
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let mut problems = trainer::check(params);
        problems.extend(trainable::check(params));
        if params.i64("seq_len").is_ok_and(|v| v <= 0) {
            problems.push(("seq_len".into(), "must be positive".into()));
        }
        problems
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let seq_len = p.usize("seq_len")?;
        let settings = Settings::from_params(p)?;
        let trainable = Trainable::from_params(p)?;
        let fail = |e: babelflow_model::ModelError| StageError::failed(e.to_string());
        let (device, backend) = device::select(&ctx.device.backend, ctx.device.index).map_err(fail)?;
        let ad = device.clone().autodiff();
        let model_dir = ctx.single_input("model")?.path.clone();
        let (config, model) = hf::load(&model_dir, &ad).map_err(fail)?;
        let train = Windows::open(&bin_of(&ctx.single_input("tokens")?.path), seq_len)?;
        if train.vocab_size() as usize > config.vocab_size {
            return Err(StageError::failed(format!(
                "the tokens come from a tokenizer of {} ids but the model has {} embeddings (extend the model with resize-vocab)",
                train.vocab_size(),
                config.vocab_size
            )));
        }
        let validation: Vec<Windows> = ctx
            .input("validation")
            .iter()
            .map(|item| Windows::open(&bin_of(&item.path), seq_len))
            .collect::<Result<_, _>>()?;
        let rope = Rope::new(&config, seq_len, &ad).map_err(StageError::failed)?;
        let rope_eval = Rope::new(&config, seq_len, &device).map_err(StageError::failed)?;
        let model = trainable.prepare(model)?;
        let outcome = trainer::train(ctx, &settings, model, &rope, &train, &validation, &rope_eval, &device)?;
        crate::output::write(
            ctx,
            &config,
            &model_dir,
            &trainable,
            &outcome,
            &backend,
            serde_json::json!({}),
        )
    }
}
