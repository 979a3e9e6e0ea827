//! `babelflow new`: a recipe for a new language that plans as written and,
//! at toy scale on the shipped samples, runs end to end.

mod common;

use common::Project;

fn sample(path: &str) -> String {
    common::repo_root()
        .join("data/samples")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn recipes_for_swahili_hindi_and_vietnamese_plan_as_written() {
    let p = Project::new();
    p.write("models/llama-2-7b/config.json", common::LLAMA_2_7B_CONFIG);
    for lang in ["sw", "hi", "vi"] {
        let recipe = format!("recipes/{lang}.yaml");
        let out = p.ok(&[
            "new",
            &recipe,
            "--lang",
            lang,
            "--base",
            "models/llama-2-7b",
            "--text",
            &sample(&format!("text/{lang}.txt")),
            "--english",
            &sample("text/en.txt"),
            "--instructions",
            &sample(&format!("instructions/{lang}.json")),
        ]);
        assert!(out.contains(&format!("babelflow run {recipe}")), "{out}");
        let text = std::fs::read_to_string(p.path(&recipe)).unwrap();
        assert!(text.contains(&format!("ratios: {{ {lang}: 0.5, en: 0.5 }}")), "{text}");
        // Relative to the recipe, so the two move together.
        assert!(text.contains("base: \"../models/llama-2-7b\""), "{text}");
        let plan = p.plan(&recipe, &["--estimate"]);
        let names = common::instance_names(&plan);
        for expected in [
            "corpus_target",
            "pretrain@original",
            "sft@original",
            "perplexity@sft-original",
            "report",
        ] {
            assert!(names.contains(&expected), "{lang}: {names:?}");
        }
        // The training it writes fits 24 GB for a 7B base: LoRA over bf16, checkpointed.
        let pretrain = common::estimate_of(&plan, "pretrain@original");
        assert!(pretrain["peak_bytes"].as_f64().unwrap() < 24e9, "{pretrain:#}");
    }
}

#[test]
fn compare_vocab_adds_an_extended_vocabulary_beside_the_original() {
    let p = Project::new();
    p.write("base/config.json", common::LLAMA_2_7B_CONFIG);
    p.ok(&["new", "sw.yaml", "--lang", "sw", "--base", "base", "--compare-vocab"]);
    let plan = p.plan("sw.yaml", &["--estimate"]);
    let extended = common::estimate_of(&plan, "pretrain@extended");
    // The extended model's shape is known before it exists: 32 000 + up to 8 000 rows.
    let parameters = extended["work"]["parameters"].as_f64().unwrap();
    assert_eq!(parameters, 6_738_415_616.0 + 2.0 * 8000.0 * 4096.0);
}

#[test]
fn the_swahili_recipe_runs_end_to_end_at_toy_scale_on_the_shipped_samples() {
    let p = Project::new();
    // A tiny "English" model to start from.
    p.write(
        "base.yaml",
        &format!("name: base\nstages:\n{}", common::tiny_english_model_stages()),
    );
    p.ok(&["run", "base.yaml"]);
    let plan = p.plan("base.yaml", &[]);
    let model = common::artifact_dir(&p, &plan, "model").join("model");
    let out = p.ok(&[
        "new",
        "recipes/sw.yaml",
        "--lang",
        "sw",
        "--base",
        model.to_str().unwrap(),
    ]);
    assert!(out.contains("Swahili"), "{out}");
    let toy = [
        "--set",
        "vars.pretrain_steps=3",
        "--set",
        "vars.sft_steps=2",
        "--set",
        "vars.batch_size=2",
        "--set",
        "vars.seq_len=128",
        "--set",
        "stages.held_out.with.validation=0.34",
        "--set",
        "stages.answers.with.max_new_tokens=8",
    ];
    let mut run = vec!["run", "recipes/sw.yaml"];
    run.extend(toy);
    let first = p.ok(&run);
    assert!(first.contains("0 failed, 0 skipped"), "{first}");
    assert!(p.path("recipes/.babelflow").is_dir());
    let mut report = vec!["report", "recipes/sw.yaml"];
    report.extend(toy);
    assert!(p.ok(&report).contains("report.html"));
    let again = p.ok(&run);
    assert!(common::ran(&again).is_empty(), "a rerun executes nothing: {again}");
}

#[test]
fn bad_requests_are_refused_before_anything_is_written() {
    let p = Project::new();
    p.write("base/config.json", common::LLAMA_2_7B_CONFIG);
    let refused = |args: &[&str], says: &str| {
        let out = p.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    };
    refused(&["new", "a.yaml", "--lang", "en", "--base", "base"], "English already");
    refused(
        &["new", "a.yaml", "--lang", "Swahili", "--base", "base"],
        "ISO 639 code",
    );
    refused(
        &["new", "a.yaml", "--lang", "sw", "--base", "nowhere"],
        "--base nowhere",
    );
    refused(
        &["new", "a.yaml", "--lang", "xx", "--base", "base"],
        "ships no sample xx.txt",
    );
    assert!(!p.path("a.yaml").exists());
    p.ok(&["new", "a.yaml", "--lang", "sw", "--base", "base"]);
    refused(&["new", "a.yaml", "--lang", "sw", "--base", "base"], "--force");
}
