//! The `extend-vocab` kind: the study's EXT variant, done as Chinese-LLaMA
//! did it. Train a BPE on target-language text with the base tokenizer's own
//! normaliser and pre-tokeniser, then append the new characters and merges
//! to the base tokenizer. Existing ids and merges are untouched (new merges
//! rank after all old ones), so the base model's embeddings stay valid; the
//! model stage resizes embeddings from `added_tokens.json`.

use std::collections::HashSet;
use std::str::FromStr;

use babelflow_corpus::read_corpus;
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde_json::{json, Map, Value};
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{Model, Tokenizer};

use babelflow_stage::spm::merges_of;

use crate::hf::LoadedTokenizer;

pub struct ExtendVocab;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default("new_tokens", ParamType::Int, "1000", "how many tokens to add at most"),
    ParamSpec::with_default(
        "train_vocab_size",
        ParamType::Int,
        "4000",
        "vocabulary of the target-language BPE the new tokens are drawn from",
    ),
    ParamSpec::with_default(
        "min_frequency",
        ParamType::Int,
        "2",
        "a new merge must occur at least this often in the corpus",
    ),
];

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "tokenizer",
        required: true,
        many: false,
        doc: "the base HF tokenizer.json (BPE: LLaMA-1/2/3 style), or a model folder (its tokenizer.json)",
    },
    InputSpec {
        name: "corpus",
        required: true,
        many: true,
        doc: "target-language corpus Parquet",
    },
];

fn vocab_of(model: &Value) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = model["vocab"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, id)| Some((k.clone(), id.as_u64()?))).collect())
        .unwrap_or_default();
    v.sort_by_key(|(_, id)| *id);
    v
}

fn tokens_per_char(tok: &Tokenizer, texts: &[String]) -> Result<f64, StageError> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let enc = tok
        .encode_batch(refs, false)
        .map_err(|e| StageError::failed(format!("encoding: {e}")))?;
    let tokens: usize = enc.iter().map(|e| e.get_ids().len()).sum();
    let chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    Ok(if chars == 0 { 0.0 } else { tokens as f64 / chars as f64 })
}

/// A token the target-language BPE learnt, with the merge that made it
/// (`None` for a new character).
struct Candidate {
    token: String,
    merge: Option<(String, String)>,
}

/// The base tokenizer being extended.
struct Base<'a> {
    doc: &'a Value,
    size: u64,
    merges: Vec<(String, String)>,
    /// Byte-fallback BPE without ByteLevel (LLaMA-1/2): the style whose
    /// GGUF form keeps scores, not merges (see `babelflow_stage::spm`).
    sentencepiece: bool,
}

/// True when the tokenizer turns the token's own text into that token.
fn reaches(tok: &Tokenizer, token: &str, id: u32) -> bool {
    tok.get_model()
        .tokenize(token)
        .is_ok_and(|pieces| pieces.len() == 1 && pieces[0].id == id)
}

/// The base with `candidates` appended (ids after the base's, merges after
/// its merges; the whole list closed for the SentencePiece style): the
/// tokenizer.json text and the loaded tokenizer.
fn assemble(base: &Base, candidates: &[Candidate]) -> Result<(String, Tokenizer), StageError> {
    let mut doc = base.doc.clone();
    let mut vocab: Map<String, Value> = doc["model"]["vocab"].as_object().cloned().unwrap_or_default();
    let mut merges = base.merges.clone();
    for (i, c) in candidates.iter().enumerate() {
        vocab.insert(c.token.clone(), json!(base.size + i as u64));
        merges.extend(c.merge.clone());
    }
    doc["model"]["vocab"] = Value::Object(vocab);
    doc["model"]["merges"] = Value::Array(merges.iter().map(|(a, b)| json!([a, b])).collect());
    if base.sentencepiece {
        babelflow_stage::spm::close_merges_of(&mut doc);
    }
    let text = serde_json::to_string_pretty(&doc).map_err(|e| StageError::failed(e.to_string()))?;
    let tok = Tokenizer::from_str(&text)
        .map_err(|e| StageError::failed(format!("the merged tokenizer does not load: {e}")))?;
    Ok((text, tok))
}

