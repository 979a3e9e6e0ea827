//! `mix` hits its ratios and is reproducible; `extend-vocab` lowers fertility
//! without moving any existing id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use babelflow_tokens::artifact::{read_index, TokenFile};
use serde_json::{json, Value};
use tokenizers::Model;
use tokenizers::Tokenizer;

fn kind(name: &str) -> std::sync::Arc<dyn StageKind> {
    babelflow_corpus::kinds()
        .into_iter()
        .chain(babelflow_tokens::kinds())
        .find(|k| k.name() == name)
        .unwrap()
}

fn out(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn corpus(dir: &Path, lang: &str) -> PathBuf {
    let o = out(dir, &format!("corpus-{lang}"));
    let file = babelflow_stage::testing::package_dir().join(format!("../../data/samples/text/{lang}.txt"));
    run_kind(
        kind("ingest").as_ref(),
        json!({"lang": lang}),
        &inputs(&[("files", &[&file])]),
        &o,
    )
    .unwrap();
    o.join("corpus.parquet")
}

fn train(dir: &Path, name: &str, corpora: &[&Path], vocab: u32) -> PathBuf {
    train_style(dir, name, corpora, vocab, "sentencepiece")
}

fn train_style(dir: &Path, name: &str, corpora: &[&Path], vocab: u32, style: &str) -> PathBuf {
    let o = out(dir, name);
    run_kind(
        kind("train-tokenizer").as_ref(),
        json!({"vocab_size": vocab, "style": style}),
        &inputs(&[("corpus", corpora)]),
        &o,
    )
    .unwrap();
    o.join("tokenizer.json")
}

fn tokenize(dir: &Path, name: &str, corpus: &Path, tok: &Path) -> PathBuf {
    let o = out(dir, name);
    run_kind(
        kind("tokenize").as_ref(),
        json!({}),
        &inputs(&[("corpus", &[corpus]), ("tokenizer", &[tok])]),
        &o,
    )
    .unwrap();
    o.join("tokens.bin")
}

fn mix(dir: &Path, name: &str, parts: &[&Path], params: Value) -> Result<PathBuf, String> {
    let o = out(dir, name);
    run_kind(kind("mix").as_ref(), params, &inputs(&[("tokens", parts)]), &o).map_err(|e| e.to_string())?;
    Ok(o)
}

#[test]
fn mix_hits_the_ratios_upsamples_small_languages_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let langs = ["en", "sw", "hi"];
    let corpora: Vec<PathBuf> = langs.iter().map(|l| corpus(dir.path(), l)).collect();
    let refs: Vec<&Path> = corpora.iter().map(PathBuf::as_path).collect();
    let tok = train(dir.path(), "tok", &refs, 600);
    let bins: Vec<PathBuf> = langs
        .iter()
        .zip(&corpora)
        .map(|(l, c)| tokenize(dir.path(), l, c, &tok))
        .collect();
    let parts: Vec<&Path> = bins.iter().map(PathBuf::as_path).collect();
    let params = json!({"budget": 2000, "ratios": {"en": 0.5, "sw": 0.3, "hi": 0.2}, "seed": 7});
    let a = mix(dir.path(), "a", &parts, params.clone()).unwrap();

    let file = TokenFile::open(&a.join("tokens.bin")).unwrap();
    assert_eq!(file.len(), 2000);
    let mut per_lang: BTreeMap<String, u64> = BTreeMap::new();
    for d in read_index(&a.join("index.parquet")).unwrap() {
        *per_lang.entry(d.lang).or_default() += d.n_tokens;
    }
    for (lang, want) in [("en", 0.5), ("sw", 0.3), ("hi", 0.2)] {
        let got = per_lang[lang] as f64 / 2000.0;
        assert!((got - want).abs() <= 0.01, "{lang}: {got} vs {want}");
    }
    let stats: Value = serde_json::from_slice(&std::fs::read(a.join("stats.json")).unwrap()).unwrap();
    assert!(
        stats["languages"]["en"]["epochs"].as_f64().unwrap() > 1.0,
        "en is repeated: {stats}"
    );
    assert!(stats["languages"]["hi"]["epochs"].as_f64().unwrap() < 1.0);

    let b = mix(dir.path(), "b", &parts, params).unwrap();
    assert_eq!(
        std::fs::read(a.join("tokens.bin")).unwrap(),
        std::fs::read(b.join("tokens.bin")).unwrap()
    );
    let c = mix(
        dir.path(),
        "c",
        &parts,
        json!({"budget": 2000, "ratios": {"en": 0.5, "sw": 0.3, "hi": 0.2}, "seed": 8}),
    )
    .unwrap();
    assert_ne!(
        std::fs::read(a.join("tokens.bin")).unwrap(),
        std::fs::read(c.join("tokens.bin")).unwrap()
    );

    let t = mix(dir.path(), "t", &parts, json!({"temperature": 0.0})).unwrap();
    let stats: Value = serde_json::from_slice(&std::fs::read(t.join("stats.json")).unwrap()).unwrap();
    assert!((stats["languages"]["sw"]["achieved_ratio"].as_f64().unwrap() - 1.0 / 3.0).abs() < 0.01);

    let err = mix(dir.path(), "bad", &parts, json!({"ratios": {"zh": 1.0}})).unwrap_err();
    assert!(err.contains("`zh`, which no input has"), "{err}");
}

