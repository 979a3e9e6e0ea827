//! The `mix` kind: several token artifacts → one training stream with a
//! token budget split by language, either by explicit ratios
//! (`{zh: 0.9, en: 0.1}`) or by temperature sampling (p ∝ n^α).
//!
//! Each language's documents are taken in a seeded random order, repeated
//! (another epoch) when the language has fewer tokens than its share, and
//! the last document is cut so every language gets exactly its share. The
//! selected pieces are then shuffled together so batches mix languages.
//! Same inputs and seed → same bytes.
//!
//! The sampling plan is a per-language walk over the document index; it is
//! small enough that a dataframe library would add compile time and no
//! speed, so it is plain Rust.

use std::collections::BTreeMap;

use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde::Serialize;

use crate::artifact::{read_index, DocEntry, IndexWriter, TokenFile, TokenWriter};
use crate::hf::hex;

pub struct Mix;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::optional(
        "budget",
        ParamType::Int,
        "tokens in the mixed stream (default: as many as the data allow without repeating any language)",
    ),
    ParamSpec::optional(
        "ratios",
        ParamType::FloatMap,
        "share of the budget per language, e.g. {zh: 0.9, en: 0.1} (normalised to sum 1)",
    ),
    ParamSpec::optional(
        "temperature",
        ParamType::Float,
        "instead of ratios: p(lang) ∝ tokens(lang)^α with this α (1 = natural mix, 0 = uniform)",
    ),
    ParamSpec::with_default("seed", ParamType::Int, "0", "seed of the document order"),
];

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "tokens",
    required: true,
    many: true,
    doc: "token artifacts (from `tokenize`), all made with one tokenizer",
}];

#[derive(Debug, Serialize)]
struct LangMix {
    available_tokens: u64,
    target_tokens: u64,
    tokens: u64,
    requested_ratio: f64,
    achieved_ratio: f64,
    /// tokens taken / tokens available: above 1 means the language was repeated.
    epochs: f64,
    documents: u64,
}

/// A piece of a source document placed into the stream.
struct Piece {
    source: usize,
    doc: usize,
    take: u64,
}

impl StageKind for Mix {
    fn name(&self) -> &'static str {
        "mix"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "mix token artifacts of several languages by token budget and ratios (or temperature)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        ["tokens.bin", "index.parquet", "stats.json", "tokenizer.json"]
            .map(String::from)
            .to_vec()
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let ratios = params.float_map("ratios").unwrap_or_default();
        let temperature = params.opt_f64("temperature").ok().flatten();
        let mut problems = Vec::new();
        if ratios.is_empty() == temperature.is_none() {
            problems.push(("ratios".into(), "give either `ratios` or `temperature`".into()));
        }
        if ratios.iter().any(|(_, r)| *r < 0.0) || (!ratios.is_empty() && ratios.iter().all(|(_, r)| *r == 0.0)) {
            problems.push(("ratios".into(), "ratios must be non-negative and not all zero".into()));
        }
        if params.opt_i64("budget").ok().flatten().is_some_and(|b| b <= 0) {
            problems.push(("budget".into(), "must be a positive number of tokens".into()));
        }
        problems
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::mix(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let items = ctx.input("tokens");
        let mut files = Vec::new();
        let mut indexes = Vec::new();
        let mut bins = Vec::new();
        for item in items {
            // A bare reference binds `tokens.bin`; any output of the artifact will do.
            let bin = if item.path.is_dir() {
                item.path.join("tokens.bin")
            } else {
                item.path.with_file_name("tokens.bin")
            };
            let index_path = bin.with_file_name("index.parquet");
            let file = TokenFile::open(&bin)?;
            if let Some(first) = files.first() {
                let first: &TokenFile = first;
                if first.header.tokenizer_hash != file.header.tokenizer_hash {
                    return Err(StageError::failed(format!(
                        "cannot mix token artifacts made with different tokenizers: {} (tokenizer {}) and {} (tokenizer {})",
                        items[0].instance.as_deref().unwrap_or("the first input"),
                        &hex(&first.header.tokenizer_hash)[..12],
                        item.instance.as_deref().unwrap_or(&bin.display().to_string()),
                        &hex(&file.header.tokenizer_hash)[..12],
                    )));
                }
            }
            let index = read_index(&index_path)?;
            if let Some(bad) = index.iter().find(|d| d.offset + d.n_tokens > file.header.n_tokens) {
                return Err(StageError::input(
                    &index_path,
                    None,
                    format!("document {} points past the end of {}", bad.id, bin.display()),
                ));
            }
            files.push(file);
            indexes.push(index);
            bins.push(bin);
        }

        // Documents per language, in input order.
        let mut by_lang: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        let mut available: BTreeMap<String, u64> = BTreeMap::new();
        for (s, index) in indexes.iter().enumerate() {
            for (d, doc) in index.iter().enumerate() {
                by_lang.entry(doc.lang.clone()).or_default().push((s, d));
                *available.entry(doc.lang.clone()).or_default() += doc.n_tokens;
            }
        }
        let shares = shares(p, &available)?;
        let budget = match p.opt_i64("budget")? {
            Some(b) => b as u64,
            // The largest budget that repeats no language.
            None => shares
                .iter()
                .filter(|(_, s)| **s > 0.0)
                .map(|(l, s)| (available[l] as f64 / s).floor() as u64)
                .min()
                .unwrap_or(0),
        };
        // The constant keeps the shuffles mixes have always made.
        let mut rng = babelflow_stage::rng::Rng::new(p.i64("seed")? as u64 ^ 0x5851_f42d_4c95_7f2d);
        let mut pieces = Vec::new();
        let mut report = BTreeMap::new();
        let mut assigned = 0u64;
        let langs: Vec<&String> = shares.keys().collect();
        for (i, lang) in langs.iter().enumerate() {
            let share = shares[*lang];
            // The last language takes the rounding remainder, so the total is the budget.
            let target = if i + 1 == langs.len() {
                budget - assigned
            } else {
                (budget as f64 * share).round() as u64
            };
            assigned += target;
            let docs = by_lang.get(*lang).cloned().unwrap_or_default();
            let have = available.get(*lang).copied().unwrap_or(0);
            if target > 0 && have == 0 {
                return Err(StageError::failed(format!(
                    "language `{lang}` has a share of the mix but no tokens in the inputs"
                )));
            }
            let mut taken = 0u64;
            let mut n_docs = 0u64;
            let mut order = docs.clone();
            'epochs: while taken < target {
                rng.shuffle(&mut order);
                for &(s, d) in &order {
                    ctx.check_cancelled()?;
                    let n = indexes[s][d].n_tokens;
                    if n == 0 {
                        continue;
                    }
                    let take = n.min(target - taken);
                    pieces.push(Piece {
                        source: s,
                        doc: d,
                        take,
                    });
                    taken += take;
                    n_docs += 1;
                    if taken == target {
                        break 'epochs;
                    }
                }
            }
            report.insert(
                (*lang).clone(),
                LangMix {
                    available_tokens: have,
                    target_tokens: target,
                    tokens: taken,
                    requested_ratio: share,
                    achieved_ratio: 0.0,
                    epochs: if have == 0 { 0.0 } else { taken as f64 / have as f64 },
                    documents: n_docs,
                },
            );
        }
        rng.shuffle(&mut pieces);