/// The extension with every added token reachable: a learnt token whose
/// text the extended tokenizer splits otherwise (an earlier base merge
/// took one of its pieces) is re-made from the two pieces it does reach
/// when there are two (byte-level; SentencePiece-style merges are closed,
/// so that never helps there), else dropped, with every token built on
/// it. Returns the text, the tokenizer, the added (token, id) and the
/// dropped tokens.
#[allow(clippy::type_complexity)]
fn reachable_extension(
    base: &Base,
    mut candidates: Vec<Candidate>,
) -> Result<(String, Tokenizer, Vec<(String, u64)>, Vec<String>), StageError> {
    let mut dropped: Vec<String> = Vec::new();
    let mut round = 0;
    loop {
        let (text, tok) = assemble(base, &candidates)?;
        let id_of = |i: usize| (base.size + i as u64) as u32;
        let stuck: Vec<usize> = (0..candidates.len())
            .filter(|&i| !reaches(&tok, &candidates[i].token, id_of(i)))
            .collect();
        if stuck.is_empty() {
            let added = candidates
                .into_iter()
                .enumerate()
                .map(|(i, c)| (c.token, id_of(i) as u64))
                .collect();
            return Ok((text, tok, added, dropped));
        }
        let mut gone: HashSet<String> = HashSet::new();
        for i in stuck {
            let pieces: Vec<String> = tok
                .get_model()
                .tokenize(&candidates[i].token)
                .map(|ps| ps.into_iter().map(|p| p.value).collect())
                .unwrap_or_default();
            // Re-making could chase its tail; a few rounds, then drop.
            let remade = !base.sentencepiece
                && round < 4
                && pieces.len() == 2
                && candidates[i].merge.as_ref() != Some(&(pieces[0].clone(), pieces[1].clone()));
            if remade {
                candidates[i].merge = Some((pieces[0].clone(), pieces[1].clone()));
            } else {
                gone.insert(candidates[i].token.clone());
            }
        }
        // Tokens built on a dropped one go too (their merge names it).
        let mut kept = Vec::new();
        for c in candidates {
            let built_on_gone = c
                .merge
                .as_ref()
                .is_some_and(|(a, b)| gone.contains(a) || gone.contains(b));
            if gone.contains(&c.token) || built_on_gone {
                gone.insert(c.token.clone());
                dropped.push(c.token);
            } else {
                kept.push(c);
            }
        }
        candidates = kept;
        round += 1;
    }
}

