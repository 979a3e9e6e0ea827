//! `plan --estimate`: what a run will cost, known before it runs.

mod common;

use common::{estimate_of, Project};

const N_7B: f64 = 6_738_415_616.0;

fn seven_b_recipe(p: &Project) {
    p.write("llama-2-7b/config.json", common::LLAMA_2_7B_CONFIG);
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

#[test]
fn a_7b_full_fine_tune_does_not_fit_an_80gb_device_and_lora_over_bf16_does() {
    let p = Project::new();
    seven_b_recipe(&p);
    let plan = p.plan("r.yaml", &["--estimate", "--device", "a100-80gb"]);
    assert_eq!(plan["estimate"]["device"]["memory_bytes"], 80_000_000_000u64);

    let full = estimate_of(&plan, "full");
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

    // On a GPU the model runs burn's composed operations, which keep SiLU's
    // sigmoid and product and the softmax's exponentials besides what the
    // CPU's fused kernels keep (LLaMA-2-7B has no grouped keys to expand):
    // per layer and token 2·11008 + 32·512 f32 values more than on this CPU.
    let on_cpu = p.plan("r.yaml", &["--estimate"]);
    let activations = |plan: &serde_json::Value| {
        estimate_of(plan, "full")["work"]["memory"]["activations_bytes"]
            .as_f64()
            .unwrap()
    };
    let composed_extra = (2.0 * 11008.0 + 32.0 * 512.0) * 32.0 * 4.0 * 512.0 * 4.0;
    assert_eq!(activations(&plan) - activations(&on_cpu), composed_extra);

    let lora = estimate_of(&plan, "lora");
    assert_eq!(lora["over_memory"], false, "{lora:#}");
    assert_eq!(lora["work"]["trainable_parameters"].as_f64().unwrap(), 8_388_608.0);
    let embeddings = estimate_of(&plan, "embeddings");
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

/// A calibration of this machine's `cpu` and `vulkan` backends, at 1
/// GFLOP/s and 1 PFLOP/s, written into the project's default store.
fn calibrated_cpu_and_vulkan(p: &Project) {
    let backend = |flops: f64, source: &str| {
        serde_json::json!({
            "rates": [{"hidden_size": 4096, "train_flops_per_s": flops, "forward_flops_per_s": flops}],
            "io_bytes_per_s": 1e9, "source": source,
        })
    };
    let calibration = serde_json::json!({"cpu": backend(1e9, "cpu test"), "vulkan": backend(1e15, "vulkan test")});
    p.write(".babelflow/calibration.json", &calibration.to_string());
}

#[test]
fn a_gpu_stage_in_a_recipe_of_cpu_stages_is_priced_on_its_own_backend_not_the_hosts_ram() {
    let p = Project::new();
    seven_b_recipe(&p);
    calibrated_cpu_and_vulkan(&p);
    // `auto` on a machine whose GPU `auto` picks (BURN_DEVICE says which,
    // as a GPU build finds one): a CPU build can plan it, not run it.
    let plan_with = |args: &[&str]| {
        let mut all = vec!["plan", "r.yaml", "--estimate", "--set", "defaults.backend=cpu"];
        all.extend(["--set", "stages.full.backend=auto"]);
        all.extend_from_slice(args);
        let out = p.cmd(&all).env("BURN_DEVICE", "vulkan").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let plan: serde_json::Value = serde_json::from_str(&plan_with(&["--json"])).unwrap();
    // Most instances are on the CPU: the plan's device is this machine's RAM.
    assert_eq!(plan["estimate"]["device"]["name"], "this machine (cpu)");
    let full = estimate_of(&plan, "full");
    let on = &full["device"];
    assert_eq!(on["name"], "this machine (auto)", "{full:#}");
    // 108 GB of weights, gradients and AdamW state: over any RAM this test
    // runs on, but a GPU's memory is not the RAM, and is not known here.
    assert_eq!(on["memory_bytes"], u64::MAX);
    assert!(
        on["memory_source"].as_str().unwrap().contains("`vulkan` device"),
        "{on}"
    );
    assert_eq!(full["over_memory"], false, "{full:#}");
    // Priced at the GPU's rate, not the CPU's (a million times slower).
    let flops = full["work"]["train_flops"].as_f64().unwrap();
    let seconds = full["seconds"].as_f64().unwrap();
    assert!(seconds < flops / 1e14, "{seconds} s for {flops} FLOPs");
    assert_eq!(full["seconds_source"], "vulkan test");
    // The LoRA run stays on the CPU: the RAM is its limit, its rate the CPU's.
    let lora = estimate_of(&plan, "lora");
    assert!(lora.get("device").is_none(), "{lora:#}");
    assert_eq!(lora["seconds_source"], "cpu test");
    let text = plan_with(&[]);
    assert!(
        text.contains("full: priced on this machine (auto): memory unknown"),
        "{text}"
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
    let pretrain = estimate_of(&plan, "pretrain");
    // 60 steps × 8 × 64.
    assert_eq!(pretrain["work"]["tokens"]["value"], 30720.0);
    // The tiny LLaMA init-model makes from the tokenizer's 1 000 ids, before either exists.
    let parameters = pretrain["work"]["parameters"].as_f64().unwrap();
    assert!(parameters > 100_000.0 && parameters < 1_000_000.0, "{parameters}");
    for name in ["sft", "perplexity@model", "perplexity@sft"] {
        let work = &estimate_of(&plan, name)["work"];
        assert!(work["tokens"]["value"].as_f64().unwrap() > 0.0, "{name}: {work:#}");
    }
    assert_eq!(
        estimate_of(&plan, "perplexity@sft")["work"]["tokens"]["basis"],
        "assumed"
    );
    // Nothing was created by looking.
    assert!(!store.exists());
}

/// A recipe `name`: the tiny English model, its text tokenized, `pretrain`
/// of it with `pretrain_with` and `score`, a perplexity of the trained
/// model on the text with `score_with`.
fn train_then_score(name: &str, pretrain_with: &str, score_with: &str) -> String {
    format!(
        "name: {name}
stages:
{}  tokens:
    kind: tokenize
    needs: {{ corpus: text, tokenizer: tokenizer }}
  pretrain:
    kind: pretrain
    needs: {{ model: model, tokens: tokens }}
    with: {{ {pretrain_with} }}
  score:
    kind: perplexity
    needs: {{ model: \"pretrain:model\", text: \"text:corpus.parquet\" }}
    with: {{ {score_with} }}
",
        common::tiny_english_model_stages()
    )
}

#[test]
fn a_run_keeps_the_estimate_beside_what_happened_and_the_report_shows_both() {
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            "{}  report:
    kind: report
    needs: {{ training: \"pretrain:stats.json\" }}
",
            train_then_score(
                "recorded",
                "steps: 3, batch_size: 2, seq_len: 32, warmup_steps: 1",
                "max_len: 64, batch_size: 2"
            )
        ),
    );
    // A calibration of this machine, made up: 1 GFLOP/s, 1 GB/s, 0.5 s and 10 MiB a `pretrain`.
    p.write(
        ".babelflow/calibration.json",
        r#"{"cpu": {"rates": [{"hidden_size": 0, "train_flops_per_s": 1e9, "forward_flops_per_s": 1e9}],
                    "io_bytes_per_s": 1e9, "overhead_s": {"pretrain": 0.5},
                    "process_bytes": {"pretrain": 10485760}, "source": "made up for this test"}}"#,
    );
    let before = p.plan("r.yaml", &["--estimate"]);
    let planned = estimate_of(&before, "pretrain");
    let seconds = planned["seconds"].as_f64().expect("priced with the calibration");
    let peak = planned["peak_bytes"].as_f64().unwrap();
    let work = &planned["work"];
    let flops = work["train_flops"].as_f64().unwrap() + work["forward_flops"].as_f64().unwrap();
    let io = work["io_bytes"].as_f64().unwrap();
    assert!((seconds - (flops / 1e9 + io / 1e9 + 0.5)).abs() < 1e-9, "{planned:#}");
    assert_eq!(
        peak,
        work["memory"]["weights_bytes"].as_f64().unwrap() + {
            let m = &work["memory"];
            m["gradients_bytes"].as_f64().unwrap()
                + m["optimizer_state_bytes"].as_f64().unwrap()
                + m["activations_bytes"].as_f64().unwrap()
                + 10485760.0
        }
    );

    p.ok(&["run", "r.yaml", "--jobs", "1"]);
    let plan = p.plan("r.yaml", &[]);
    let manifest = common::manifest_of(&p, &plan, "pretrain");
    assert_eq!(manifest["estimate"]["seconds"].as_f64(), Some(seconds));
    assert_eq!(manifest["estimate"]["peak_bytes"].as_f64(), Some(peak));
    assert_eq!(manifest["estimate"]["source"], "made up for this test");
    // Run alone, its peak is its own.
    assert_eq!(manifest["peak_rss_own"], true);
    let report = std::fs::read_to_string(common::artifact_dir(&p, &plan, "report").join("report.md")).unwrap();
    let run_table = report
        .split("estimated time (s)")
        .nth(1)
        .unwrap_or_else(|| panic!("no estimated time in the run table:\n{report}"));
    assert!(run_table.contains("estimated peak (MB)"), "{report}");
    let row = run_table
        .lines()
        .find(|l| l.starts_with("| pretrain |"))
        .unwrap_or_else(|| panic!("no pretrain row in the run table:\n{report}"));
    assert!(row.contains(&format!("{seconds:.2}")), "{row}");
    assert!(row.contains(&format!("{:.0}", peak / 1e6)), "{row}");

    // Twice the steps is the same shape: the run that happened prices it,
    // its seconds per FLOP beyond the fixed cost and its own peak.
    let took = manifest["duration_s"].as_f64().unwrap();
    let longer = p.plan("r.yaml", &["--estimate", "--set", "stages.pretrain.with.steps=6"]);
    let planned = estimate_of(&longer, "pretrain");
    assert_eq!(planned["action"], "run");
    assert_eq!(planned["shape"], manifest["work_done"]["shape"]);
    let work = &planned["work"];
    let longer_flops = work["train_flops"].as_f64().unwrap() + work["forward_flops"].as_f64().unwrap();
    assert!(longer_flops > 1.5 * flops, "{longer_flops} {flops}");
    let fixed = work["io_bytes"].as_f64().unwrap() / 1e9 + 0.5;
    // The FLOPs the run did, by the same model: training's are fixed by its parameters.
    let done_flops = manifest["work_done"]["flops"].as_f64().unwrap();
    assert_eq!(done_flops, flops);
    let expected = fixed + (took - fixed).max(0.0) * longer_flops / done_flops;
    let priced = planned["seconds"].as_f64().unwrap();
    assert!((priced - expected).abs() < 1e-9, "{priced} {expected} {planned:#}");
    assert!(
        planned["seconds_source"]
            .as_str()
            .unwrap()
            .starts_with("an earlier run of the same shape in this store (latest `pretrain` of recorded"),
        "{planned:#}"
    );
    assert_eq!(planned["peak_bytes"], manifest["peak_rss_bytes"]);
    // The model scored is to be trained again, but the tokenizer it will
    // hold exists: the text is measured in its tokens, not guessed.
    let score = &estimate_of(&longer, "score")["work"]["tokens"];
    assert_eq!(score["basis"], "measured", "{score:#}");
    let text = p.ok(&["plan", "r.yaml", "--estimate", "--set", "stages.pretrain.with.steps=6"]);
    assert!(
        text.contains("pretrain: time from an earlier run of the same shape")
            && text.contains("pretrain: peak memory = measured peak: an earlier run"),
        "{text}"
    );

    // A run again with --force replaces the manifest, not the history: the
    // store's run log keeps both runs.
    p.ok(&[
        "run", "r.yaml", "--jobs", "1", "--only", "pretrain", "--force", "pretrain",
    ]);
    let again = p.plan("r.yaml", &["--estimate", "--set", "stages.pretrain.with.steps=6"]);
    let source = estimate_of(&again, "pretrain")["seconds_source"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        source.starts_with("median of 2 earlier runs of the same shape"),
        "{source}"
    );

    // Another batch size holds other activations: another shape, priced by the calibration.
    let wider = p.plan("r.yaml", &["--estimate", "--set", "stages.pretrain.with.batch_size=4"]);
    let planned = estimate_of(&wider, "pretrain");
    assert_ne!(planned["shape"], manifest["work_done"]["shape"]);
    assert_eq!(planned["seconds_source"], "made up for this test");
    // A documented device is not the machine the run was measured on.
    let a100 = p.plan(
        "r.yaml",
        &[
            "--estimate",
            "--device",
            "a100-80gb",
            "--set",
            "stages.pretrain.with.steps=6",
        ],
    );
    let source = estimate_of(&a100, "pretrain")["seconds_source"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(source.starts_with("documented peak"), "{source}");

    // Before the run the scored text's size was a guess; what the manifest
    // keeps for later estimates is the work done, with the text read.
    assert_eq!(estimate_of(&before, "score")["work"]["tokens"]["basis"], "assumed");
    let (manifest, stats) = (
        common::manifest_of(&p, &plan, "score"),
        common::stats_of(&p, &plan, "score"),
    );
    let (done, scored) = (
        manifest["work_done"]["tokens"].as_f64().unwrap(),
        stats["per_lang"]["en"]["tokens"].as_f64().unwrap(),
    );
    assert!(
        (done - scored).abs() <= 0.05 * scored,
        "{done} tokens done, {scored} scored"
    );
}

/// Run one at a time, an instance's recorded peak is its own: a scoring
/// after a training in the same process does not count the training's
/// freed blocks, which the allocator keeps for reuse. Earlier runs' peaks
/// price later ones, so one inflated peak would carry into every estimate.
#[test]
fn a_scoring_after_a_training_records_its_own_peak_not_the_trainings_freed_memory() {
    let p = Project::new();
    p.write(
        "r.yaml",
        &train_then_score(
            "peaks",
            "steps: 2, batch_size: 256, seq_len: 128, warmup_steps: 1, checkpoint_every: 0",
            "max_len: 16, batch_size: 1, max_docs: 1",
        ),
    );
    p.ok(&["run", "r.yaml", "--jobs", "1"]);
    let plan = p.plan("r.yaml", &[]);
    let peak_mib = |name: &str| {
        let manifest = common::manifest_of(&p, &plan, name);
        assert_eq!(manifest["peak_rss_own"], true, "{name} ran alone");
        manifest["peak_rss_bytes"].as_f64().unwrap() / (1 << 20) as f64
    };
    let (training, scoring) = (peak_mib("pretrain"), peak_mib("score"));
    // 256 windows of 128 positions: logits, attention and their gradients.
    assert!(training > 160.0, "the training peaked at only {training:.0} MiB");
    assert!(
        scoring < training - 100.0,
        "the scoring of one short document recorded {scoring:.0} MiB, the training {training:.0} MiB"
    );
}

#[test]
fn a_stage_on_a_second_gpu_is_priced_on_that_gpu_not_the_first() {
    let p = Project::new();
    seven_b_recipe(&p);
    calibrated_cpu_and_vulkan(&p);
    let out = p
        .cmd(&[
            "plan",
            "r.yaml",
            "--estimate",
            "--json",
            "--set",
            "defaults.backend=auto",
            "--set",
            "stages.lora.device=1",
        ])
        // What a GPU build on a machine with GPUs picks (a CPU build can plan it).
        .env("BURN_DEVICE", "vulkan")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The plan's device is the first GPU; the stage on the second has its
    // own, whose memory may differ (a GPU build reads each from its driver).
    assert_eq!(plan["estimate"]["device"]["name"], "this machine (auto)");
    let full = estimate_of(&plan, "full");
    assert!(full.get("device").is_none(), "{full:#}");
    let lora = estimate_of(&plan, "lora");
    assert_eq!(lora["device"]["name"], "this machine (auto, device 1)", "{lora:#}");
    // Both on Vulkan's rate.
    assert_eq!(lora["seconds_source"], "vulkan test");
    assert_eq!(full["seconds_source"], "vulkan test");
}
