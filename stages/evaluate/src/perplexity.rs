//! The `perplexity` kind: how well a model predicts held-out text, per
//! language. Token-level perplexity is what the study reports, but it
//! depends on the tokenizer (an extended vocabulary makes every text fewer,
//! harder tokens), so bits per character and per byte — the same total
//! log-likelihood spread over the text itself — are reported beside it and
//! are the figures to compare across tokenizers.
//!
//! Each document is scored as the model was trained to see it: after BOS
//! when its tokenizer adds one, else after EOS (documents follow an EOS in
//! a pretraining stream: SmolLM2, GPT-2-style models), else from its
//! second token (see `babelflow_tokens::specials`). It is cut into windows
//! of `max_len` predictions that share one boundary token; every text token
//! is predicted once. stats.json says which context token was used.

use std::collections::BTreeMap;
use std::f64::consts::LN_2;

use babelflow_corpus::{read_corpus, Document};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use rayon::prelude::*;

use crate::common::{Loaded, MODEL_INPUT, PRECISION_PARAM, SPECIAL_PARAMS, TOKENIZER_INPUT};
use crate::metrics::EvalMetrics;
use crate::scoring::next_token_logprobs;

pub struct Perplexity;

const PARAMS: &[ParamSpec] = &[
    PRECISION_PARAM,
    SPECIAL_PARAMS[0],
    SPECIAL_PARAMS[1],
    SPECIAL_PARAMS[2],
    ParamSpec::with_default(
        "max_len",
        ParamType::Int,
        "512",
        "context window (predictions per chunk)",
    )
    .positive(),
    ParamSpec::with_default("batch_size", ParamType::Int, "8", "chunks per forward pass").positive(),
    ParamSpec::with_default(
        "max_docs",
        ParamType::Int,
        "0",
        "documents per language to score (0: all)",
    )
    .non_negative(),
];

const INPUTS: &[InputSpec] = &[
    MODEL_INPUT,
    InputSpec {
        name: "text",
        required: true,
        many: true,
        doc: "held-out text tables (corpus.parquet, or a split's validation.parquet)",
    },
    TOKENIZER_INPUT,
];

/// Totals of one language.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Totals {
    pub nll: f64,
    pub tokens: u64,
    pub chars: u64,
    pub bytes: u64,
    pub docs: u64,
}

impl Totals {
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.tokens.max(1) as f64).exp()
    }
    pub fn bits_per_char(&self) -> f64 {
        self.nll / LN_2 / self.chars.max(1) as f64
    }
    pub fn bits_per_byte(&self) -> f64 {
        self.nll / LN_2 / self.bytes.max(1) as f64
    }
}

/// The chunks of `context ids`: windows of `max_len + 1` ids overlapping by
/// one, so each id after the context token is a prediction target exactly
/// once (without one, every id but the first).
pub fn chunks(context: Option<u32>, ids: &[u32], max_len: usize) -> Vec<Vec<u32>> {
    let mut seq = Vec::with_capacity(ids.len() + 1);
    seq.extend(context);
    seq.extend_from_slice(ids);
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < seq.len() {
        let end = (start + max_len + 1).min(seq.len());
        out.push(seq[start..end].to_vec());
        start = end - 1;
    }
    out
}

impl StageKind for Perplexity {
    fn name(&self) -> &'static str {
        "perplexity"
    }
    fn code_version(&self) -> &'static str {
        // 3: fused flex attention, projections, RMSNorm, RoPE (and AdamW, for training): values differ in the last bits.
        // 4: the context token is the model's own (BOS only where its tokenizer adds one).
        "4"
    }
    fn summary(&self) -> &'static str {
        "perplexity, bits per character and per byte of held-out text, per language"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["metrics.parquet".into(), "stats.json".into()]
    }
    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::perplexity(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let (max_len, batch, max_docs) = (p.usize("max_len")?, p.usize("batch_size")?, p.usize("max_docs")?);
        let m = Loaded::from_context(ctx)?;
        let context = m.specials.context_token().map(|t| t.id);
        let rope = m.rope(max_len + 1)?;

        // The text is tokenized 64 KiB at a time, in parallel, and its chunks
        // scored `batch` at a time in reading order (a batch may span
        // documents and tables, as when the whole text was tokenized first:
        // the same batches, the same bits). What is held is one read batch
        // of the table, 64 KiB of text in tokens and one batch of chunks, not
        // the whole text in tokens: 40 MB of text at width 64 peaked at 119
        // MiB that way, 75 MiB this way.
        let rows_total: Option<u64> = ctx
            .input("text")
            .iter()
            .map(|item| babelflow_corpus::table_rows(&item.path))
            .sum();
        let started = std::time::Instant::now();
        let mut scoring = Scoring {
            ctx,
            rows_read: 0,
            rows_total,
            loaded: &m,
            rope: &rope,
            context,
            max_len,
            batch,
            totals: BTreeMap::new(),
            pending: Vec::new(),
        };
        let mut docs: Vec<Document> = Vec::new();
        let mut bytes = 0;
        for item in ctx.input("text") {
            read_corpus(&item.path, &mut |doc| {
                scoring.rows_read += 1;
                let t = scoring.totals.entry(doc.lang.clone()).or_default();
                if max_docs > 0 && t.docs as usize >= max_docs {
                    return Ok(());
                }
                t.docs += 1;
                bytes += doc.text.len();
                docs.push(doc);
                if bytes >= TOKENIZED_AT_ONCE {
                    scoring.read(std::mem::take(&mut docs))?;
                    bytes = 0;
                }
                Ok(())
            })?;
        }
        scoring.read(docs)?;
        scoring.finish()?;
        let totals = scoring.totals;

        let seconds = started.elapsed().as_secs_f64();
        let scored: u64 = totals.values().map(|t| t.tokens).sum();
        let mut metrics = EvalMetrics::default();
        let mut stats = serde_json::Map::new();
        for (lang, t) in &totals {
            metrics.push(lang, "perplexity", "token_perplexity", t.perplexity(), t.docs);
            metrics.push(lang, "perplexity", "bits_per_char", t.bits_per_char(), t.docs);
            metrics.push(lang, "perplexity", "bits_per_byte", t.bits_per_byte(), t.docs);
            metrics.push(lang, "perplexity", "tokens", t.tokens as f64, t.docs);
            stats.insert(
                lang.clone(),
                serde_json::json!({
                    "token_perplexity": t.perplexity(),
                    "bits_per_char": t.bits_per_char(),
                    "bits_per_byte": t.bits_per_byte(),
                    "tokens": t.tokens, "chars": t.chars, "bytes": t.bytes, "docs": t.docs,
                    "tokens_per_char": t.tokens as f64 / t.chars.max(1) as f64,
                }),
            );
        }
        metrics.write(&ctx.output("metrics.parquet"), &m.name, ctx.instance)?;
        ctx.write_json(
            "stats.json",
            &serde_json::json!({
                "model": m.name, "backend": m.backend, "precision": m.precision, "max_len": max_len, "per_lang": stats,
                "context_token": m.specials.context_token().map(|t| &t.text), "special_tokens": m.specials.describe(),
                "seconds": seconds, "tokens_per_s": scored as f64 / seconds.max(1e-9),
                "memory": m.memory(ctx),
            }),
        )?;
        Ok(())
    }
}

