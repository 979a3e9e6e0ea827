//! A GGUF's tokenizer (`tokenizer.ggml.*`) ↔ HF's tokenizer files, as JSON
//! (the model crate does not link the tokenizers crate; the tokens crate
//! and transformers load what is written here).
//!
//! GGUF → HF:
//! - `gpt2` (byte-level BPE): vocabulary and merges as stored; the
//!   pre-tokenizer the file names in `tokenizer.ggml.pre`: `smollm` (digits
//!   one by one, then GPT-2's split, as SmolLM's own tokenizer.json),
//!   `llama3` / `llama-bpe` / `llama-v3` / `smaug-bpe` / `dbrx` / `falcon3`
//!   (LLaMA-3's split, `ignore_merges`), `default` / `gpt2` (GPT-2's split);
//!   any other is refused by name;
//! - `llama` (SentencePiece): BPE with byte fallback over the same
//!   vocabulary, the merges the file has or, like transformers, the ones its
//!   scores imply (`generate_merges`), `▁` spaces with a prefix space unless
//!   `add_space_prefix` is false.
//!
//! Control tokens become special added tokens, user-defined ones plain added
//! tokens. BOS/EOS/UNK/PAD, `add_bos_token`, `add_eos_token` and the chat
//! template go to tokenizer_config.json and generation_config.json.
//!
//! HF → GGUF: the reverse for the tokenizers babelflow and the LLaMA family
//! use: byte-level BPE as `gpt2` (pre from the pre-tokenizer's shape), and
//! byte-fallback BPE as `llama` with a score per token that ranks it as its
//! merge does (`-rank`, so llama.cpp's score-driven merging follows the
//! BPE order).

use serde_json::{json, Value};

use super::file::{GgufFile, MetaValue};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PRES: &[&str] = &["llama3", "llama-bpe", "llama-v3", "smaug-bpe", "dbrx", "falcon3"];

/// Token types, as llama.cpp numbers them.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// The HF files a GGUF's tokenizer becomes.
pub struct HfTokenizer {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
    pub generation_config: Value,
    /// What was done, for the log: the model, the pre-tokenizer, whether
    /// merges were derived.
    pub summary: String,
}

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>, String> {
    f.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| format!("no `{key}` in the file"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("`{key}` holds a non-string"))
        })
        .collect()
}

fn numbers(f: &GgufFile, key: &str) -> Option<Vec<f64>> {
    f.get(key)?.as_array()?.iter().map(MetaValue::as_f64).collect()
}

fn byte_level(pre: &str) -> Result<(Value, bool), String> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        p if LLAMA3_PRES.contains(&p) => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false)]}),
            true,
        ),
        "default" | "gpt2" => (byte_level(true), false),
        other => {
            return Err(format!(
                "tokenizer.ggml.pre `{other}` is not a pre-tokenizer babelflow rebuilds (it knows smollm, {}, default, gpt2)",
                LLAMA3_PRES.join(", ")
            ))
        }
    })
}

pub use babelflow_stage::spm::merges_from_scores;

