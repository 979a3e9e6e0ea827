//! Lean training: frozen weights held in bf16 (`precision: bf16`) train as
//! their f32 values do, in half the memory; activations checkpointed per
//! block (`checkpoint_activations`) give the losses and gradients of the
//! whole graph; both resume bit-exactly.

mod common;

use std::path::Path;

use common::{
    assert_a_killed_run_resumes_bit_exactly, assert_rows_close, data, loss_rows, run, tiny_setup, tokenize, weights,
};
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
/// for bit, and so is the merged model (saved here in the input's dtype);
/// the frozen weights take half the memory.
#[test]
fn bf16_frozen_lora_on_a_bf16_checkpoint_trains_exactly_as_f32_frozen() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, val) = tiny_setup(dir.path());
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
    let mut saved_as_input = lora("bf16");
    saved_as_input["save_dtype"] = json!("input");
    let held_bf16 = run(dir.path(), "bf16", "pretrain", saved_as_input, &ins);

    assert_eq!(losses(&held_f32), losses(&held_bf16));
    // Saved in the input's dtype: the f32 run's merged weights, rounded to bf16.
    let config: Value = serde_json::from_slice(&std::fs::read(held_bf16.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let rounded = |w: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>| {
        w.into_iter()
            .map(|(name, (shape, values))| {
                let values: Vec<f32> = values.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
                (name, (shape, values))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        rounded(weights(&held_f32.join("model"))),
        weights(&held_bf16.join("model"))
    );

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
    let (model, train, val) = tiny_setup(dir.path());
    let ins: [(&str, &[&Path]); 3] = [("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])];
    let held_f32 = run(dir.path(), "f32", "pretrain", lora("f32"), &ins);
    let held_bf16 = run(dir.path(), "bf16", "pretrain", lora("bf16"), &ins);
    let worst = assert_rows_close(&losses(&held_f32), &losses(&held_bf16), 2f64.powi(-9), "bf16 vs f32");
    assert!(worst > 0.0, "the weights were rounded, so something moved");
    eprintln!("largest relative loss difference: {worst:.2e}");
}

#[test]
fn a_killed_bf16_frozen_lora_run_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, val) = tiny_setup(dir.path());
    let params = json!({"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2,
                        "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4,
                        "trainable": "lora", "lora_rank": 4, "precision": "bf16"});
    let ins: [(&str, &[&Path]); 3] = [("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])];
    assert_a_killed_run_resumes_bit_exactly(dir.path(), params, &ins);
}

/// Recomputing each block from its saved input runs the same kernels on the
/// same numbers: the losses are equal, and the gradients (their norm each
/// step, and the weights they lead to) differ only by the order in which a
/// few contributions are summed. Full training with a tied embedding (which
/// gets gradient from the head and the input) and bf16-frozen LoRA.
#[test]
fn checkpointed_activations_give_the_losses_and_gradients_of_the_whole_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, val) = tiny_setup(dir.path());
    let ins: [(&str, &[&Path]); 3] = [("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])];
    for (name, mode) in [
        ("full", json!({})),
        (
            "lora",
            json!({"trainable": "lora", "lora_rank": 4, "precision": "bf16"}),
        ),
    ] {
        let params = |checkpointed: bool| {
            let mut p = json!({"steps": 6, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 1,
                               "eval_every": 3, "eval_batches": 1, "grad_accum": 2,
                               "checkpoint_activations": checkpointed});
            p.as_object_mut().unwrap().extend(mode.as_object().unwrap().clone());
            p
        };
        let whole = run(dir.path(), &format!("{name}_whole"), "pretrain", params(false), &ins);
        let recomputed = run(
            dir.path(),
            &format!("{name}_recomputed"),
            "pretrain",
            params(true),
            &ins,
        );
        let (a, b) = (
            loss_rows(&whole.join("metrics.parquet")),
            loss_rows(&recomputed.join("metrics.parquet")),
        );
        assert_rows_close(&a, &b, 1e-6, name);
        let (wa, wb) = (weights(&whole.join("model")), weights(&recomputed.join("model")));
        for (tensor, (_, values)) in &wa {
            let scale = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (x, y) in values.iter().zip(&wb[tensor].1) {
                assert!((x - y).abs() <= 1e-6 * scale.max(1e-3), "{name}: {tensor}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn a_killed_checkpointed_run_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, val) = tiny_setup(dir.path());
    let params = json!({"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2,
                        "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4,
                        "checkpoint_activations": true});
    let ins: [(&str, &[&Path]); 3] = [("model", &[&model]), ("tokens", &[&train]), ("validation", &[&val])];
    assert_a_killed_run_resumes_bit_exactly(dir.path(), params, &ins);
}

/// A tiny model (tied or untied head) resized for an extended tokenizer,
/// and the Swahili training tokens in that tokenizer's ids.
fn resized_model(dir: &Path, tied: bool) -> (std::path::PathBuf, std::path::PathBuf, usize) {
    let (_, _, tok) = data(dir);
    let sw_table = dir.join("corpus_sw/corpus.parquet");
    let ext = run(
        dir,
        "ext",
        "extend-vocab",
        json!({"new_tokens": 60, "train_vocab_size": 400, "min_frequency": 1}),
        &[("tokenizer", &[&tok]), ("corpus", &[&sw_table])],
    );
    let init = run(
        dir,
        &format!("init_{tied}"),
        "init-model",
        json!({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "tie_word_embeddings": tied}),
        &[("tokenizer", &[&tok])],
    )
    .join("model");
    let (added, ext_tok) = (ext.join("added_tokens.json"), ext.join("tokenizer.json"));
    let resized = run(
        dir,
        &format!("resized_{tied}"),
        "resize-vocab",
        json!({}),
        &[("model", &[&init]), ("added", &[&added]), ("tokenizer", &[&ext_tok])],
    )
    .join("model");
    let tokens = tokenize(dir, "t_sw_ext", &sw_table, &ext_tok);
    let base_rows: usize = serde_json::from_slice::<Value>(&std::fs::read(resized.join("resized_vocab.json")).unwrap())
        .unwrap()["base_vocab_size"]
        .as_u64()
        .unwrap() as usize;
    (resized, tokens, base_rows)
}

/// `new-embeddings` trains the rows resize-vocab added and nothing else:
/// every original row of the embeddings (and of an untied head) and every
/// other weight is bit-identical afterwards (in f32; with `precision: bf16`
/// bit-identical to its bf16 value, the f32 checkpoint's frozen matrices
/// being held and saved as such); the added rows moved; only they count
/// as trainable (so only they have AdamW state).
#[test]
fn new_embeddings_trains_only_the_added_rows() {
    for tied in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (model, tokens, base_rows) = resized_model(dir.path(), tied);
        for precision in ["f32", "bf16"] {
            let trained = run(
                dir.path(),
                &format!("new_rows_{precision}"),
                "pretrain",
                json!({"steps": 4, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup_steps": 1,
                       "trainable": "new-embeddings", "precision": precision}),
                &[("model", &[&model]), ("tokens", &[&tokens])],
            );
            let (before, after) = (weights(&model), weights(&trained.join("model")));
            // Frozen weights held in bf16 are saved as their bf16 values.
            let held = |values: &[f32], shape: &[usize]| -> Vec<f32> {
                match precision {
                    "bf16" if shape.len() == 2 => values.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect(),
                    _ => values.to_vec(),
                }
            };
            let mut rows_of_vocabulary = 0;
            for (name, (shape, values)) in &before {
                let moved = &after[name].1;
                if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
                    let d = shape[1];
                    rows_of_vocabulary += shape[0] - base_rows;
                    let (own, added) = values.split_at(base_rows * d);
                    assert!(
                        moved[..base_rows * d] == held(own, shape)[..],
                        "{name}: original rows moved"
                    );
                    assert!(moved[base_rows * d..] != *added, "{name}: added rows did not train");
                } else {
                    assert!(*moved == held(values, shape), "{name} moved");
                }
            }
            let stats = stats(&trained);
            assert_eq!(stats["trainable_parameters"], rows_of_vocabulary * 32, "tied {tied}");
            assert_eq!(
                stats["memory"]["optimizer_state_bytes"],
                rows_of_vocabulary * 32 * 4 * 2,
                "AdamW's two moments of the added rows only"
            );
            assert!(trained.join("model/resized_vocab.json").is_file(), "carried on");
        }
        // The added input rows get their gradient with blocks recomputed too.
        let params = |checkpointed: bool| {
            json!({"steps": 4, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "warmup_steps": 1,
                   "trainable": "new-embeddings", "checkpoint_activations": checkpointed})
        };
        let ins: [(&str, &[&Path]); 2] = [("model", &[&model]), ("tokens", &[&tokens])];
        let whole = weights(&run(dir.path(), "new_rows_whole", "pretrain", params(false), &ins).join("model"));
        let recomputed = weights(&run(dir.path(), "new_rows_recomputed", "pretrain", params(true), &ins).join("model"));
        let embed = "model.embed_tokens.weight";
        for (x, y) in whole[embed].1.iter().zip(&recomputed[embed].1) {
            assert!((x - y).abs() <= 1e-6, "tied {tied}: {x} vs {y}");
        }
    }
}

#[test]
fn new_embeddings_refuses_a_model_that_was_not_resized() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, _) = tiny_setup(dir.path());
    let err = common::try_run(
        dir.path(),
        "new_rows",
        "pretrain",
        json!({"steps": 2, "batch_size": 4, "seq_len": 32, "trainable": "new-embeddings"}),
        &[("model", &[&model]), ("tokens", &[&train])],
    )
    .unwrap_err();
    assert!(
        err.contains("trainable") && err.contains("was not resized") && err.contains("resized_vocab.json"),
        "{err}"
    );
}

#[test]
fn a_killed_new_embeddings_run_resumes_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tokens, _) = resized_model(dir.path(), false);
    let params = json!({"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2,
                        "eval_every": 6, "eval_batches": 1, "checkpoint_every": 4,
                        "trainable": "new-embeddings", "precision": "bf16"});
    let ins: [(&str, &[&Path]); 3] = [("model", &[&model]), ("tokens", &[&tokens]), ("validation", &[&tokens])];
    assert_a_killed_run_resumes_bit_exactly(dir.path(), params, &ins);
}
