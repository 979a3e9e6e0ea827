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
        .chain(babelflow_vocab::kinds())
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

/// The given string columns of a Parquet file, row by row.
pub fn table(path: &Path, columns: &[&str]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    babelflow_corpus::for_each_batch(path, "a test table", &mut |b| {
        let cols: Vec<_> = columns.iter().map(|c| b.text(c)).collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| babelflow_corpus::cell(c, r)).collect());
        }
        Ok(())
    })
    .unwrap();
    rows
}

/// log p(· | ids[..=j]) for every position j, from one unbatched forward
/// pass, softmax taken in f64: the reference the stages are checked against.
pub fn logprobs(model: &babelflow_model::Llama, config: &babelflow_model::LlamaConfig, ids: &[u32]) -> Vec<Vec<f64>> {
    use babelflow_model::burn::tensor::{Device, Int, Tensor, TensorData};
    let device = Device::flex();
    let rope = babelflow_model::Rope::new(config, ids.len(), &device).unwrap();
    let x = Tensor::<2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]),
        &device,
    );
    let logits: Vec<f32> = model
        .forward(x, &rope, None)
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    logits
        .chunks(config.vocab_size)
        .map(|row| {
            let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
            let log_z = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            row.iter().map(|&x| x as f64 - log_z).collect()
        })
        .collect()
}
