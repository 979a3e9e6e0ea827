//! The `train-tokenizer` kind: a BPE tokenizer trained with the tokenizers
//! crate's trainer on corpus Parquet, in either of the LLaMA family's two
//! layouts: `sentencepiece` (LLaMA-1/2: `▁` word marks, byte fallback through
//! `<0x00>`..`<0xFF>` pieces) or `byte-level` (LLaMA-3: a regex split into
//! words, then GPT-2 byte-to-character mapping, so every byte is a token and
//! nothing is ever unknown).

use std::str::FromStr;

use babelflow_corpus::read_corpus;
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde_json::{json, Map, Value};
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

pub struct TrainTokenizer;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "vocab_size",
        ParamType::Int,
        "8000",
        "size of the whole vocabulary, special and byte pieces included",
    ),
    ParamSpec::with_default(
        "style",
        ParamType::Choice(&["sentencepiece", "byte-level"]),
        r#""sentencepiece""#,
        "sentencepiece (LLaMA-1/2: ▁ word marks, byte fallback) or byte-level (LLaMA-3, tiktoken-style)",
    ),
    ParamSpec::optional(
        "special_tokens",
        ParamType::StrList,
        "special tokens, given the first ids in this order (sentencepiece: the first is the unknown \
         token, default [<unk>, <s>, </s>]; byte-level: default [<|begin_of_text|>, <|end_of_text|>])",
    ),
    ParamSpec::optional(
        "byte_fallback",
        ParamType::Bool,
        "sentencepiece style: add the 256 <0xNN> byte pieces so no text is ever unknown (default true)",
    ),
    ParamSpec::with_default(
        "min_frequency",
        ParamType::Int,
        "2",
        "a merge must occur at least this often",
    ),
    ParamSpec::with_default(
        "max_training_chars",
        ParamType::Int,
        "500000000",
        "train on at most this many characters of the corpus (in corpus order)",
    ),
];

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "corpus",
    required: true,
    many: true,
    doc: "corpus Parquet to learn from",
}];

/// The tokenizer layouts of the LLaMA family.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Style {
    SentencePiece,
    ByteLevel,
}

impl Style {
    fn of(params: &Params) -> Style {
        match params.opt_str("style") {
            Ok(Some("byte-level")) => Style::ByteLevel,
            _ => Style::SentencePiece,
        }
    }

    fn special_tokens(self, params: &Params) -> Result<Vec<String>, StageError> {
        if params.get("special_tokens").is_some() {
            return params.str_list("special_tokens");
        }
        let defaults: &[&str] = match self {
            Style::SentencePiece => &["<unk>", "<s>", "</s>"],
            Style::ByteLevel => &["<|begin_of_text|>", "<|end_of_text|>"],
        };
        Ok(defaults.iter().map(|s| s.to_string()).collect())
    }

    fn byte_fallback(self, params: &Params) -> Result<bool, StageError> {
        Ok(self == Style::SentencePiece && params.opt_bool("byte_fallback")?.unwrap_or(true))
    }
}

/// LLaMA-3's word split (the cl100k pattern): contractions, letter runs with
/// one leading non-letter, numbers of up to three digits, punctuation runs,
/// newlines, and spaces that are not followed by a word.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Style {
    /// An untrained tokenizer in this layout, as HF JSON. Byte-level sets
    /// `ignore_merges` as LLaMA-3 does (a word that is itself a token is one
    /// token) and has no unknown token.
    fn skeleton(self, unk: &str, byte_fallback: bool) -> Value {
        let (pre_tokenizer, decoder, unk, ignore_merges) = match self {
            Style::SentencePiece => (
                json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true}),
                json!({"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                    {"type": "ByteFallback"},
                    {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}
                ]}),
                json!(unk),
                false,
            ),
            Style::ByteLevel => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
                ]}),
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}),
                Value::Null,
                true,
            ),
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": decoder,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unk,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": self == Style::SentencePiece, "byte_fallback": byte_fallback,
                "ignore_merges": ignore_merges, "vocab": {}, "merges": []
            }
        })
    }
}

/// Inserts the 256 byte pieces right after the special tokens (LLaMA's
/// layout: ids 3..=258 for `<unk>`, `<s>`, `</s>`), shifting learned tokens.
fn insert_byte_pieces(doc: &mut Value, n_special: usize) -> Result<(), StageError> {
    let vocab = doc["model"]["vocab"]
        .as_object()
        .cloned()
        .ok_or_else(|| StageError::failed("trained tokenizer has no BPE vocabulary"))?;
    let mut entries: Vec<(String, u64)> = vocab
        .into_iter()
        .filter_map(|(k, v)| v.as_u64().map(|id| (k, id)))
        .collect();
    entries.sort_by_key(|(_, id)| *id);
    let mut out = Map::new();
    let mut next = 0u64;
    for (token, _) in entries.iter().take(n_special) {
        out.insert(token.clone(), json!(next));
        next += 1;
    }
    for b in 0..=255u8 {
        let piece = format!("<0x{b:02X}>");
        if !out.contains_key(&piece) {
            out.insert(piece, json!(next));
            next += 1;
        }
    }
    for (token, _) in entries.iter().skip(n_special) {
        if !out.contains_key(token) {
            out.insert(token.clone(), json!(next));
            next += 1;
        }
    }
    doc["model"]["vocab"] = Value::Object(out);
    Ok(())
}