impl StageKind for ExtendVocab {
    fn name(&self) -> &'static str {
        "extend-vocab"
    }
    fn code_version(&self) -> &'static str {
        // 2: every added token reachable; SentencePiece-style merges closed.
        "2"
    }
    fn summary(&self) -> &'static str {
        "add target-language tokens to a base tokenizer without changing any existing id"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["tokenizer.json".into(), "added_tokens.json".into(), "stats.json".into()]
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::extend_vocab(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        // A model folder stands for its tokenizer.json, as in `tokenize`.
        let bound = &ctx.single_input("tokenizer")?.path;
        let base_path = &if bound.is_dir() {
            bound.join("tokenizer.json")
        } else {
            bound.clone()
        };
        let base = LoadedTokenizer::load(base_path)?;
        let doc: Value =
            serde_json::from_str(&std::fs::read_to_string(base_path).map_err(|e| StageError::io(base_path, e))?)
                .map_err(|e| StageError::input(base_path, None, format!("not JSON: {e}")))?;
        if doc["model"]["type"] != "BPE" {
            return Err(StageError::input(
                base_path,
                None,
                format!(
                    "extend-vocab works on BPE tokenizers (LLaMA-1/2/3); this one is {}",
                    doc["model"]["type"]
                ),
            ));
        }

        let mut texts = Vec::new();
        for item in ctx.input("corpus") {
            read_corpus(&item.path, &mut |d| {
                texts.push(d.text);
                Ok(())
            })?;
        }
        ctx.check_cancelled()?;

        // 1. A BPE on the target language with the base's own text handling.
        let mut target_doc = doc.clone();
        target_doc["model"]["vocab"] = json!({});
        target_doc["model"]["merges"] = json!([]);
        target_doc["added_tokens"] = json!([]);
        target_doc["post_processor"] = Value::Null;
        let mut target = Tokenizer::from_str(&target_doc.to_string())
            .map_err(|e| StageError::failed(format!("building the target-language trainer: {e}")))?;
        let mut builder = BpeTrainerBuilder::new()
            .vocab_size(p.usize("train_vocab_size")?)
            .min_frequency(p.usize("min_frequency")? as u64)
            .show_progress(false);
        if doc["pre_tokenizer"].to_string().contains("ByteLevel") {
            builder = builder.initial_alphabet(ByteLevel::alphabet().into_iter().collect());
        }
        let mut trainer = TrainerWrapper::BpeTrainer(builder.build());
        target
            .train(&mut trainer, texts.iter())
            .map_err(|e| StageError::failed(format!("training target-language merges: {e}")))?;
        let trained: Value =
            serde_json::from_str(&target.to_string(false).map_err(|e| StageError::failed(e.to_string()))?)
                .map_err(|e| StageError::failed(e.to_string()))?;

        // 2. New characters, then new merges in training order: candidates.
        let base_vocab = vocab_of(&doc["model"]);
        let mut known: HashSet<String> = base_vocab.iter().map(|(t, _)| t.clone()).collect();
        let added_ids = doc["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["id"].as_u64());
        let base_size = base_vocab
            .iter()
            .map(|(_, id)| *id)
            .chain(added_ids)
            .max()
            .map_or(0, |m| m + 1);
        let limit = p.usize("new_tokens")?;
        let mut candidates: Vec<Candidate> = Vec::new();
        for (token, _) in vocab_of(&trained["model"]) {
            if candidates.len() >= limit {
                break;
            }
            if token.chars().count() == 1 && known.insert(token.clone()) {
                candidates.push(Candidate { token, merge: None });
            }
        }
        for (a, b) in merges_of(&trained["model"]) {
            if candidates.len() >= limit {
                break;
            }
            let joined = format!("{a}{b}");
            if known.contains(&a) && known.contains(&b) && known.insert(joined.clone()) {
                candidates.push(Candidate {
                    token: joined,
                    merge: Some((a, b)),
                });
            }
        }

        // 3. Every added token reachable by the tokenizer's own rules.
        let extending = Base {
            doc: &doc,
            size: base_size,
            merges: merges_of(&doc["model"]),
            sentencepiece: babelflow_stage::spm::is_sentencepiece_style(&doc),
        };
        let (text, merged, added, dropped) = reachable_extension(&extending, candidates)?;
        let next_id = base_size + added.len() as u64;

        // 4. Nothing that existed moved.
        for (token, id) in &base_vocab {
            if merged.token_to_id(token) != Some(*id as u32) {
                return Err(StageError::failed(format!(
                    "internal error: base token {token:?} lost id {id}"
                )));
            }
        }
        // Base tokens text never produces, for the record (byte pieces and
        // special tokens are made otherwise, so they do not count).
        let specials: HashSet<&str> = doc["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["content"].as_str())
            .collect();
        let base_unreachable = base_vocab
            .iter()
            .filter(|(token, _)| !crate::hf::is_byte_piece(token) && !specials.contains(token.as_str()))
            .filter(|(token, id)| !reaches(&merged, token, *id as u32))
            .count();

        // The pieces the *old* tokenizer splits each new token into (for subword-mean init).
        let records: Vec<Value> = added
            .iter()
            .map(|(token, id)| {
                let pieces: Vec<u32> = base
                    .tokenizer
                    .get_model()
                    .tokenize(token)
                    .map(|ts| ts.into_iter().map(|t| t.id).collect())
                    .unwrap_or_default();
                json!({"id": id, "token": token, "base_pieces": pieces})
            })
            .collect();
        let before = tokens_per_char(&base.tokenizer, &texts)?;
        let after = tokens_per_char(&merged, &texts)?;

        let write = |name: &str, bytes: Vec<u8>| {
            let path = ctx.output(name);
            std::fs::write(&path, bytes).map_err(|e| StageError::io(&path, e))
        };
        write("tokenizer.json", text.into_bytes())?;
        let record = json!({"base_vocab_size": base_size, "vocab_size": next_id, "added": records});
        write(
            "added_tokens.json",
            serde_json::to_vec_pretty(&record).map_err(|e| StageError::failed(e.to_string()))?,
        )?;
        let stats = json!({
            "added": added.len(),
            "base_vocab_size": base_size,
            "vocab_size": next_id,
            "corpus_tokens_per_char_before": before,
            "corpus_tokens_per_char_after": after,
            "merges": if extending.sentencepiece { "closed (every split of every token, as SentencePiece and llama.cpp merge)" } else { "as learnt" },
            "unreachable_dropped": dropped.len(),
            "unreachable_dropped_tokens": dropped.iter().take(50).collect::<Vec<_>>(),
            "base_tokens_unreachable": base_unreachable,
        });
        write(
            "stats.json",
            serde_json::to_vec_pretty(&stats).map_err(|e| StageError::failed(e.to_string()))?,
        )?;
        ctx.log(&format!(
            "added {} tokens; tokens/char on the corpus {before:.3} → {after:.3}",
            added.len()
        ));
        if !dropped.is_empty() {
            let shown: Vec<&str> = dropped.iter().take(10).map(String::as_str).collect();
            ctx.log(&format!(
                "dropped {} learnt tokens the extended tokenizer can never produce (their text tokenizes to other pieces): {}",
                dropped.len(),
                shown.join(" ")
            ));
        }
        Ok(())
    }
}