/// The HF tokenizer files of a GGUF's `tokenizer.ggml.*` metadata.
pub fn to_hf(f: &GgufFile) -> Result<HfTokenizer, String> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or("no `tokenizer.ggml.model` in the file")?;
    let tokens = strings(f, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = numbers(f, "tokenizer.ggml.token_type")
        .map(|v| v.into_iter().map(|x| x as i32).collect())
        .unwrap_or_else(|| vec![NORMAL; tokens.len()]);
    let stored_merges = strings(f, "tokenizer.ggml.merges").ok();
    let id = |key: &str| f.get(key).and_then(MetaValue::as_u64).map(|v| v as usize);
    let text = |key: &str| id(key).and_then(|i| tokens.get(i).cloned());
    let flag = |key: &str| f.get(key).and_then(MetaValue::as_bool);

    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED || ty == UNKNOWN)
        .map(|(i, (t, &ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": ty == USER_DEFINED, "special": ty != USER_DEFINED})
        })
        .collect();
    let add_bos = flag("tokenizer.ggml.add_bos_token");
    let add_eos = flag("tokenizer.ggml.add_eos_token");

    let (tokenizer_json, summary) = match model {
        "gpt2" => {
            let pre = f
                .get("tokenizer.ggml.pre")
                .and_then(MetaValue::as_str)
                .unwrap_or("default");
            let (pre_tokenizer, ignore_merges) = byte_level(pre)?;
            let merges: Vec<Value> = stored_merges
                .ok_or("a gpt2 tokenizer without `tokenizer.ggml.merges`")?
                .iter()
                .map(|m| match m.split_once(' ') {
                    Some((l, r)) => json!([l, r]),
                    None => json!([m, ""]),
                })
                .collect();
            let json = json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer,
                "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                          "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                          "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
            });
            let n_merges = json["model"]["merges"].as_array().map_or(0, Vec::len);
            (
                json,
                format!(
                    "byte-level BPE, pre-tokenizer `{pre}`, {} tokens, {n_merges} merges",
                    tokens.len()
                ),
            )
        }
        "llama" => {
            let (merges, derived) = match stored_merges {
                Some(m) => (
                    m.iter()
                        .filter_map(|m| m.split_once(' ').map(|(l, r)| (l.to_string(), r.to_string())))
                        .collect(),
                    false,
                ),
                None => {
                    let scores = numbers(f, "tokenizer.ggml.scores").ok_or("a llama tokenizer without scores")?;
                    (merges_from_scores(&tokens, &scores), true)
                }
            };
            let prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let unk = text("tokenizer.ggml.unknown_token_id");
            let merges: Vec<Value> = merges.into_iter().map(|(l, r)| json!([l, r])).collect();
            let n_merges = merges.len();
            let json = json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": {"type": "Metaspace", "replacement": "▁",
                                  "prepend_scheme": if prefix { "first" } else { "never" }, "split": false},
                "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": if prefix { 1 } else { 0 }, "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                          "ignore_merges": false, "vocab": vocab, "merges": merges}
            });
            let how = if derived {
                "derived from the scores"
            } else {
                "as stored"
            };
            (
                json,
                format!(
                    "SentencePiece-style BPE, {} tokens, {n_merges} merges {how}",
                    tokens.len()
                ),
            )
        }
        other => {
            return Err(format!(
                "tokenizer.ggml.model `{other}` is not one babelflow rebuilds (it knows gpt2 and llama)"
            ))
        }
    };

    let mut config = serde_json::Map::new();
    for (name, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        config.insert(name.into(), text(key).map_or(Value::Null, Value::from));
    }
    // llama.cpp adds BOS to a SentencePiece vocabulary unless told not to.
    config.insert("add_bos_token".into(), json!(add_bos.unwrap_or(model == "llama")));
    config.insert("add_eos_token".into(), json!(add_eos.unwrap_or(false)));
    if let Some(t) = f.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        config.insert("chat_template".into(), json!(t));
    }
    if let Some(n) = f.get("llama.context_length").and_then(MetaValue::as_u64) {
        config.insert("model_max_length".into(), json!(n));
    }
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    let mut generation = serde_json::Map::new();
    for (name, key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(i) = id(key) {
            generation.insert(name.into(), json!(i));
        }
    }
    Ok(HfTokenizer {
        tokenizer_json,
        tokenizer_config: Value::Object(config),
        generation_config: Value::Object(generation),
        summary,
    })
}

/// The special tokens a model's tokenizer files say, by id, for export.
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
}

