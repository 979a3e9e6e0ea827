//! A checkpoint with SmolLM2's layout, as transformers writes it
//! (`stages/model/tests/fixtures/hf-smollm2`: tied head, GQA 3/1, its
//! special tokens, `add_bos_token: false`, a ChatML chat template), runs
//! through every kind without one per-model override: import, tokenize,
//! pretrain (full and LoRA), sft with `template: chat` on single-turn and
//! ShareGPT rows, perplexity, exam and respond. Each stage says in its
//! stats which special tokens it used, and they are the model's own. The
//! recipe is the shipped `pipelines/examples/smollm2-layout.yaml`.

mod common;

use common::{repo_root, stats_of, Project};

#[test]
fn a_smollm2_layout_checkpoint_runs_every_kind_with_its_own_special_tokens() {
    let p = Project::new();
    let recipe = repo_root()
        .join("pipelines/examples/smollm2-layout.yaml")
        .display()
        .to_string();
    let store = p.path("store").display().to_string();
    p.ok(&["run", &recipe, "--store", &store]);
    let plan = p.plan(&recipe, &["--store", &store]);
    assert_eq!(plan["summary"]["run"], 0, "{plan}");

    // Documents: no BOS (the tokenizer adds none), each ended by its EOS.
    let tokens = stats_of(&p, &plan, "tokens");
    let specials = &tokens["special_tokens"];
    assert_eq!(specials["add_bos"], false, "{specials}");
    assert_eq!(specials["eos"]["text"], "<|im_end|>", "{specials}");
    assert_eq!(
        specials["sources"]["add_bos"], "tokenizer_config.json `add_bos_token`",
        "{specials}"
    );
    assert_eq!(tokens["bos"], serde_json::Value::Null, "{tokens}");

    // Perplexity scores from the EOS, the way the model saw documents.
    for model in ["base", "sft"] {
        let s = stats_of(&p, &plan, &format!("perplexity@{model}"));
        assert_eq!(s["context_token"], "<|im_end|>", "{s}");
        assert!(s["per_lang"]["en"]["bits_per_char"].as_f64().unwrap() > 0.0, "{s}");
    }

    // Chat SFT: the template was the model's; training ran and its loss is finite.
    let sft = stats_of(&p, &plan, "sft");
    assert_eq!(sft["special_tokens"]["chat_template"], true, "{sft}");
    assert!(sft["final_loss"].as_f64().unwrap().is_finite(), "{sft}");
    assert_eq!(sft["examples_per_lang"]["sw"], 2, "the ShareGPT rows trained: {sft}");

    // Generation stops at the template's end of turn (<|im_end|>, id 2).
    let respond = stats_of(&p, &plan, "respond");
    assert!(
        respond["stop_ids"].as_array().unwrap().contains(&serde_json::json!(2)),
        "{respond}"
    );

    // The LoRA run trained adapters only, and both exports ship the chat template.
    let lora = stats_of(&p, &plan, "pretrain@lora");
    let full = stats_of(&p, &plan, "pretrain@full");
    assert!(
        lora["trainable_parameters"].as_u64().unwrap() < full["trainable_parameters"].as_u64().unwrap(),
        "{lora}"
    );
    for inst in ["pretrain@lora", "sft"] {
        let dir = common::artifact_dir(&p, &plan, inst).join("model");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap()).unwrap();
        assert!(
            config["chat_template"].as_str().unwrap().contains("<|im_start|>"),
            "{inst}"
        );
    }
    // Every answered question was scored, with the model's (absent) BOS.
    let exam = stats_of(&p, &plan, "exam");
    assert!(exam["scored"].as_u64().unwrap() > 0, "{exam}");
    assert_eq!(exam["special_tokens"]["add_bos"], false, "{exam}");
}
