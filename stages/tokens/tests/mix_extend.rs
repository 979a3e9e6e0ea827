//! `mix` hits its ratios and is reproducible; `extend-vocab` lowers fertility
//! without moving any existing id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use babelflow_tokens::artifact::{read_index, TokenFile};
use serde_json::{json, Value};
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
