//! Corpus stage kinds: turn the user's files into clean, typed Parquet.

mod clean;
mod dedup;
mod ingest;
pub mod langid;
mod read;
pub mod table;

use std::sync::Arc;

use babelflow_stage::StageKind;

pub use table::{read_corpus, Document, StringTableWriter};

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![Arc::new(ingest::Ingest)]
}