/// `tokenizer.ggml.*` metadata for an HF tokenizer.json.
pub fn from_hf(tokenizer: &Value, specials: &SpecialIds) -> Result<Vec<(String, MetaValue)>, String> {
    let model = &tokenizer["model"];
    if model["type"] != "BPE" {
        return Err(format!(
            "the tokenizer's model is {}, and GGUF export writes BPE tokenizers (byte-level or byte-fallback)",
            model["type"]
        ));
    }
    if !model["vocab"].is_object() {
        return Err("the tokenizer has no vocabulary".into());
    }
    // One token list and merge list for both styles, as `spm` defines them.
    let tokens = babelflow_stage::spm::tokens_by_id(tokenizer);
    let n = tokens.len() as u64;
    let mut special_ids = std::collections::BTreeSet::new();
    let mut user_ids = std::collections::BTreeSet::new();
    for t in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        let Some(id) = t["id"].as_u64() else { continue };
        if t["special"].as_bool().unwrap_or(false) {
            special_ids.insert(id);
        } else {
            user_ids.insert(id);
        }
    }
    let merges = babelflow_stage::spm::merges_of(model);
    let text = serde_json::to_string(tokenizer).unwrap_or_default();
    let byte_fallback = model["byte_fallback"].as_bool().unwrap_or(false);
    let is_byte_level = babelflow_stage::spm::is_byte_level(tokenizer);
    let mut meta: Vec<(String, MetaValue)> = Vec::new();
    let types: Vec<i32> = (0..n)
        .map(|i| {
            let t = &tokens[i as usize];
            if Some(i as u32) == specials.unk {
                UNKNOWN
            } else if special_ids.contains(&i) {
                CONTROL
            } else if user_ids.contains(&i) {
                USER_DEFINED
            } else if byte_fallback && is_byte_piece(t) {
                BYTE
            } else {
                NORMAL
            }
        })
        .collect();
    if is_byte_level {
        let pre = if text.contains("\"Digits\"") {
            "smollm"
        } else if text.contains("p{N}{1,3}") {
            "llama-bpe"
        } else {
            "gpt2"
        };
        meta.push(("tokenizer.ggml.model".into(), MetaValue::Str("gpt2".into())));
        meta.push(("tokenizer.ggml.pre".into(), MetaValue::Str(pre.into())));
    } else if byte_fallback {
        meta.push(("tokenizer.ggml.model".into(), MetaValue::Str("llama".into())));
        meta.push(("tokenizer.ggml.pre".into(), MetaValue::Str("default".into())));
    } else {
        return Err("the tokenizer is neither byte-level nor byte-fallback BPE; llama.cpp could not read it".into());
    }
    meta.push((
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(tokens.iter().cloned().map(MetaValue::Str).collect()),
    ));
    if !is_byte_level {
        // llama.cpp's SentencePiece tokenizer merges the best-scoring pair
        // first: a token's score is minus the rank of the merge that makes
        // it (exact in f32 below 2^24 merges).
        let scores = babelflow_stage::spm::scores_from_merges(&tokens, &merges)
            .into_iter()
            .map(|s| MetaValue::F32(s as f32))
            .collect();
        meta.push(("tokenizer.ggml.scores".into(), MetaValue::Array(scores)));
        let prefix = !text.contains("\"prepend_scheme\":\"never\"");
        meta.push(("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(prefix)));
    }
    meta.push((
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
    ));
    if is_byte_level {
        meta.push((
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(
                merges
                    .into_iter()
                    .map(|(l, r)| MetaValue::Str(format!("{l} {r}")))
                    .collect(),
            ),
        ));
    }
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", specials.bos),
        ("tokenizer.ggml.eos_token_id", specials.eos),
        ("tokenizer.ggml.unknown_token_id", specials.unk),
        ("tokenizer.ggml.padding_token_id", specials.pad),
    ] {
        if let Some(id) = id {
            meta.push((key.into(), MetaValue::U32(id)));
        }
    }
    meta.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(specials.add_bos)));
    meta.push(("tokenizer.ggml.add_eos_token".into(), MetaValue::Bool(specials.add_eos)));
    if let Some(t) = &specials.chat_template {
        meta.push(("tokenizer.chat_template".into(), MetaValue::Str(t.clone())));
    }
    Ok(meta)
}

/// `<0x0A>`-style byte pieces (the tokens crate has the same test; the
/// model crate does not depend on it).
fn is_byte_piece(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 6 && b.starts_with(b"<0x") && b[5] == b'>' && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}
