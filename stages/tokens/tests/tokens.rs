//! `train-tokenizer` and `tokenize` on the shipped samples of 15 languages.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use babelflow_tokens::artifact::{read_index, TokenFile};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

const LANGS: [&str; 15] = [
    "en", "zh", "ar", "bn", "gu", "hi", "id", "ml", "mr", "ne", "sw", "ta", "te", "ur", "vi",
];

fn kind(name: &str) -> std::sync::Arc<dyn StageKind> {
    babelflow_corpus::kinds()
        .into_iter()
        .chain(babelflow_tokens::kinds())
        .find(|k| k.name() == name)
        .unwrap()
}

fn sample(lang: &str) -> PathBuf {
    babelflow_stage::testing::package_dir().join(format!("../../data/samples/text/{lang}.txt"))
}

/// Ingests one language's sample; returns the corpus Parquet path.
fn corpus(dir: &Path, lang: &str) -> PathBuf {
    let out = dir.join(format!("corpus-{lang}"));
    std::fs::create_dir_all(&out).unwrap();
    let file = sample(lang);
    run_kind(
        kind("ingest").as_ref(),
        json!({"lang": lang}),
        &inputs(&[("files", &[&file])]),
        &out,
    )
    .unwrap();
    out.join("corpus.parquet")
}

fn train(dir: &Path, corpora: &[PathBuf], vocab_size: u32) -> PathBuf {
    train_style(dir, corpora, vocab_size, "sentencepiece")
}

fn train_style(dir: &Path, corpora: &[PathBuf], vocab_size: u32, style: &str) -> PathBuf {
    let out = dir.join(format!("tok-{style}"));
    std::fs::create_dir_all(&out).unwrap();
    let refs: Vec<&Path> = corpora.iter().map(PathBuf::as_path).collect();
    run_kind(
        kind("train-tokenizer").as_ref(),
        json!({"vocab_size": vocab_size, "style": style}),
        &inputs(&[("corpus", &refs)]),
        &out,
    )
    .unwrap();
    out.join("tokenizer.json")
}

fn tokenize(dir: &Path, name: &str, corpus: &Path, tokenizer: &Path) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    run_kind(
        kind("tokenize").as_ref(),
        json!({}),
        &inputs(&[("corpus", &[corpus]), ("tokenizer", &[tokenizer])]),
        &out,
    )
    .unwrap();
    out
}

#[test]
fn ids_equal_the_tokenizers_own_encode_in_all_15_languages_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let corpora: Vec<PathBuf> = LANGS.iter().map(|l| corpus(dir.path(), l)).collect();
    let tok_path = train(dir.path(), &corpora, 2000);
    check_ids_and_round_trip(dir.path(), &corpora, &tok_path, ("<s>", "</s>"));
}

