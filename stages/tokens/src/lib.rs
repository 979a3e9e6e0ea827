//! Token stage kinds: tokenize with an HF tokenizer, measure fertility,
//! train a tokenizer, extend a vocabulary, mix languages by token budget,
//! and the token artifact format they share.

pub mod artifact;
pub mod chat;
pub mod estimate;
mod extend;
pub mod fertility;
pub mod hf;
mod mix;
pub mod specials;
mod tokenize;
mod train;

use std::sync::Arc;

use babelflow_stage::StageKind;

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![
        Arc::new(tokenize::Tokenize),
        Arc::new(train::TrainTokenizer),
        Arc::new(extend::ExtendVocab),
        Arc::new(mix::Mix),
    ]
}