/// Text tokenized in one parallel pass between forward passes. Document
/// by document on the calling thread, a 4 MB text took a third longer on 2
/// cores (the pool's idle threads spun against it: 4x the involuntary
/// context switches); 1 MiB at once held more in the tokenizer's
/// encodings than the ids saved.
const TOKENIZED_AT_ONCE: usize = 1 << 16;

/// The running totals of a `perplexity` run and the chunks read but not
/// yet scored.
struct Scoring<'a> {
    ctx: &'a StageContext<'a>,
    /// Rows of the text tables read so far, and in all (for progress).
    rows_read: u64,
    rows_total: Option<u64>,
    loaded: &'a Loaded,
    rope: &'a babelflow_model::Rope,
    context: Option<u32>,
    max_len: usize,
    batch: usize,
    totals: BTreeMap<String, Totals>,
    pending: Vec<(String, Vec<u32>)>,
}

impl Scoring<'_> {
    /// Tokenizes `docs` (counted in `totals` when read) and scores every
    /// full batch of chunks they complete, in reading order.
    fn read(&mut self, docs: Vec<Document>) -> Result<(), StageError> {
        let loaded = self.loaded;
        let ids: Vec<Vec<u32>> = docs
            .par_iter()
            .map(|doc| loaded.encode(&doc.text))
            .collect::<Result<_, _>>()?;
        for (doc, ids) in docs.into_iter().zip(ids) {
            let t = self.totals.get_mut(&doc.lang).expect("counted when read");
            // Predicted tokens: all of them after a context token.
            t.tokens += ids.len().saturating_sub(usize::from(self.context.is_none())) as u64;
            t.chars += doc.text.chars().count() as u64;
            t.bytes += doc.text.len() as u64;
            let lang = doc.lang;
            self.pending.extend(
                chunks(self.context, &ids, self.max_len)
                    .into_iter()
                    .map(|c| (lang.clone(), c)),
            );
            while self.pending.len() >= self.batch {
                let rest = self.pending.split_off(self.batch);
                let full = std::mem::replace(&mut self.pending, rest);
                self.score(&full)?;
            }
        }
        Ok(())
    }

    /// Scores the last, short batch.
    fn finish(&mut self) -> Result<(), StageError> {
        let last = std::mem::take(&mut self.pending);
        if !last.is_empty() {
            self.score(&last)?;
        }
        Ok(())
    }

    fn score(&mut self, group: &[(String, Vec<u32>)]) -> Result<(), StageError> {
        self.ctx.check_cancelled()?;
        let seqs: Vec<&[u32]> = group.iter().map(|(_, c)| c.as_slice()).collect();
        let logps = next_token_logprobs(&self.loaded.model, self.rope, &seqs, &self.loaded.device);
        self.loaded.sample_device_memory();
        for ((lang, _), lp) in group.iter().zip(logps) {
            let t = self.totals.get_mut(lang).expect("counted when read");
            t.nll -= lp.iter().map(|&x| x as f64).sum::<f64>();
        }
        self.ctx.progress(self.rows_read, self.rows_total, "documents read");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_predict_every_token_once() {
        let ids: Vec<u32> = (10..20).collect();
        let c = chunks(Some(1), &ids, 4);
        let predicted: usize = c.iter().map(|w| w.len() - 1).sum();
        assert_eq!(predicted, ids.len());
        assert_eq!(c[0], vec![1, 10, 11, 12, 13]);
        assert_eq!(c[1][0], 13, "the boundary token is context for the next chunk");
        assert!(chunks(Some(1), &[], 4).is_empty());
        // Without a context token the first id is only context.
        let c = chunks(None, &ids, 4);
        assert_eq!(c.iter().map(|w| w.len() - 1).sum::<usize>(), ids.len() - 1);
        assert_eq!(c[0], vec![10, 11, 12, 13, 14]);
    }
}
