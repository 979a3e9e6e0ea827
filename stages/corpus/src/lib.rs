//! Corpus stage kinds: turn the user's files (text, instructions, exams)
//! into clean, typed Parquet, and split tables deterministically.

mod choice;
mod clean;
mod dedup;
pub mod estimate;
mod ingest;
mod instructions;
pub mod langid;
pub mod parquet_in;
mod read;
mod split;
pub mod table;
pub mod template;

use std::sync::Arc;

use babelflow_stage::StageKind;

pub use parquet_in::table_rows;
pub use table::{
    cell, for_each_batch, read_corpus, read_corpus_head, read_instructions, Document, Instruction, StringTableWriter,
    TableBatch,
};

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![
        Arc::new(ingest::Ingest),
        Arc::new(instructions::IngestInstructions),
        Arc::new(choice::IngestChoice),
        Arc::new(split::Split),
    ]
}
