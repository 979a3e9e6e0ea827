//! Token stage kinds: tokenize with an HF tokenizer, measure fertility,
//! train a tokenizer, and the token artifact format they share.

pub mod artifact;
pub mod fertility;
pub mod hf;
mod tokenize;
mod train;

use std::sync::Arc;

use babelflow_stage::StageKind;

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![Arc::new(tokenize::Tokenize), Arc::new(train::TrainTokenizer)]
}