        let header = files[0].header;
        let mut out = TokenWriter::create(&ctx.output("tokens.bin"), header.vocab_size, header.tokenizer_hash)?;
        let mut index = IndexWriter::create(&ctx.output("index.parquet"))?;
        for (k, piece) in pieces.iter().enumerate() {
            let doc: &DocEntry = &indexes[piece.source][piece.doc];
            let ids = files[piece.source].slice(doc.offset as usize, (doc.offset + piece.take) as usize);
            let offset = out.tokens_written();
            out.write(&ids)?;
            let whole = piece.take == doc.n_tokens;
            index.push(DocEntry {
                id: doc.id.clone(),
                lang: doc.lang.clone(),
                offset,
                n_tokens: piece.take,
                // A cut document's characters are not known; scale them.
                n_chars: if whole {
                    doc.n_chars
                } else {
                    doc.n_chars * piece.take / doc.n_tokens.max(1)
                },
                n_bytes: if whole {
                    doc.n_bytes
                } else {
                    doc.n_bytes * piece.take / doc.n_tokens.max(1)
                },
            })?;
            if k % 4096 == 0 {
                ctx.progress(offset, Some(budget), "writing the mixed stream");
            }
        }
        let total = out.finish()?.n_tokens;
        index.finish()?;
        for m in report.values_mut() {
            m.achieved_ratio = if total == 0 {
                0.0
            } else {
                m.tokens as f64 / total as f64
            };
        }
        let tokenizer = bins[0].with_file_name("tokenizer.json");
        if tokenizer.is_file() {
            std::fs::copy(&tokenizer, ctx.output("tokenizer.json")).map_err(|e| StageError::io(&tokenizer, e))?;
        } else {
            return Err(StageError::input(
                &tokenizer,
                None,
                "the token artifact has no tokenizer.json beside it",
            ));
        }
        let stats = serde_json::json!({
            "budget": budget,
            "tokens": total,
            "seed": p.i64("seed")?,
            "languages": report,
        });
        ctx.write_json("stats.json", &stats)?;
        for (lang, m) in &report {
            if m.epochs > 1.0 {
                ctx.log(&format!(
                    "{lang}: repeated {:.2} epochs to reach {} tokens",
                    m.epochs, m.tokens
                ));
            }
        }
        ctx.note("tokens", total);
        Ok(())
    }
}

/// Normalised share per language, from `ratios` or `temperature`.
fn shares(p: &Params, available: &BTreeMap<String, u64>) -> Result<BTreeMap<String, f64>, StageError> {
    let ratios = p.float_map("ratios")?;
    let raw: BTreeMap<String, f64> = if !ratios.is_empty() {
        for (lang, _) in &ratios {
            if !available.contains_key(lang) {
                return Err(StageError::Param {
                    name: "ratios".into(),
                    message: format!(
                        "names language `{lang}`, which no input has (inputs have: {})",
                        available.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
        ratios.into_iter().collect()
    } else {
        let alpha = p.f64("temperature")?;
        available
            .iter()
            .map(|(l, n)| (l.clone(), (*n as f64).powf(alpha)))
            .collect()
    };
    let sum: f64 = raw.values().sum();
    Ok(raw.into_iter().map(|(l, r)| (l, r / sum)).collect())
}
