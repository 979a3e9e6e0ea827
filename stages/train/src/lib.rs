//! Training stage kinds: `pretrain` (packed token windows) and `sft`
//! (instruction templates, response-only loss). Both run `trainer`'s loop
//! with `trainable`'s choice of weights and `checkpoint`'s resumable state.

mod checkpoint;
mod data;
pub mod estimate;
mod lora;
mod memory;
pub mod metrics;
mod output;
mod pretrain;
mod recompute;
pub mod schedule;
pub mod sft;
mod start;
pub mod sync;
pub mod trainable;
pub mod trainer;

use std::sync::Arc;

use babelflow_stage::StageKind;

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![Arc::new(pretrain::Pretrain), Arc::new(sft::Sft)]
}
