//! What every evaluation kind starts from: the model on its device, its
//! tokenizer, and the name results are filed under.

use std::path::PathBuf;

use babelflow_model::device::{self, DevicePeak};
use babelflow_model::{hf, Llama, LlamaConfig, Precision, Rope};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, StageContext, StageError};
use babelflow_tokens::hf::LoadedTokenizer;
use babelflow_tokens::specials::Specials;
use burn::tensor::Device;

pub const MODEL_INPUT: InputSpec = InputSpec {
    name: "model",
    required: true,
    many: false,
    doc: "an HF model folder (with its tokenizer.json, unless `tokenizer` is bound)",
};

pub const TOKENIZER_INPUT: InputSpec = InputSpec {
    name: "tokenizer",
    required: false,
    many: false,
    doc: "the tokenizer.json, when the model folder has none",
};

/// How a model's texts begin, when its files do not say (or say wrong):
/// every evaluation kind takes these; see `babelflow_tokens::specials`.
pub use babelflow_tokens::specials::PARAMS as SPECIAL_PARAMS;

pub const PRECISION_PARAM: ParamSpec = ParamSpec::with_default(
    "precision",
    ParamType::Choice(babelflow_model::precision::PRECISIONS),
    r#""f32""#,
    "dtype of the weights while evaluating: f32, or bf16 / f16 for half the memory (RMSNorm, the attention \
     softmax and the log-probabilities stay f32, as in transformers)",
);

pub struct Loaded {
    pub config: LlamaConfig,
    pub model: Llama,
    pub tokenizer: LoadedTokenizer,
    /// BOS/EOS/stop tokens and the chat template, as transformers reads them.
    pub specials: Specials,
    pub device: Device,
    pub backend: String,
    /// `f32`, `bf16` or `f16`: what the weights are held in.
    pub precision: String,
    /// The producing instance (`sft@sw`), or the folder's path.
    pub name: String,
    /// The process's peak resident memory once the model was loaded.
    pub peak_after_load: Option<u64>,
    /// On a GPU, the device's peak memory, sampled after each pass.
    device_peak: DevicePeak,
}

impl Loaded {
    pub fn from_context(ctx: &StageContext) -> Result<Self, StageError> {
        let item = ctx.single_input("model")?;
        let dir: PathBuf = item.path.clone();
        let bound = ctx.input("tokenizer").first().map(|i| i.path.as_path());
        let (tokenizer_path, tokenizer) = LoadedTokenizer::for_model(&dir, bound)?;
        // The model folder says how its texts begin (tokenizer_config.json, config.json).
        let overrides = babelflow_tokens::specials::overrides_of(ctx.params)?;
        let specials = Specials::for_model(&tokenizer, &dir, &tokenizer_path, &overrides)?;
        ctx.note("special_tokens", specials.describe());
        let fail = |e: babelflow_model::ModelError| StageError::failed(e.to_string());
        let (device, backend) = device::select(&ctx.device.backend, ctx.device.index).map_err(fail)?;
        let precision = ctx.params.opt_str("precision")?.unwrap_or("f32").to_string();
        let held_in = Precision::parse(&precision).map_err(StageError::failed)?;
        held_in.check_device(&device, &backend).map_err(StageError::failed)?;
        // Read straight into the precision it is held in: never a second copy.
        let (config, model) = hf::load_in(&dir, &device, held_in.dtype()).map_err(fail)?;
        config
            .check_vocab(tokenizer.vocab_size as usize, "the tokenizer", &dir)
            .map_err(fail)?;
        // The manifest records the backend `auto` resolved to (the report shows it).
        ctx.note("backend", backend.clone());
        let peak_after_load = babelflow_stage::memory::peak_rss_bytes();
        let device_peak = DevicePeak::new(&device);
        Ok(Loaded {
            config,
            model,
            precision,
            tokenizer,
            specials,
            device,
            backend,
            name: item.instance.clone().unwrap_or_else(|| dir.display().to_string()),
            peak_after_load,
            device_peak,
        })
    }

    /// Samples the GPU's memory after a forward pass or a generation (no-op
    /// on the CPU): where an evaluation's device memory peaks.
    pub fn sample_device_memory(&self) {
        self.device_peak.sample();
    }

    /// For stats.json: the peak resident memory after loading and overall
    /// (host RSS; the process's, see `babelflow_stage::memory`), and on a
    /// GPU the device's peak, which the manifest notes too (what the report
    /// and later estimates read as the instance's peak there).
    pub fn memory(&self, ctx: &StageContext) -> serde_json::Value {
        let device_peak = self.device_peak.note(ctx);
        serde_json::json!({
            "peak_rss_bytes_after_load": self.peak_after_load,
            "peak_rss_bytes": babelflow_stage::memory::peak_rss_bytes(),
            "device_peak_bytes": device_peak,
        })
    }

    pub fn rope(&self, positions: usize) -> Result<Rope, StageError> {
        Rope::new(&self.config, positions, &self.device).map_err(StageError::failed)
    }

    /// Ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, StageError> {
        self.tokenizer.ids(text)
    }
}
