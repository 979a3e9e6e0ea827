//! `pretrain` on the shipped samples: held-out loss falls, the result is an
//! HF folder, metrics are complete, and a diverging run stops at its step.

use std::path::{Path, PathBuf};

use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use serde_json::{json, Value};

fn kind(name: &str) -> std::sync::Arc<dyn StageKind> {
    babelflow_corpus::kinds()
        .into_iter()
        .chain(babelflow_tokens::kinds())
        .chain(babelflow_model::kinds())
        .chain(babelflow_train::kinds())
        .find(|k| k.name() == name)
        .unwrap()
}

fn out(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn run(dir: &Path, name: &str, k: &str, params: Value, ins: &[(&str, &[&Path])]) -> Result<PathBuf, String> {
    let o = out(dir, name);
    run_kind(kind(k).as_ref(), params, &inputs(ins), &o).map_err(|e| e.to_string())?;
    Ok(o)
}

/// Tokens for training (en + sw, minus held-out paragraphs) and the held-out English.
fn data(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let samples = babelflow_stage::testing::package_dir().join("../../data/samples/text");
    let (en, sw) = (samples.join("en.txt"), samples.join("sw.txt"));
    let corpus = run(dir, "corpus", "ingest", json!({"lang": "en"}), &[("files", &[&en])]).unwrap();
    let corpus_sw = run(dir, "corpus_sw", "ingest", json!({"lang": "sw"}), &[("files", &[&sw])]).unwrap();
    let table = corpus.join("corpus.parquet");
    let split = run(
        dir,
        "split",
        "split",
        json!({"validation": 0.34, "test": 0.0}),
        &[("table", &[&table])],
    )
    .unwrap();
    let train_en = split.join("train.parquet");
    let sw_table = corpus_sw.join("corpus.parquet");
    let tok = run(
        dir,
        "tok",
        "train-tokenizer",
        json!({"vocab_size": 300}),
        &[("corpus", &[&train_en, &sw_table])],
    )
    .unwrap();
    let tok = tok.join("tokenizer.json");
    let t_en = run(
        dir,
        "t_en",
        "tokenize",
        json!({}),
        &[("corpus", &[&train_en]), ("tokenizer", &[&tok])],
    )
    .unwrap();
    let t_sw = run(
        dir,
        "t_sw",
        "tokenize",
        json!({}),
        &[("corpus", &[&sw_table]), ("tokenizer", &[&tok])],
    )
    .unwrap();
    let held = split.join("validation.parquet");
    let val = run(
        dir,
        "val",
        "tokenize",
        json!({}),
        &[("corpus", &[&held]), ("tokenizer", &[&tok])],
    )
    .unwrap();
    let (a, b) = (t_en.join("tokens.bin"), t_sw.join("tokens.bin"));
    let mix = run(dir, "mix", "mix", json!({"temperature": 1.0}), &[("tokens", &[&a, &b])]).unwrap();
    (mix.join("tokens.bin"), val.join("tokens.bin"), tok)
}

#[test]
fn pretraining_lowers_held_out_loss_and_writes_an_hf_model() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val, tok) = data(dir.path());
    let init = run(
        dir.path(),
        "init",
        "init-model",
        json!({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}),
        &[("tokenizer", &[&tok])],
    )
    .unwrap();
    let model = init.join("model");
    let trained = run(
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
    let init = run(
        dir.path(),
        "init",
        "init-model",
        json!({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}),
        &[("tokenizer", &[&tok])],
    )
    .unwrap();
    let model = init.join("model");
    let err = run(
        dir.path(),
        "pretrain",
        "pretrain",
        json!({"steps": 30, "batch_size": 2, "seq_len": 16, "lr": 1e6, "min_lr": 1e6, "warmup_steps": 0, "grad_clip": 0.0}),
        &[("model", &[&model]), ("tokens", &[&train])],
    )
    .unwrap_err();
    assert!(err.contains("the loss became") && err.contains("at step"), "{err}");
}
