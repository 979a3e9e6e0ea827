//! Vocabulary transfer: the `resize-vocab` kind and the ways an extended
//! vocabulary's new rows can start, from the model alone (`mean`,
//! `subword-mean`, `multivariate`) or from text (`focus` over target text,
//! `aligned` over parallel text). Apart from babelflow-model because the
//! text-based inits read corpora with the tokenizers.

mod align;
mod focus;
pub mod init;
mod multivariate;
mod sgns;
mod stage;
mod text;

use std::sync::Arc;

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn babelflow_stage::StageKind>> {
    vec![Arc::new(stage::ResizeVocab)]
}