#[test]
fn mixing_artifacts_of_different_tokenizers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let en = corpus(dir.path(), "en");
    let sw = corpus(dir.path(), "sw");
    let t1 = train(dir.path(), "t1", &[&en], 400);
    let t2 = train(dir.path(), "t2", &[&sw], 400);
    let a = tokenize(dir.path(), "a", &en, &t1);
    let b = tokenize(dir.path(), "b", &sw, &t2);
    let err = mix(dir.path(), "m", &[&a, &b], json!({"temperature": 1.0})).unwrap_err();
    assert!(err.contains("different tokenizers"), "{err}");
}

#[test]
fn extend_vocab_lowers_fertility_and_keeps_every_existing_id() {
    // LLaMA-1/2's layout and LLaMA-3's byte-level one; a byte-level base
    // needs more room, its 256 byte tokens are part of the vocabulary.
    for (style, base_vocab, lang) in [
        ("sentencepiece", 500, "zh"),
        ("sentencepiece", 500, "hi"),
        ("byte-level", 600, "zh"),
        ("byte-level", 600, "hi"),
    ] {
        let lang = format!("{lang} ({style})");
        let lang = lang.as_str();
        let code = &lang[..2];
        let dir = tempfile::tempdir().unwrap();
        let en = corpus(dir.path(), "en");
        let target = corpus(dir.path(), code);
        let base_path = train_style(dir.path(), "base", &[&en], base_vocab, style);
        let o = out(dir.path(), "ext");
        run_kind(
            kind("extend-vocab").as_ref(),
            json!({"new_tokens": 300, "train_vocab_size": 800}),
            &inputs(&[("tokenizer", &[&base_path]), ("corpus", &[&target])]),
            &o,
        )
        .unwrap();
        let base = Tokenizer::from_file(&base_path).unwrap();
        let merged = Tokenizer::from_file(o.join("tokenizer.json")).expect("the merged tokenizer loads");
        for (token, id) in base.get_vocab(true) {
            assert_eq!(merged.token_to_id(&token), Some(id), "{lang}: {token:?} moved");
            assert_eq!(merged.id_to_token(id).as_deref(), Some(token.as_str()));
        }
        let text = std::fs::read_to_string(
            babelflow_stage::testing::package_dir().join(format!("../../data/samples/text/{code}.txt")),
        )
        .unwrap();
        let chars = text.chars().count() as f64;
        let before = base.encode(text.as_str(), false).unwrap().get_ids().len() as f64 / chars;
        let after = merged.encode(text.as_str(), false).unwrap().get_ids().len() as f64 / chars;
        assert!(after < before * 0.7, "{lang}: tokens/char {before:.3} → {after:.3}");
        assert_eq!(
            merged
                .decode(merged.encode(text.as_str(), false).unwrap().get_ids(), true)
                .unwrap(),
            text,
            "{lang}: decode(encode(x)) != x"
        );

        let record: Value = serde_json::from_slice(&std::fs::read(o.join("added_tokens.json")).unwrap()).unwrap();
        let added = record["added"].as_array().unwrap();
        assert!(!added.is_empty() && added.len() <= 300);
        let base_size = base.get_vocab_size(true) as u64;
        assert_eq!(record["base_vocab_size"], base_size);
        for (i, a) in added.iter().enumerate() {
            assert_eq!(a["id"], base_size + i as u64, "new ids follow the old ones");
            // No dead rows: the extended tokenizer makes each new token from its text.
            let pieces = merged.get_model().tokenize(a["token"].as_str().unwrap()).unwrap();
            assert_eq!(
                pieces.iter().map(|p| p.id as u64).collect::<Vec<_>>(),
                vec![a["id"].as_u64().unwrap()],
                "{lang}: {a} is unreachable"
            );
            let pieces: Vec<u32> = a["base_pieces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert!(
                !pieces.is_empty() && pieces.iter().all(|&p| (p as u64) < base_size),
                "{lang}: {a}"
            );
        }
    }
}

