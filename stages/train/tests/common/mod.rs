//! Running the kinds a training test needs, each into its own folder.
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
        .chain(babelflow_train::kinds())
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("no kind `{name}`"))
}

/// `dir/name`, created.
pub fn out(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Runs kind `k` into `dir/name`; the error as text.
pub fn try_run(dir: &Path, name: &str, k: &str, params: Value, ins: &[(&str, &[&Path])]) -> Result<PathBuf, String> {
    let o = out(dir, name);
    run_kind(kind(k).as_ref(), params, &inputs(ins), &o).map_err(|e| e.to_string())?;
    Ok(o)
}

/// Runs kind `k` into `dir/name`, which must succeed.
pub fn run(dir: &Path, name: &str, k: &str, params: Value, ins: &[(&str, &[&Path])]) -> PathBuf {
    try_run(dir, name, k, params, ins).unwrap_or_else(|e| panic!("{k}: {e}"))
}

/// Tokens for training (en + sw, minus held-out paragraphs) and the held-out English.
pub fn data(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let samples = babelflow_stage::testing::package_dir().join("../../data/samples/text");
    let (en, sw) = (samples.join("en.txt"), samples.join("sw.txt"));
    let corpus = try_run(dir, "corpus", "ingest", json!({"lang": "en"}), &[("files", &[&en])]).unwrap();
    let corpus_sw = try_run(dir, "corpus_sw", "ingest", json!({"lang": "sw"}), &[("files", &[&sw])]).unwrap();
    let table = corpus.join("corpus.parquet");
    let split = try_run(
        dir,
        "split",
        "split",
        json!({"validation": 0.34, "test": 0.0}),
        &[("table", &[&table])],
    )
    .unwrap();
    let train_en = split.join("train.parquet");
    let sw_table = corpus_sw.join("corpus.parquet");
    let tok = try_run(
        dir,
        "tok",
        "train-tokenizer",
        json!({"vocab_size": 300}),
        &[("corpus", &[&train_en, &sw_table])],
    )
    .unwrap();
    let tok = tok.join("tokenizer.json");
    let a = tokenize(dir, "t_en", &train_en, &tok);
    let b = tokenize(dir, "t_sw", &sw_table, &tok);
    let val = tokenize(dir, "val", &split.join("validation.parquet"), &tok);
    let mix = try_run(dir, "mix", "mix", json!({"temperature": 1.0}), &[("tokens", &[&a, &b])]).unwrap();
    (mix.join("tokens.bin"), val, tok)
}

/// `corpus` (a table) tokenized by `tokenizer` into `dir/name`: its tokens.bin.
pub fn tokenize(dir: &Path, name: &str, corpus: &Path, tokenizer: &Path) -> PathBuf {
    run(
        dir,
        name,
        "tokenize",
        json!({}),
        &[("corpus", &[corpus]), ("tokenizer", &[tokenizer])],
    )
    .join("tokens.bin")
}

/// The shipped samples' training and held-out tokens, and the tiny model
/// for their tokenizer: (model, training tokens, validation tokens).
pub fn tiny_setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (train, val, tok) = data(dir);
    (tiny_model(dir, &tok), train, val)
}

/// Asserts that two runs logged the same (step, metric) rows with values
/// within `tolerance` of each other, relative to the larger; returns the
/// largest relative difference found.
pub fn assert_rows_close(a: &[(u64, String, f64)], b: &[(u64, String, f64)], tolerance: f64, what: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: rows");
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.0, &x.1), (y.0, &y.1), "{what}");
        let relative = (x.2 - y.2).abs() / x.2.abs().max(y.2.abs()).max(1e-30);
        worst = worst.max(relative);
        assert!(
            relative <= tolerance,
            "{what}: {} at step {}: {} vs {}",
            x.1,
            x.0,
            x.2,
            y.2
        );
    }
    worst
}

/// Every tensor of an HF model folder, by HF name.
pub fn weights(model_dir: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let device = babelflow_model::burn::tensor::Device::flex();
    let (_, model) = babelflow_model::hf::load(model_dir, &device).unwrap();
    babelflow_model::hf::named_tensors(&model)
}

/// (step, metric, value) of every training-loss and validation row.
pub fn loss_rows(metrics: &Path) -> Vec<(u64, String, f64)> {
    let file = std::fs::File::open(metrics).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (step, metric, value) = (col("step"), col("metric"), col("value"));
        let step = step.as_any().downcast_ref::<arrow_array::UInt64Array>().unwrap();
        let metric = metric.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        let value = value.as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
        for r in 0..batch.num_rows() {
            if ["loss", "val_loss", "grad_norm"].contains(&metric.value(r)) {
                rows.push((step.value(r), metric.value(r).to_string(), value.value(r)));
            }
        }
    }
    rows
}

pub fn tiny_model(dir: &Path, tok: &Path) -> PathBuf {
    try_run(
        dir,
        "init",
        "init-model",
        json!({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}),
        &[("tokenizer", &[tok])],
    )
    .unwrap()
    .join("model")
}

/// Runs `pretrain` with `params` (12 steps, a checkpoint every 4) whole,
/// then again killed at step 6 and restarted: the restart resumes from the
/// step-4 checkpoint and gives the uninterrupted run's losses and weights,
/// bit for bit.
pub fn assert_a_killed_run_resumes_bit_exactly(dir: &Path, params: Value, ins: &[(&str, &[&Path])]) {
    let ins = inputs(ins);
    let whole = out(dir, "whole");
    run_kind(kind("pretrain").as_ref(), params.clone(), &ins, &whole).unwrap();

    let resumed = out(dir, "resumed");
    let err =
        babelflow_stage::testing::run_kind_interrupted(kind("pretrain").as_ref(), params.clone(), &ins, &resumed, 6)
            .unwrap_err();
    assert!(matches!(err, babelflow_stage::StageError::Cancelled), "{err}");
    assert!(
        !resumed.join("stats.json").exists(),
        "an interrupted run leaves no result"
    );
    assert!(resumed.join(".resume/checkpoint/position.json").is_file());

    run_kind(kind("pretrain").as_ref(), params, &ins, &resumed).unwrap();
    let stats: Value = serde_json::from_slice(&std::fs::read(resumed.join("stats.json")).unwrap()).unwrap();
    assert_eq!(
        stats["resumed_from_step"], 4,
        "it started from the step-4 checkpoint, not from 0"
    );
    let (a, b) = (
        loss_rows(&whole.join("metrics.parquet")),
        loss_rows(&resumed.join("metrics.parquet")),
    );
    assert_eq!(a.iter().filter(|r| r.1 == "loss").count(), 12);
    let losses = |rows: &[(u64, String, f64)]| -> Vec<(u64, String, f64)> {
        rows.iter().filter(|r| r.1 != "grad_norm").cloned().collect()
    };
    assert_eq!(
        losses(&a),
        losses(&b),
        "the resumed loss curve equals the uninterrupted one, bit for bit"
    );
    // The gradient-norm readout is a parallel sum in burn's CPU backend whose
    // association depends on thread timing, so its last bit can differ even
    // between two uninterrupted runs.
    for (x, y) in a.iter().zip(&b).filter(|(x, _)| x.1 == "grad_norm") {
        assert_eq!(x.0, y.0);
        assert!(
            (x.2 - y.2).abs() <= 1e-9 * x.2.abs(),
            "grad norm at step {}: {} vs {}",
            x.0,
            x.2,
            y.2
        );
    }
    assert_eq!(weights(&whole.join("model")), weights(&resumed.join("model")));
}
