//! The `pretrain` kind: further pretraining of a LLaMA (from `init-model`,
//! `import-model` or `resize-vocab`) on a token artifact, packed into
//! fixed-length windows. The loop itself (optimizer, schedule, validation,
//! checkpoints) is `trainer`; which weights move is `trainable`. The result
//! is an HF model folder.

use std::sync::LazyLock;

use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};

use crate::data::Windows;
use crate::start::{self, Start, MODEL_INPUT, VALIDATION_INPUT};
use crate::trainable::{self, Trainable};
use crate::trainer::{self, Settings};

pub struct Pretrain;

static PARAMS: LazyLock<Vec<ParamSpec>> = LazyLock::new(|| {
    let mut v = vec![ParamSpec::with_default(
        "seq_len",
        ParamType::Int,
        "128",
        "tokens per sequence (documents are packed)",
    )
    .positive()];
    v.extend_from_slice(trainer::PARAMS);
    v.extend_from_slice(trainable::PARAMS);
    v
});

const INPUTS: &[InputSpec] = &[
    MODEL_INPUT,
    InputSpec {
        name: "tokens",
        required: true,
        many: false,
        doc: "the training token artifact (usually `mix`)",
    },
    VALIDATION_INPUT,
];

impl StageKind for Pretrain {
    fn name(&self) -> &'static str {
        "pretrain"
    }
    fn code_version(&self) -> &'static str {
        // 5: the fused NLL and SwiGLU backward reuse their inputs' buffers (NLL: exp once per logit): last bits differ.
        // 6: LoRA as the frozen product plus the low-rank path (last bits differ); `precision`,
        // `checkpoint_activations`, `save_dtype`; stats.json `memory` split.
        // 7: validation in bits per character too (`val_bits_per_char`, stats.json).
        // 8: LoRA's A drawn from the run's seed and the weight's path, not burn's per-process generator.
        // 9: gradient clipping's norms summed in a fixed order (repeatable on any threads; last bits differ);
        // stats.json `optimizer_seconds`.
        "9"
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
        start::outputs()
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        trainable::check(params)
    }

    fn data_parallel(&self) -> bool {
        true
    }

    fn resume_point(&self, resume_dir: &std::path::Path) -> Option<String> {
        crate::checkpoint::resume_point(resume_dir)
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        let seq_len = ctx.params.usize("seq_len").unwrap_or(1);
        crate::estimate::estimate_training(ctx, seq_len, "tokens (packed windows)").unwrap_or_default()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let seq_len = p.usize("seq_len")?;
        let settings = Settings::from_params(p)?;
        let trainable = Trainable::from_params(p)?.for_model(&ctx.single_input("model")?.path)?;
        let train = Windows::open_artifact(&ctx.single_input("tokens")?.path, seq_len)?;
        let (start, model) = Start::load(ctx, &trainable, seq_len, settings.seed)?;
        start.check_tokens(&train, "the training tokens")?;
        start.check_vocab(train.vocab_size() as usize, "the tokenizer of the training tokens")?;
        let outcome = trainer::train(ctx, &settings, &start, model, &train)?;
        crate::output::write(ctx, &start, &trainable, &outcome, None, serde_json::json!({}))
    }
}
