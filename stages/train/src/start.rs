//! What both training kinds set up before the loop: the model from the
//! `model` input on the recipe's device (autodiff for training, plain for
//! validation), prepared by `Trainable`; the held-out token artifacts bound
//! to `validation`; and the rotary tables for the context length.

use std::path::PathBuf;

use babelflow_model::{device, hf, Llama, LlamaConfig, ModelError, Precision, Rope};
use babelflow_stage::{InputSpec, StageContext, StageError};
use babelflow_tokens::hf::ensure_model_reads;
use burn::tensor::Device;

use crate::data::Windows;
use crate::trainable::{Held, Trainable};

pub const MODEL_INPUT: InputSpec = InputSpec {
    name: "model",
    required: true,
    many: false,
    doc: "an HF model folder (init-model, import-model, resize-vocab, or an earlier training)",
};

pub const VALIDATION_INPUT: InputSpec = InputSpec {
    name: "validation",
    required: false,
    many: true,
    doc: "held-out token artifacts, one per language, for perplexity during training",
};

/// The outputs of every training kind.
pub fn outputs() -> Vec<String> {
    vec!["model".into(), "metrics.parquet".into(), "stats.json".into()]
}

pub struct Start {
    pub config: LlamaConfig,
    pub model_dir: PathBuf,
    /// The plain device; training runs on its autodiff twin.
    pub device: Device,
    pub backend: String,
    pub validation: Vec<Windows>,
    /// Rotary tables on the autodiff device (training) and the plain one (validation).
    pub rope: Rope,
    pub rope_eval: Rope,
    /// What the prepared model's weights hold.
    pub held: Held,
    /// Positions per training sequence.
    pub seq_len: usize,
}

fn failed(e: ModelError) -> StageError {
    StageError::failed(e.to_string())
}

impl Start {
    /// The setting, and the model ready to train. `seed` seeds what the
    /// preparation draws (LoRA's adapters): every run, and every rank of a
    /// data-parallel one, starts from the same weights.
    pub fn load(
        ctx: &StageContext,
        trainable: &Trainable,
        seq_len: usize,
        seed: u64,
    ) -> Result<(Self, Llama), StageError> {
        let (device, backend) = device::select(&ctx.device.backend, ctx.device.index).map_err(failed)?;
        let ad = device.clone().autodiff();
        let model_dir = ctx.single_input("model")?.path.clone();
        if trainable.frozen_dtype != burn::tensor::DType::F32 {
            Precision::Bf16
                .check_device(&device, &backend)
                .map_err(|message| StageError::Param {
                    name: "precision".into(),
                    message,
                })?;
        }
        // Each weight read straight into the dtype it trains or waits in.
        let (config, model) = hf::load_held_as(&model_dir, &ad, trainable.held_as()?).map_err(failed)?;
        let validation: Vec<Windows> = ctx
            .input("validation")
            .iter()
            .map(|item| Windows::open_artifact(&item.path, seq_len))
            .collect::<Result<_, _>>()?;
        let rope = Rope::new(&config, seq_len, &ad).map_err(StageError::failed)?;
        let rope_eval = Rope::new(&config, seq_len, &device).map_err(StageError::failed)?;
        for set in &validation {
            ensure_model_reads(&model_dir, set.tokenizer_hash(), set.path(), "the validation tokens")?;
        }
        ad.seed(seed);
        let model = trainable.prepare(model, seed)?;
        let held = trainable.check_held(&model)?;
        let start = Start {
            config,
            model_dir,
            device,
            backend,
            validation,
            rope,
            rope_eval,
            held,
            seq_len,
        };
        Ok((start, model))
    }

    /// Refuses training tokens made by another tokenizer than the model's.
    pub fn check_tokens(&self, tokens: &Windows, what: &str) -> Result<(), StageError> {
        ensure_model_reads(&self.model_dir, tokens.tokenizer_hash(), tokens.path(), what)
    }

    /// Refuses training data whose ids the model has no embeddings for.
    pub fn check_vocab(&self, ids: usize, what: &str) -> Result<(), StageError> {
        self.config.check_vocab(ids, what, &self.model_dir).map_err(failed)
    }
}
