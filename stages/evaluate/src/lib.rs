//! Evaluation stage kinds — the study's instruments: `perplexity` (with
//! bits per character), `exam` (multiple choice), `respond` (generated
//! answers scored by chrF and code-switching rates) and `judge` (LLM-Eval
//! scores from a judge model over an OpenAI-compatible API). Results are long-format
//! metrics Parquet (`model, stage, lang, task, metric, value, n`).

pub mod chrf;
pub mod codeswitch;
mod common;
mod estimate;
pub mod exam;
pub mod judge;
pub mod metrics;
pub mod perplexity;
pub mod respond;
pub mod scoring;

use std::sync::Arc;

use babelflow_stage::StageKind;

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![
        Arc::new(perplexity::Perplexity),
        Arc::new(exam::Exam),
        Arc::new(respond::Respond),
        Arc::new(judge::Judge),
    ]
}
