//! Lean training: frozen weights held in bf16 (`precision: bf16`) train as
//! their f32 values do, in half the memory, and resume bit-exactly.

mod common;

use std::path::Path;

use common::{assert_a_killed_run_resumes_bit_exactly, data, loss_rows, run, tiny_model, weights};
use serde_json::{json, Value};

fn lora(precision: &str) -> Value {
    json!({"steps": 8, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup_steps": 1,
           "eval_every": 4, "eval_batches": 1,
           "trainable": "lora", "lora_rank": 4, "precision": precision})
}

fn stats(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("stats.json")).unwrap()).unwrap()
}

/// Loss and validation rows (the gradient-norm readout is a parallel sum
/// whose last bit depends on thread timing, see the resume test).
fn losses(dir: &Path) -> Vec<(u64, String, f64)> {
    loss_rows(&dir.join("metrics.parquet"))
        .into_iter()
        .filter(|r| r.1 != "grad_norm")
        .collect()
}

fn frozen_bytes(stats: &Value) -> u64 {
    let by_dtype = stats["memory"]["weights_frozen_bytes"].as_object().unwrap();
    by_dtype.values().map(|v| v.as_u64().unwrap()).sum()
}

/// On a checkpoint stored in bf16 (as 7B-class models ship) holding the
/// frozen base in bf16 loses nothing: the values are the same numbers,
/// widened exactly inside the projections, so every loss is the same bit
/// for bit, and so is the exported model; the frozen weights take half the
/// memory.
#[test]
fn bf16_frozen_lora_on_a_bf16_checkpoint_trains_exactly_as_f32_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val, tok) = data(dir.path());
    let model = tiny_model(dir.path(), &tok);
    let checkpoint = run(
        dir.path(),
        "bf16_checkpoint",
        "import-model",
        json!({"dtype": "bf16"}),
        &[("checkpoint", &[&model])],
    )
    .join("model");
    let ins: [(&str, &[&Path]); 3] = [
        ("model", &[&checkpoint]),
        ("tokens", &[&train]),
        ("validation", &[&val]),
    ];
    let held_f32 = run(dir.path(), "f32", "pretrain", lora("f32"), &ins);
    let held_bf16 = run(dir.path(), "bf16", "pretrain", lora("bf16"), &ins);

    assert_eq!(losses(&held_f32), losses(&held_bf16));
    assert_eq!(weights(&held_f32.join("model")), weights(&held_bf16.join("model")));

    let (a, b) = (stats(&held_f32), stats(&held_bf16));
    assert_eq!(b["precision"], "bf16");
    assert_eq!(
        a["memory"]["weights_trainable_bytes"],
        b["memory"]["weights_trainable_bytes"]
    );
    let (full, half) = (frozen_bytes(&a), frozen_bytes(&b));
    // Every frozen matrix halves; the norms (a few hundred bytes) stay f32.
    assert!(
        half * 2 < full + full / 20 && half * 2 > full - full / 20,
        "{full} vs {half}"
    );
    assert!(b["memory"]["weights_frozen_bytes"]["bf16"].as_u64().unwrap() > 0);
}

/// On an f32 checkpoint bf16 rounds each frozen weight by at most 2⁻⁹ of
/// itself (8 significant bits). The loss is smooth in the weights and the
/// roundings have both signs, so it moves by less than that relative
/// amount: the tolerance is 2⁻⁹ of the loss (measured: about 1.4e-5).
#[test]
fn bf16_frozen_lora_on_an_f32_checkpoint_stays_within_bf16_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val, tok) = data(dir.path());
    let model = tiny_model(dir.path(), &tok);
    let ins: [(&str, &[&Path]); 3] = [("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])];
    let held_f32 = run(dir.path(), "f32", "pretrain", lora("f32"), &ins);
    let held_bf16 = run(dir.path(), "bf16", "pretrain", lora("bf16"), &ins);
    let (a, b) = (losses(&held_f32), losses(&held_bf16));
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, &x.1), (y.0, &y.1));
        let relative = (x.2 - y.2).abs() / x.2.abs();
        worst = worst.max(relative);
        assert!(relative < 2f64.powi(-9), "{} at step {}: {} vs {}", x.1, x.0, x.2, y.2);
    }
    assert!(worst > 0.0, "the weights were rounded, so something moved");
    eprintln!("largest relative loss difference: {worst:.2e}");
}

#[test]
fn a_killed_bf16_frozen_lora_run_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (train, val, tok) = data(dir.path());
    let model = tiny_model(dir.path(), &tok);
    let params = json!({"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2,
                        "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4,
                        "trainable": "lora", "lora_rank": 4, "precision": "bf16"});
    let ins: [(&str, &[&Path]); 3] = [("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])];
    assert_a_killed_run_resumes_bit_exactly(dir.path(), params, &ins);
}
