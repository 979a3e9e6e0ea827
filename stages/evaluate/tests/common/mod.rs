//! A tiny model with a tokenizer trained on the shipped samples, and helpers
//! to run kinds outside the engine.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use serde_json::{json, Value};

pub fn kind(name: &str) -> std::sync::Arc<dyn StageKind> {
    babelflow_corpus::kinds()
        .into_iter()
        .chain(babelflow_tokens::kinds())
        .chain(babelflow_model::kinds())
        .chain(babelflow_evaluate::kinds())
        .find(|k| k.name() == name)
        .unwrap()
}

pub fn run(dir: &Path, name: &str, k: &str, params: Value, ins: &[(&str, &[&Path])]) -> PathBuf {
    let o = dir.join(name);
    std::fs::create_dir_all(&o).unwrap();
    run_kind(kind(k).as_ref(), params, &inputs(ins), &o).unwrap_or_else(|e| panic!("{k}: {e}"));
    o
}

pub fn samples() -> PathBuf {
    babelflow_stage::testing::package_dir().join("../../data/samples")
}

/// (model folder with tokenizer.json, corpus tables for en and sw).
pub fn tiny_model(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let tables: Vec<PathBuf> = ["en", "sw"]
        .iter()
        .map(|lang| {
            let file = samples().join(format!("text/{lang}.txt"));
            run(
                dir,
                &format!("corpus_{lang}"),
                "ingest",
                json!({"lang": lang}),
                &[("files", &[&file])],
            )
            .join("corpus.parquet")
        })
        .collect();
    let tok = run(
        dir,
        "tok",
        "train-tokenizer",
        json!({"vocab_size": 400}),
        &[("corpus", &[&tables[0], &tables[1]])],
    )
    .join("tokenizer.json");
    let model = run(
        dir,
        "init",
        "init-model",
        json!({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}),
        &[("tokenizer", &[&tok])],
    )
    .join("model");
    (model, tables)
}

pub fn stats(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("stats.json")).unwrap()).unwrap()
}
