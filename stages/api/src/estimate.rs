//! What an instance will cost, known before it runs (`babelflow plan
//! --estimate`). The engine walks the plan upstream first and asks each
//! kind for an [`Estimate`]: the [`Facts`] its outputs will have (a model's
//! shape, a text's size in characters or tokens), so the next kind can
//! reason about them before they exist, and the [`Work`] the instance does
//! (tokens, FLOPs, peak memory). Turning FLOPs into hours is the engine's
//! job: it knows the device and where its throughput figure comes from.
//!
//! Every number says where it came from ([`Basis`]), because "12 hours"
//! measured and "12 hours" guessed are different promises.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::Params;

/// Where a number came from, most trustworthy first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// Read from an artifact or file that exists.
    Measured,
    /// Fixed by the recipe's parameters (steps × batch × length).
    Params,
    /// Computed from other estimates (a split's share of its corpus).
    Derived,
    /// A stated assumption (tokens per character before a tokenizer exists).
    Assumed,
}

/// A quantity and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Count {
    pub value: f64,
    pub basis: Basis,
    /// How it was obtained, for people ("8 000 steps × 64 × 512").
    pub how: String,
}

impl Count {
    pub fn new(value: f64, basis: Basis, how: impl Into<String>) -> Self {
        Count {
            value,
            basis,
            how: how.into(),
        }
    }

    /// This count scaled (a share of a corpus): the weaker basis of the two.
    pub fn scaled(&self, factor: f64, basis: Basis, how: impl Into<String>) -> Self {
        Count {
            value: self.value * factor,
            basis: self.basis.max(basis),
            how: format!("{}, {}", self.how, how.into()),
        }
    }
}

/// A model folder that will exist: its `config.json` as it will be written,
/// and, when `resize-vocab` made it, the vocabulary size before resizing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFacts {
    pub config: Value,
    pub base_vocab_size: Option<usize>,
    /// The tokenizer.json the folder will hold, when that file exists now
    /// (a model trained from another keeps its tokenizer): an evaluation
    /// of a model not yet trained can still measure its text in tokens.
    pub tokenizer: Option<PathBuf>,
}

/// What is known about one output before it exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Facts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelFacts>,
    /// Rows of a table (questions, instructions, documents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Count>,
    /// Characters of text (a corpus, a split; a table's text cells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chars: Option<Count>,
    /// Tokens (a token artifact, a mix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Count>,
    /// A tokenizer's vocabulary (ids 0..vocab_size), or the vocabulary
    /// `added_tokens.json` extends to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<Count>,
    /// For a vocabulary extension: the size of the vocabulary it extends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_vocab_size: Option<usize>,
}

/// One item bound to an input slot, as far as it is known at plan time.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedInput {
    /// The file or artifact output, when it exists now (an input file of
    /// the user's, or an output of a cached instance).
    pub path: Option<PathBuf>,
    /// What the producing instance's estimate said about it (empty for files).
    pub facts: Facts,
}

/// What a kind's estimate sees.
pub struct EstimateContext<'a> {
    pub instance: &'a str,
    pub params: &'a Params,
    pub inputs: BTreeMap<String, Vec<PlannedInput>>,
    /// Data-parallel processes the instance runs on (1 unless the kind is
    /// data-parallel and the recipe asks for more).
    pub processes: usize,
    /// The instance runs on a GPU (its backend on this machine, or a
    /// documented GPU it is priced on): burn's composed operations rather
    /// than the CPU's fused kernels, which keep less for the backward pass.
    pub on_gpu: bool,
}

impl EstimateContext<'_> {
    pub fn input(&self, name: &str) -> &[PlannedInput] {
        self.inputs.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Peak memory of one process of an instance, by what holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Memory {
    /// Weights, in the dtype each is held in.
    pub weights_bytes: u64,
    /// Gradients of what trains.
    pub gradients_bytes: u64,
    /// AdamW's two moments of what trains.
    pub optimizer_state_bytes: u64,
    /// Activations kept for the backward pass (or one forward's working set).
    pub activations_bytes: u64,
}

impl Memory {
    pub fn total_bytes(&self) -> u64 {
        self.weights_bytes + self.gradients_bytes + self.optimizer_state_bytes + self.activations_bytes
    }
}

/// A change to the recipe that would lower peak memory, and the peak after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitOption {
    /// What to change, in recipe words (`trainable: lora`).
    pub change: String,
    pub peak_bytes: u64,
}

/// The work one instance does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Work {
    /// Tokens the instance processes (trained on, or read for evaluation).
    pub tokens: Count,
    /// Floating-point operations of training steps (forward and backward).
    pub train_flops: f64,
    /// Floating-point operations of forward-only passes (evaluation, and
    /// a training stage's validation).
    pub forward_flops: f64,
    /// Parameters of the model, and the part that trains.
    pub parameters: u64,
    pub trainable_parameters: u64,
    pub memory: Memory,
    /// Changes that would lower `memory`, each with its peak: shown when
    /// the instance does not fit its device.
    pub fit_options: Vec<FitOption>,
    /// Time spent outside the FLOPs, known to scale with the model's size
    /// (reading and writing checkpoints): bytes read plus bytes written.
    pub io_bytes: u64,
    /// The model's hidden size: how fast a device runs it depends on it.
    pub hidden_size: usize,
    /// Rows of one forward-only pass (sequences × positions computed):
    /// a product over few rows runs at a fraction of the rate of one over
    /// many. 0 where not modelled (training is priced by its own rate).
    pub forward_rows: usize,
    /// Bytes each process sums with the others over the run (a
    /// data-parallel training's gradients, once per optimizer step); 0 on
    /// one process.
    pub all_reduce_bytes: u64,
    /// Weights the optimizer updates over the run on each process
    /// (trainable parameters × optimizer steps). AdamW's pass over them is
    /// bound by memory, not FLOPs, and every rank makes it whole, so it is
    /// priced apart and never divided among processes. 0 outside training.
    pub optimizer_updates: f64,
}

/// A kind's answer: the facts of each output it will write, and its work
/// (`None` for kinds whose cost is negligible or not modelled).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Estimate {
    pub outputs: BTreeMap<String, Facts>,
    pub work: Option<Work>,
    /// Why there is no work estimate for a kind that does real work.
    pub unknown: Option<String>,
}

impl Estimate {
    /// Every output gets the same facts.
    pub fn all_outputs(names: &[String], facts: Facts) -> Self {
        Estimate {
            outputs: names.iter().map(|n| (n.clone(), facts.clone())).collect(),
            ..Estimate::default()
        }
    }
}
