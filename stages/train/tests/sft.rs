//! `sft` on the shipped Bactrian-X samples: the loss counts responses only,
//! it falls, and the result is an HF model folder.

mod common;

use std::path::{Path, PathBuf};

use babelflow_corpus::template::Template;
use babelflow_model::burn::tensor::Device;
use babelflow_model::loss::cross_entropy;
use babelflow_tokens::hf::LoadedTokenizer;
use babelflow_train::sft::{encode, InstructionSet};
use babelflow_train::trainer::{tensors, Examples};
use common::{loss_rows, run};
use serde_json::{json, Value};

/// Instruction tables (en, sw), a tokenizer trained on sample text, and a tiny model.
fn setup(dir: &Path) -> (Vec<PathBuf>, PathBuf, PathBuf) {
    let samples = babelflow_stage::testing::package_dir().join("../../data/samples");
    let tables: Vec<PathBuf> = ["en", "sw"]
        .iter()
        .map(|lang| {
            let file = samples.join(format!("instructions/{lang}.json"));
            run(
                dir,
                &format!("ins_{lang}"),
                "ingest-instructions",
                json!({}),
                &[("files", &[&file])],
            )
            .join("instructions.parquet")
        })
        .collect();
    let (en, sw) = (samples.join("text/en.txt"), samples.join("text/sw.txt"));
    let corpus = run(
        dir,
        "corpus",
        "ingest",
        json!({"lang": "en"}),
        &[("files", &[&en, &sw])],
    );
    let table = corpus.join("corpus.parquet");
    let tok = run(
        dir,
        "tok",
        "train-tokenizer",
        json!({"vocab_size": 400}),
        &[("corpus", &[&table])],
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
    (tables, tok, model)
}

#[test]
fn the_loss_counts_response_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tok_path, model_dir) = setup(dir.path());
    let tok = LoadedTokenizer::load(&tok_path).unwrap();
    let prompt = Template::Bactrian.prompt("Name three things a farmer does before a flood.", "");
    let example = encode(
        &tok,
        &prompt,
        "Move the animals, dry the seed, agree on a meeting place.",
        &[1],
        2,
        128,
    )
    .unwrap()
    .unwrap();
    let response_starts = example.weights.iter().position(|&w| w == 1.0).unwrap();
    assert!(response_starts > 5, "the prompt's positions do not count");
    assert!(example.weights[response_starts..].iter().all(|&w| w == 1.0));
    assert_eq!(*example.ids.last().unwrap(), 2, "the EOS is learned too");

    let device = Device::flex();
    let (config, model) = babelflow_model::hf::load(&model_dir, &device).unwrap();
    let rope = babelflow_model::Rope::new(&config, 128, &device).unwrap();
    let loss_of = |batch: babelflow_train::trainer::Batch| -> f32 {
        let (x, y, w) = tensors(batch, &device);
        cross_entropy(model.forward(x, &rope, None), y, w).into_scalar()
    };
    let set = InstructionSet::padded(vec![example], 2);
    let base = loss_of(set.batch(&[0]));

    let mut prompt_changed = set.batch(&[0]);
    for j in 0..response_starts {
        prompt_changed.targets[j] = (prompt_changed.targets[j] + 7) % config.vocab_size as i64;
    }
    assert_eq!(loss_of(prompt_changed), base, "prompt labels must not matter");

    let mut response_changed = set.batch(&[0]);
    response_changed.targets[response_starts + 1] =
        (response_changed.targets[response_starts + 1] + 7) % config.vocab_size as i64;
    assert_ne!(loss_of(response_changed), base, "response labels must matter");
}

#[test]
fn instruction_tuning_lowers_the_response_loss_padded_and_packed() {
    let dir = tempfile::tempdir().unwrap();
    let (tables, _, model) = setup(dir.path());
    for packing in [false, true] {
        let out = run(
            dir.path(),
            &format!("sft_{packing}"),
            "sft",
            json!({"steps": 30, "batch_size": 4, "max_len": 128, "lr": 5e-3, "warmup_steps": 3,
                   "packing": packing, "template": "bactrian"}),
            &[("model", &[&model]), ("instructions", &[&tables[0], &tables[1]])],
        );
        let stats: Value = serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
        assert_eq!(stats["examples_per_lang"], json!({"en": 4, "sw": 4}), "{stats}");
        assert!(out.join("model/model.safetensors").is_file());
        assert!(out.join("model/tokenizer.json").is_file());
        let losses: Vec<f64> = loss_rows(&out.join("metrics.parquet"))
            .into_iter()
            .filter(|r| r.1 == "loss")
            .map(|r| r.2)
            .collect();
        let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
        assert!(
            last < first - 1.0,
            "packing {packing}: response loss {first:.3} → {last:.3}"
        );
    }
}
