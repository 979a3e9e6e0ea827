//! `pretrain` on the shipped samples: held-out loss falls, the result is an
//! HF folder, metrics are complete, and a diverging run stops at its step.

mod common;

use common::{assert_a_killed_run_resumes_bit_exactly, data, tiny_setup, try_run, weights};
use serde_json::{json, Value};

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
    // The optimizer's share of the time, which estimates price apart.
    let (seconds, updating) = (
        stats["seconds"].as_f64().unwrap(),
        stats["optimizer_seconds"].as_f64().unwrap(),
    );
    assert!(updating > 0.0 && updating < seconds, "{updating} of {seconds} s");
    // Bits per character: the loss over the 8 validation windows (4 × 2
    // batches of 32 predicted tokens), per character of the text behind
    // them, worked out here from the index by hand.
    let index = babelflow_tokens::artifact::read_index(&val.with_file_name("index.parquet")).unwrap();
    let stream_tokens: u64 = index.iter().map(|d| d.n_tokens).sum();
    let predicted = (8 * 32).min(((stream_tokens - 1) / 32 * 32) as usize) as u64;
    let chars: f64 = index
        .iter()
        .map(|d| {
            let inside = (d.offset + d.n_tokens)
                .min(1 + predicted)
                .saturating_sub(d.offset.max(1));
            d.n_chars as f64 * inside as f64 / d.n_tokens as f64
        })
        .sum();
    for (loss, bits) in [
        (start, &stats["validation_bits_per_char_start"]["en"]),
        (end, &stats["validation_bits_per_char_end"]["en"]),
    ] {
        let want = loss * predicted as f64 / chars / std::f64::consts::LN_2;
        assert!((bits.as_f64().unwrap() - want).abs() < 1e-9 * want, "{bits} vs {want}");
    }
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
    let mut bits_steps = Vec::new();
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
                "val_bits_per_char" => bits_steps.push(step.value(r)),
                _ => {}
            }
        }
    }
    assert_eq!(losses, 40);
    assert_eq!(val_steps, vec![0, 20, 40]);
    assert_eq!(bits_steps, vec![0, 20, 40]);
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

#[test]
fn a_run_killed_mid_training_resumes_from_its_checkpoint_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, val) = tiny_setup(dir.path());
    let params = json!({"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2,
                        "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4});
    let ins: [(&str, &[&std::path::Path]); 3] = [("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])];
    assert_a_killed_run_resumes_bit_exactly(dir.path(), params, &ins);
}

#[test]
fn embeddings_mode_leaves_every_transformer_weight_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, _) = tiny_setup(dir.path());
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
    let (model, train, _) = tiny_setup(dir.path());
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