/// LLaMA's post-processor, `BOS $A`, when the special tokens include a BOS:
/// so transformers' `tokenizer(text)` adds the BOS this model is trained
/// with, as it does for LLaMA-2 and LLaMA-3 (babelflow itself encodes
/// without it and adds BOS where `specials` says).
fn add_bos_template(doc: &mut Value, specials: &[String]) {
    let Some(bos) = specials
        .iter()
        .find(|s| crate::specials::BOS_NAMES.contains(&s.as_str()))
    else {
        return;
    };
    let Some(id) = doc["model"]["vocab"][bos.as_str()].as_u64() else {
        return;
    };
    let special = |type_id: u32| json!({"SpecialToken": {"id": bos, "type_id": type_id}});
    let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    doc["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [special(0), sequence("A", 0)],
        "pair": [special(0), sequence("A", 0), special(1), sequence("B", 1)],
        "special_tokens": { bos.as_str(): {"id": bos, "ids": [id], "tokens": [bos]} }
    });
}

impl StageKind for TrainTokenizer {
    fn name(&self) -> &'static str {
        "train-tokenizer"
    }
    fn code_version(&self) -> &'static str {
        // 2: a `BOS $A` post-processor, so transformers adds the BOS the model is trained with.
        // 3: sentencepiece style: merges closed (babelflow_stage::spm), as SentencePiece merges.
        "3"
    }
    fn summary(&self) -> &'static str {
        "train a LLaMA-style BPE tokenizer.json (sentencepiece-like or byte-level) on a corpus"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["tokenizer.json".into()]
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let style = Style::of(params);
        let specials = style.special_tokens(params).unwrap_or_default();
        if specials.is_empty() && style == Style::SentencePiece {
            problems.push(("special_tokens".into(), "needs at least the unknown token".into()));
        }
        if style == Style::ByteLevel && params.opt_bool("byte_fallback").ok().flatten() == Some(true) {
            problems.push((
                "byte_fallback".into(),
                "a byte-level tokenizer has every byte as a token already; leave byte_fallback out".into(),
            ));
        }
        // Both layouts reserve 256 byte tokens: byte pieces, or the byte alphabet.
        let bytes = if style == Style::ByteLevel || style.byte_fallback(params).unwrap_or(true) {
            256
        } else {
            0
        };
        let floor = specials.len() as i64 + bytes;
        if params.i64("vocab_size").is_ok_and(|v| v <= floor) {
            problems.push((
                "vocab_size".into(),
                format!("must exceed {floor} (special tokens + the 256 byte tokens)"),
            ));
        }
        problems
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::train_tokenizer(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let style = Style::of(p);
        let specials = style.special_tokens(p)?;
        let byte_fallback = style.byte_fallback(p)?;
        let vocab_size = p.usize("vocab_size")?;
        let max_chars = p.usize("max_training_chars")?;

        let mut texts = Vec::new();
        let mut chars = 0usize;
        for item in ctx.input("corpus") {
            read_corpus(&item.path, &mut |doc| {
                if chars < max_chars {
                    chars += doc.text.chars().count();
                    texts.push(doc.text);
                }
                Ok(())
            })?;
        }
        ctx.log(&format!("training on {} documents, {chars} characters", texts.len()));
        ctx.check_cancelled()?;

        let unk = specials.first().map_or("", String::as_str);
        let skeleton = style.skeleton(unk, byte_fallback);
        let mut tokenizer = Tokenizer::from_str(&skeleton.to_string())
            .map_err(|e| StageError::failed(format!("building the tokenizer skeleton: {e}")))?;
        let learned = vocab_size - if byte_fallback { 256 } else { 0 };
        let mut builder = BpeTrainerBuilder::new()
            .vocab_size(learned)
            .min_frequency(p.usize("min_frequency")? as u64)
            .special_tokens(specials.iter().map(|s| AddedToken::from(s.clone(), true)).collect())
            .show_progress(false);
        if style == Style::ByteLevel {
            // All 256 byte characters, seen in the corpus or not: nothing is ever unknown.
            builder = builder.initial_alphabet(ByteLevel::alphabet().into_iter().collect());
        }
        let mut trainer = TrainerWrapper::BpeTrainer(builder.build());
        tokenizer
            .train(&mut trainer, texts.iter())
            .map_err(|e| StageError::failed(format!("training failed: {e}")))?;

        let mut doc: Value = serde_json::from_str(
            &tokenizer
                .to_string(false)
                .map_err(|e| StageError::failed(e.to_string()))?,
        )
        .map_err(|e| StageError::failed(e.to_string()))?;
        if byte_fallback {
            insert_byte_pieces(&mut doc, specials.len())?;
        }
        if babelflow_stage::spm::is_sentencepiece_style(&doc) {
            // Merge as SentencePiece (and llama.cpp, after export-gguf) does:
            // any two adjacent pieces that make a token, best first.
            babelflow_stage::spm::close_merges_of(&mut doc);
        }
        add_bos_template(&mut doc, &specials);
        let text = serde_json::to_string_pretty(&doc).map_err(|e| StageError::failed(e.to_string()))?;
        // Round-trip through the tokenizers crate: what we write must load.
        let check = Tokenizer::from_str(&text)
            .map_err(|e| StageError::failed(format!("trained tokenizer does not reload: {e}")))?;
        let path = ctx.output("tokenizer.json");
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))?;
        ctx.note("vocab_size", check.get_vocab_size(true));
        Ok(())
    }
}
