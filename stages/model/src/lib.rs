//! The LLaMA model: architecture in burn, HF checkpoints in and out,
//! generation, and backend choice at run time.

pub mod block_cache;
pub mod config;
pub mod device;
pub mod disk_dtype;
pub mod estimate;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod gpu_memory;
pub mod hf;
pub mod llama;
pub mod loss;
pub mod precision;
pub mod recast;
pub mod resize;
pub mod safetensors_out;
pub mod weights;

use std::path::PathBuf;

pub use block_cache::BlockCache;
pub use burn;
pub use config::LlamaConfig;
pub use llama::{KvCache, Llama, Rope};
pub use precision::Precision;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Weights { path: PathBuf, message: String },
    #[error("backend `{requested}` is not available: {message}")]
    Backend { requested: String, message: String },
}

pub mod stage;

use std::sync::Arc;

/// The stage kinds this crate provides (`resize-vocab` is babelflow-vocab's:
/// its inits read text with the tokenizers).
pub fn kinds() -> Vec<Arc<dyn babelflow_stage::StageKind>> {
    vec![Arc::new(stage::ImportModel), Arc::new(stage::InitModel)]
}
