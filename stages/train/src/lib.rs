//! Training stage kinds. `pretrain` is here; `sft`, LoRA and resumable
//! checkpoints are still to come (issue #7).

mod data;
pub mod metrics;
mod pretrain;
pub mod schedule;

use std::sync::Arc;

use babelflow_stage::StageKind;

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![Arc::new(pretrain::Pretrain)]
}