/// llama.cpp's SentencePiece rule (`llm_tokenizer_spm`) on one word: start
/// from characters, join the adjacent pair whose concatenation is the
/// best-scoring token (leftmost on ties) until none is; characters the
/// vocabulary lacks become `<0xNN>` byte pieces.
fn spm_reference(word: &str, ids: &std::collections::HashMap<String, u32>, scores: &[f64]) -> Vec<u32> {
    let mut symbols: Vec<String> = word.chars().map(String::from).collect();
    loop {
        let best = (0..symbols.len().saturating_sub(1))
            .filter_map(|i| {
                let joined = format!("{}{}", symbols[i], symbols[i + 1]);
                ids.get(&joined).map(|&id| (i, scores[id as usize]))
            })
            .fold(None, |best: Option<(usize, f64)>, (i, s)| match best {
                Some((_, b)) if b >= s => best,
                _ => Some((i, s)),
            });
        let Some((i, _)) = best else { break };
        let right = symbols.remove(i + 1);
        symbols[i].push_str(&right);
    }
    symbols
        .iter()
        .flat_map(|s| match ids.get(s) {
            Some(&id) => vec![id],
            None => s.bytes().map(|b| ids[&format!("<0x{b:02X}>")]).collect(),
        })
        .collect()
}

/// The extended LLaMA-2-style tokenizer merges as SentencePiece does, so
/// the GGUF it exports (scores, no merges) tokenizes every word of the
/// target and English text as babelflow trained on it, in llama.cpp too.
#[test]
fn an_extended_sentencepiece_tokenizer_merges_as_sentencepiece_does() {
    let dir = tempfile::tempdir().unwrap();
    let en = corpus(dir.path(), "en");
    let sw = corpus(dir.path(), "sw");
    let base = train_style(dir.path(), "base", &[&en], 500, "sentencepiece");
    let o = out(dir.path(), "ext");
    run_kind(
        kind("extend-vocab").as_ref(),
        json!({"new_tokens": 1000, "train_vocab_size": 4000, "min_frequency": 1}),
        &inputs(&[("tokenizer", &[&base]), ("corpus", &[&sw])]),
        &o,
    )
    .unwrap();
    let doc: Value = serde_json::from_slice(&std::fs::read(o.join("tokenizer.json")).unwrap()).unwrap();
    let tokens = babelflow_stage::spm::tokens_by_id(&doc);
    let scores = babelflow_stage::spm::scores_from_merges(&tokens, &babelflow_stage::spm::merges_of(&doc["model"]));
    let ids: std::collections::HashMap<String, u32> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merged = Tokenizer::from_file(o.join("tokenizer.json")).unwrap();
    let mut differ = Vec::new();
    let mut words = 0;
    for lang in ["sw", "en"] {
        let text = std::fs::read_to_string(
            babelflow_stage::testing::package_dir().join(format!("../../data/samples/text/{lang}.txt")),
        )
        .unwrap();
        for word in text.split_whitespace() {
            let word = format!("▁{word}");
            words += 1;
            let ours: Vec<u32> = merged
                .get_model()
                .tokenize(&word)
                .unwrap()
                .iter()
                .map(|t| t.id)
                .collect();
            let theirs = spm_reference(&word, &ids, &scores);
            if ours != theirs {
                differ.push(format!("{word}: {ours:?} vs {theirs:?}"));
            }
        }
    }
    assert!(words > 300);
    assert!(
        differ.is_empty(),
        "{} of {words} words differ: {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
}
