//! `pretrain` on the shipped samples: held-out loss falls, the result is an
//! HF folder, metrics are complete, and a diverging run stops at its step.

mod common;

use std::path::{Path, PathBuf};

use babelflow_stage::testing::{inputs, run_kind};
use common::{kind, out, try_run};
use serde_json::{json, Value};

/// Tokens for training (en + sw, minus held-out paragraphs) and the held-out English.
fn data(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
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
    let t_en = try_run(
        dir,
        "t_en",
        "tokenize",
        json!({}),
        &[("corpus", &[&train_en]), ("tokenizer", &[&tok])],
    )
    .unwrap();
    let t_sw = try_run(
        dir,
        "t_sw",
        "tokenize",
        json!({}),
        &[("corpus", &[&sw_table]), ("tokenizer", &[&tok])],
    )
    .unwrap();
    let held = split.join("validation.parquet");
    let val = try_run(
        dir,
        "val",
        "tokenize",
        json!({}),
        &[("corpus", &[&held]), ("tokenizer", &[&tok])],
    )
    .unwrap();
    let (a, b) = (t_en.join("tokens.bin"), t_sw.join("tokens.bin"));
    let mix = try_run(dir, "mix", "mix", json!({"temperature": 1.0}), &[("tokens", &[&a, &b])]).unwrap();
    (mix.join("tokens.bin"), val.join("tokens.bin"), tok)
}

#[test]
fn pretraining_lowers_held_out_loss_and_writes_an_hf_model() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val, tok) = data(dir.path());
    let init = try_run(
        dir.path(),
        "init",
        "init-model",
        json!({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}),
        &[("tokenizer", &[&tok])],
    )
    .unwrap();
    let model = init.join("model");
    let trained = try_run(
        dir.path(),
        "pretrain",
        "pretrain",
        json!({"steps": 40, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5, "eval_every": 20, "eval_batches": 2}),
        &[("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])],
    )
    .unwrap();
    let stats: Value = serde_json::from_slice(&std::fs::read(trained.join("stats.json")).unwrap()).unwrap();
    let start = stats["validation_loss_start"]["en"].as_f64().unwrap();
    let end = stats["validation_loss_end"]["en"].as_f64().unwrap();
    assert!(end < start - 0.5, "held-out English loss {start:.3} → {end:.3}");
    assert!(trained.join("model/model.safetensors").is_file());
    assert!(trained.join("model/tokenizer.json").is_file());
    let device = babelflow_model::burn::tensor::Device::flex();
    let (config, _) = babelflow_model::hf::load(&trained.join("model"), &device).unwrap();
    assert_eq!(config.hidden_size, 32);

    // Metrics: one loss/lr/throughput row per step, validation at 0, 20 and 40.
    let file = std::fs::File::open(trained.join("metrics.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut losses = 0;
    let mut val_steps = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let metric = batch
            .column_by_name("metric")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .clone();
        let step = batch
            .column_by_name("step")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::UInt64Array>()
            .unwrap()
            .clone();
        for r in 0..batch.num_rows() {
            match metric.value(r) {
                "loss" => losses += 1,
                "val_loss" => val_steps.push(step.value(r)),
                _ => {}
            }
        }
    }
    assert_eq!(losses, 40);
    assert_eq!(val_steps, vec![0, 20, 40]);
}

#[test]
fn a_diverging_run_stops_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _, tok) = data(dir.path());
    let init = try_run(
        dir.path(),
        "init",
        "init-model",
        json!({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}),
        &[("tokenizer", &[&tok])],
    )
    .unwrap();
    let model = init.join("model");
    let err = try_run(
        dir.path(),
        "pretrain",
        "pretrain",
        json!({"steps": 30, "batch_size": 2, "seq_len": 16, "lr": 1e6, "min_lr": 1e6, "warmup_steps": 0, "grad_clip": 0.0}),
        &[("model", &[&model]), ("tokens", &[&train])],
    )
    .unwrap_err();
    assert!(err.contains("the loss became") && err.contains("at step"), "{err}");
}

/// Every tensor of an HF model folder, by HF name.
fn weights(model_dir: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let device = babelflow_model::burn::tensor::Device::flex();
    let (_, model) = babelflow_model::hf::load(model_dir, &device).unwrap();
    babelflow_model::hf::named_tensors(&model)
}

/// (step, metric, value) of every training-loss and validation row.
fn loss_rows(metrics: &Path) -> Vec<(u64, String, f64)> {
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

fn tiny_model(dir: &Path, tok: &Path) -> PathBuf {
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

#[test]
fn a_run_killed_mid_training_resumes_from_its_checkpoint_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val, tok) = data(dir.path());
    let model = tiny_model(dir.path(), &tok);
    let params = json!({"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2,
                        "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4});
    let ins = inputs(&[("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])]);
    let whole = out(dir.path(), "whole");
    run_kind(kind("pretrain").as_ref(), params.clone(), &ins, &whole).unwrap();

    let resumed = out(dir.path(), "resumed");
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

#[test]
fn embeddings_mode_leaves_every_transformer_weight_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _, tok) = data(dir.path());
    let model = tiny_model(dir.path(), &tok);
    let trained = try_run(
        dir.path(),
        "emb",
        "pretrain",
        json!({"steps": 5, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup_steps": 1, "trainable": "embeddings"}),
        &[("model", &[&model]), ("tokens", &[&train])],
    )
    .unwrap();
    let (before, after) = (weights(&model), weights(&trained.join("model")));
    for (name, tensor) in &before {
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            assert_ne!(&after[name], tensor, "{name} trains");
        } else {
            assert_eq!(&after[name], tensor, "{name} must not move");
        }
    }
}

#[test]
fn lora_trains_adapters_only_and_exports_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _, tok) = data(dir.path());
    let model = tiny_model(dir.path(), &tok);
    let trained = try_run(
        dir.path(),
        "lora",
        "pretrain",
        json!({"steps": 5, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup_steps": 1,
               "trainable": "lora", "lora_rank": 4, "lora_targets": ["q_proj", "v_proj"]}),
        &[("model", &[&model]), ("tokens", &[&train])],
    )
    .unwrap();
    let (before, after) = (weights(&model), weights(&trained.join("model")));
    for (name, tensor) in &before {
        if name.ends_with("q_proj.weight") || name.ends_with("v_proj.weight") {
            assert_ne!(&after[name], tensor, "{name}: the merged adapter changes it");
        } else {
            assert_eq!(&after[name], tensor, "{name} must not move");
        }
    }
    let stats: Value = serde_json::from_slice(&std::fs::read(trained.join("stats.json")).unwrap()).unwrap();
    // 2 layers × rank 4 × (q: 32 in + 32 out, v: 32 in + 16 out with 2 of 4 heads for keys/values)
    assert_eq!(stats["trainable_parameters"], 2 * 4 * (64 + 48));
}