/// LLaMA-3's layout: a regex word split, bytes mapped to characters, no
/// unknown token and no byte fallback — every byte is a token of its own.
#[test]
fn a_byte_level_tokenizer_like_llama_3s_gives_its_own_ids_too() {
    let dir = tempfile::tempdir().unwrap();
    let corpora: Vec<PathBuf> = LANGS.iter().map(|l| corpus(dir.path(), l)).collect();
    let tok_path = train_style(dir.path(), &corpora, 2000, "byte-level");
    let doc: Value = serde_json::from_slice(&std::fs::read(&tok_path).unwrap()).unwrap();
    assert_eq!(doc["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
    assert_eq!(doc["model"]["byte_fallback"], false);
    let stats = check_ids_and_round_trip(
        dir.path(),
        &corpora,
        &tok_path,
        ("<|begin_of_text|>", "<|end_of_text|>"),
    );
    for lang in LANGS {
        assert_eq!(
            stats[lang]["byte_fallback_share"], 0.0,
            "{lang}: byte-level has no fallback pieces"
        );
    }
    // Text in a script the tokenizer never saw still encodes without loss.
    let reference = Tokenizer::from_file(&tok_path).unwrap();
    let unseen = "Ελληνικά και 日本語 🙂";
    let ids = reference.encode(unseen, false).unwrap();
    assert_eq!(reference.decode(ids.get_ids(), true).unwrap(), unseen);
}

/// Tokenizes every language's sample with `tok_path` and checks each
/// document's ids against the tokenizers crate's own `encode` (between BOS
/// and EOS) and that decoding gives the text back. Returns the stage's
/// fertility per language.
fn check_ids_and_round_trip(dir: &Path, corpora: &[PathBuf], tok_path: &Path, (bos, eos): (&str, &str)) -> Value {
    let reference = Tokenizer::from_file(tok_path).unwrap();
    let bos = reference.token_to_id(bos).unwrap();
    let eos = reference.token_to_id(eos).unwrap();
    let mut fertility = json!({});
    for (lang, corpus_path) in LANGS.iter().zip(corpora) {
        let out = tokenize(dir, &format!("tokens-{lang}"), corpus_path, tok_path);
        let file = TokenFile::open(&out.join("tokens.bin")).unwrap();
        assert_eq!(file.header.id_bytes, 2, "a 2000-token vocabulary fits u16");
        let index = read_index(&out.join("index.parquet")).unwrap();
        let text = std::fs::read_to_string(sample(lang)).unwrap();
        let paragraphs: Vec<&str> = text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()).collect();
        assert_eq!(index.len(), paragraphs.len(), "{lang}");
        for (entry, paragraph) in index.iter().zip(&paragraphs) {
            let ids = file.slice(entry.offset as usize, (entry.offset + entry.n_tokens) as usize);
            let mut expected = vec![bos];
            expected.extend_from_slice(reference.encode(*paragraph, false).unwrap().get_ids());
            expected.push(eos);
            assert_eq!(ids, expected, "{lang}: ids differ from tokenizers' encode");
            assert_eq!(
                reference.decode(&ids, true).unwrap(),
                *paragraph,
                "{lang}: decode(encode(x)) != x"
            );
            assert_eq!(entry.n_chars, paragraph.chars().count() as u64);
            assert_eq!(entry.n_bytes, paragraph.len() as u64);
            assert_eq!(entry.lang, *lang);
        }
        let stats: Value = serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
        let f = &stats["languages"][lang];
        assert!(f["tokens_per_char"].as_f64().unwrap() > 0.0, "{lang}: {stats}");
        assert_eq!(f["documents"], paragraphs.len());
        fertility[lang] = f.clone();
    }
    fertility
}

#[test]
fn fertility_matches_a_hand_count_on_a_short_text() {
    let dir = tempfile::tempdir().unwrap();
    let en = corpus(dir.path(), "en");
    let tok_path = train(dir.path(), &[en], 400);
    let text = "the market opens before sunrise";
    let input = dir.path().join("short.txt");
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("c");
    std::fs::create_dir_all(&out).unwrap();
    run_kind(
        kind("ingest").as_ref(),
        json!({"lang": "en"}),
        &inputs(&[("files", &[&input])]),
        &out,
    )
    .unwrap();
    let stats_dir = tokenize(dir.path(), "t", &out.join("corpus.parquet"), &tok_path);
    let stats: Value = serde_json::from_slice(&std::fs::read(stats_dir.join("stats.json")).unwrap()).unwrap();
    let en = &stats["languages"]["en"];
    // By hand: 31 characters, 5 words, 31 bytes.
    let reference = Tokenizer::from_file(&tok_path).unwrap();
    let n = reference.encode(text, false).unwrap().get_ids().len() as f64;
    assert_eq!(en["chars"], 31);
    assert_eq!(en["words"], 5);
    assert_eq!(en["bytes"], 31);
    assert_eq!(en["tokens"], n);
    assert!((en["tokens_per_char"].as_f64().unwrap() - n / 31.0).abs() < 1e-12);
    assert!((en["tokens_per_word"].as_f64().unwrap() - n / 5.0).abs() < 1e-12);
    assert_eq!(
        stats["tokens"],
        n + 2.0,
        "BOS and EOS are in the stream, not in fertility"
    );
}

#[test]
fn unseen_script_falls_back_to_bytes_and_still_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let en = corpus(dir.path(), "en");
    let tok_path = train(dir.path(), &[en], 400);
    let tok = Tokenizer::from_file(&tok_path).unwrap();
    let text = "市场 opens";
    let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
    assert!(ids
        .iter()
        .any(|&id| tok.id_to_token(id).is_some_and(|t| t.starts_with("<0x"))));
    assert_eq!(tok.decode(&ids, true).unwrap(), text);
    // The trained file has LLaMA's id layout: specials, then bytes.
    assert_eq!(tok.token_to_id("<unk>"), Some(0));
    assert_eq!(tok.token_to_id("<0x00>"), Some(3));
    assert_eq!(tok.token_to_id("<0xFF>"), Some(258));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    assert!(Tokenizer::from_str(&json.to_string()).is_ok());
}

/// The error `tokenize` stops with (it must fail).
fn tokenize_err(dir: &Path, name: &str, params: Value, corpora: &[&Path], tokenizer: &Path) -> String {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    run_kind(
        kind("tokenize").as_ref(),
        params,
        &inputs(&[("corpus", corpora), ("tokenizer", &[tokenizer])]),
        &out,
    )
    .expect_err("tokenize should have failed")
    .to_string()
}

#[test]
fn corrupt_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let en = corpus(dir.path(), "en");
    let not_tokenizer = dir.path().join("tokenizer.json");
    std::fs::write(&not_tokenizer, r#"{"hello": "world"}"#).unwrap();
    let err = tokenize_err(dir.path(), "t", json!({}), &[&en], &not_tokenizer);
    assert!(
        err.contains("tokenizer.json") && err.contains("not a Hugging Face tokenizer.json"),
        "{err}"
    );

    let tok_path = train(dir.path(), std::slice::from_ref(&en), 400);
    let good = tokenize(dir.path(), "good", &en, &tok_path);

    // A bad corpus after a good one: the error the reader hit is the one
    // reported, not the pipeline's other threads stopping.
    let not_parquet = dir.path().join("notes.parquet");
    std::fs::write(&not_parquet, "just some text").unwrap();
    let err = tokenize_err(
        dir.path(),
        "t2",
        json!({"batch_docs": 1}),
        &[&en, &not_parquet],
        &tok_path,
    );
    assert!(
        err.contains("notes.parquet") && err.contains("not a Parquet file"),
        "{err}"
    );
    let bytes = std::fs::read(good.join("tokens.bin")).unwrap();

    let wrong_magic = dir.path().join("magic.bin");
    let mut b = bytes.clone();
    b[0] = b'X';
    std::fs::write(&wrong_magic, &b).unwrap();
    let err = TokenFile::open(&wrong_magic).err().unwrap().to_string();
    assert!(err.contains("magic.bin") && err.contains("wrong magic"), "{err}");

    let truncated = dir.path().join("cut.bin");
    std::fs::write(&truncated, &bytes[..bytes.len() - 3]).unwrap();
    let err = TokenFile::open(&truncated).err().unwrap().to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");

    let tiny = dir.path().join("tiny.bin");
    std::fs::write(&tiny, b"BFTOK").unwrap();
    assert!(TokenFile::open(&tiny)
        .err()
        .unwrap()
        .to_string()
        .contains("shorter than the 64-byte header"));
}
