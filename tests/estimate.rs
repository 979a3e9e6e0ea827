//! `plan --estimate`: what a run will cost, known before it runs.

mod common;

use common::Project;
use serde_json::Value;

/// LLaMA-2-7B's config.json, as Meta's HF folder has it (no weights: the
/// estimate reads the shape only).
const LLAMA_2_7B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
  "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
  "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "tie_word_embeddings": false
}"#;

const N_7B: f64 = 6_738_415_616.0;

fn seven_b_recipe(p: &Project) {
    p.write("llama-2-7b/config.json", LLAMA_2_7B);
    p.write(
        "tokens.bin",
        "stand-in: a plan hashes its inputs, the estimate does not read them",
    );
    let train = "steps: 1000, batch_size: 4, seq_len: 512, eval_every: 1000, eval_batches: 1, checkpoint_every: 0";
    p.write(
        "r.yaml",
        &format!(
            "name: sizes
stages:
  base:
    kind: import-model
    needs: {{ checkpoint: ./llama-2-7b }}
  full:
    kind: pretrain
    needs: {{ model: base, tokens: ./tokens.bin }}
    with: {{ {train} }}
  lora:
    kind: pretrain
    needs: {{ model: base, tokens: ./tokens.bin }}
    with: {{ {train}, trainable: lora, precision: bf16, checkpoint_activations: true }}
  embeddings:
    kind: pretrain
    needs: {{ model: base, tokens: ./tokens.bin }}
    with: {{ {train}, trainable: embeddings, precision: bf16 }}
"
        ),
    );
}

fn instance<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["estimate"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {plan:#}"))
}

#[test]
fn a_7b_full_fine_tune_does_not_fit_an_80gb_device_and_lora_over_bf16_does() {
    let p = Project::new();
    seven_b_recipe(&p);
    let plan = p.plan("r.yaml", &["--estimate", "--device", "a100-80gb"]);
    assert_eq!(plan["estimate"]["device"]["memory_bytes"], 80_000_000_000u64);

    let full = instance(&plan, "full");
    let work = &full["work"];
    assert_eq!(work["parameters"].as_f64().unwrap(), N_7B);
    assert_eq!(work["trainable_parameters"].as_f64().unwrap(), N_7B);
    // f32 weights, gradients and AdamW's two moments: 16 bytes a parameter, 108 GB before activations.
    assert_eq!(work["memory"]["optimizer_state_bytes"].as_f64().unwrap(), 8.0 * N_7B);
    assert_eq!(full["over_memory"], true);
    let fixes: Vec<(&str, f64)> = work["fit_options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["change"].as_str().unwrap(), o["peak_bytes"].as_f64().unwrap()))
        .collect();
    let lora_fix = fixes
        .iter()
        .find(|(c, _)| c.starts_with("trainable: lora"))
        .expect("LoRA offered");
    assert!(lora_fix.1 < 80e9, "{fixes:?}");

    // 2 048 000 tokens at 6 FLOPs per product weight plus attention over 512².
    let tokens = 1000.0 * 4.0 * 512.0;
    assert_eq!(work["tokens"]["value"].as_f64().unwrap(), tokens);
    assert_eq!(work["tokens"]["basis"], "params");
    let products = 32.0 * (4.0 * 4096.0 * 4096.0 + 3.0 * 4096.0 * 11008.0) + 32000.0 * 4096.0;
    let attention = 4.0 * 32.0 * 512.0 * 4096.0;
    assert_eq!(
        work["train_flops"].as_f64().unwrap(),
        tokens * (6.0 * products + 3.0 * attention)
    );
    // At 40 % of 312 TFLOP/s.
    let seconds = full["seconds"].as_f64().unwrap();
    let compute = work["train_flops"].as_f64().unwrap() / (0.4 * 312e12);
    assert!(seconds > compute && seconds < compute * 1.1, "{seconds} vs {compute}");

    let lora = instance(&plan, "lora");
    assert_eq!(lora["over_memory"], false, "{lora:#}");
    assert_eq!(lora["work"]["trainable_parameters"].as_f64().unwrap(), 8_388_608.0);
    let embeddings = instance(&plan, "embeddings");
    assert_eq!(
        embeddings["work"]["trainable_parameters"].as_f64().unwrap(),
        2.0 * 32000.0 * 4096.0
    );

    let totals = &plan["estimate"]["totals"];
    assert_eq!(totals["over_memory"], serde_json::json!(["full"]));
    assert!(totals["device_hours"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_text_plan_says_what_does_not_fit_and_what_would_make_it_fit() {
    let p = Project::new();
    seven_b_recipe(&p);
    let out = p.ok(&["plan", "r.yaml", "--estimate", "--device", "a100-80gb"]);
    assert!(out.contains("! full does not fit"), "{out}");
    assert!(out.contains("with trainable: lora"), "{out}");
    assert!(!out.contains("! lora does not fit"), "{out}");
    assert!(
        out.contains("documented peak 312 TFLOP/s × 40 % assumed utilisation"),
        "{out}"
    );
}

#[test]
fn an_unknown_device_is_refused_with_the_known_ones() {
    let p = Project::new();
    seven_b_recipe(&p);
    let out = p.run(&["plan", "r.yaml", "--estimate", "--device", "a100"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown device `a100`") && err.contains("a100-80gb"),
        "{err}"
    );
}

#[test]
fn the_quickstart_is_estimated_before_anything_exists() {
    let p = Project::new();
    let recipe = common::repo_root().join("pipelines/quickstart.yaml");
    let store = p.path("store");
    let plan = p.plan(
        recipe.to_str().unwrap(),
        &["--estimate", "--store", store.to_str().unwrap()],
    );
    let pretrain = instance(&plan, "pretrain");
    // 60 steps × 8 × 64.
    assert_eq!(pretrain["work"]["tokens"]["value"], 30720.0);
    // The tiny LLaMA init-model makes from the tokenizer's 1 000 ids, before either exists.
    let parameters = pretrain["work"]["parameters"].as_f64().unwrap();
    assert!(parameters > 100_000.0 && parameters < 1_000_000.0, "{parameters}");
    for name in ["sft", "perplexity@model", "perplexity@sft"] {
        let work = &instance(&plan, name)["work"];
        assert!(work["tokens"]["value"].as_f64().unwrap() > 0.0, "{name}: {work:#}");
    }
    assert_eq!(instance(&plan, "perplexity@sft")["work"]["tokens"]["basis"], "assumed");
    // Nothing was created by looking.
    assert!(!store.exists());
}
