//! The shipped recipes as users run them: the 13-language batch, the
//! forgetting comparison, and the study's grid (validated, not trained).

mod common;

use common::{ran, repo_root, stats_of, to_run, Project};

#[test]
fn low_resource_13_runs_every_chain_and_one_languages_tuning_reruns_alone() {
    let p = Project::new();
    let recipe = repo_root().join("pipelines/low-resource-13.yaml");
    let recipe = recipe.to_str().unwrap();
    let store = p.path("store");
    let store = store.to_str().unwrap();
    let out = p.ok(&["run", recipe, "--store", store]);
    let done = ran(&out);
    let langs = [
        "ar", "bn", "gu", "hi", "id", "ml", "mr", "ne", "sw", "ta", "te", "ur", "vi",
    ];
    for lang in langs {
        for stage in ["corpus", "tokens", "instructions", "sft", "perplexity", "respond"] {
            let name = format!("{stage}@{lang}");
            assert!(done.contains(&name), "{name} did not run:\n{out}");
        }
    }
    p.ok(&[
        "report",
        recipe,
        "--store",
        store,
        "--out",
        p.path("out").to_str().unwrap(),
    ]);
    let md = std::fs::read_to_string(p.path("out/report.md")).unwrap();
    for lang in langs {
        assert!(
            md.contains(&format!("| perplexity@{lang} | sft@{lang} | {lang} |")),
            "{lang} missing in\n{md}"
        );
        assert!(
            md.contains(&format!("| respond@{lang} | sft@{lang} | {lang} |")),
            "{lang} missing"
        );
    }

    let plan = p.plan(recipe, &["--store", store, "--set", "stages.sft@sw.with.lr=1.0e-3"]);
    let mut rerun = to_run(&plan);
    rerun.sort();
    assert_eq!(rerun, ["perplexity@sw", "report", "respond@sw", "sft@sw"]);
}

#[test]
fn forgetting_shows_english_kept_by_the_bilingual_mix() {
    let p = Project::new();
    let recipe = repo_root().join("pipelines/forgetting.yaml");
    let recipe = recipe.to_str().unwrap();
    let store = p.path("store");
    let store = store.to_str().unwrap();
    p.ok(&["run", recipe, "--store", store]);
    let plan = p.plan(recipe, &["--store", store]);
    let english_bits_per_char = |instance: &str| {
        stats_of(&p, &plan, instance)["per_lang"]["en"]["bits_per_char"]
            .as_f64()
            .unwrap()
    };
    let (base, target_only, bilingual) = (
        english_bits_per_char("perplexity_base"),
        english_bits_per_char("perplexity@target_only"),
        english_bits_per_char("perplexity@bilingual"),
    );
    assert!(
        target_only > bilingual,
        "English bits/char: target-only {target_only}, bilingual {bilingual}"
    );
    assert!(
        target_only > base,
        "target-only training forgets English: {base} → {target_only}"
    );
    // The report's Table 2 sets each variant beside the model it started from.
    let md = std::fs::read_to_string(common::artifact_dir(&p, &plan, "report").join("report.md")).unwrap();
    for (variant, after) in [("target_only", target_only), ("bilingual", bilingual)] {
        let row = format!("| en | transfer@{variant} | {variant} | english_base |");
        let line = md
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no Table 2 row {row} in\n{md}"));
        assert!(line.contains(&format!("| {:.3} |", after - base)), "{line}");
    }
}

/// `--set` values that point a recipe's placeholders at shipped files.
fn sample_paths(p: &Project, recipe: &std::path::Path) -> Vec<String> {
    if recipe.ends_with("smollm2-gguf.yaml") {
        // The real model is fetched by a script, never by a test: `plan`
        // only needs a file to fingerprint.
        let gguf = p.path("model.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        return vec![format!("vars.gguf={}", gguf.display())];
    }
    if recipe.ends_with("beyond-english-mini.yaml") {
        // The model and the Bible text are fetched by scripts/fetch-mini-study.sh;
        // `plan` needs files in their layout to fingerprint.
        let gguf = p.path("model.gguf");
        std::fs::write(&gguf, b"GGUF").unwrap();
        let corpora = p.path("corpora");
        for lang in ["ny", "en"] {
            p.write(&format!("corpora/{lang}/train.jsonl"), "{\"text\": \"a\"}\n");
            p.write(&format!("corpora/{lang}/heldout.jsonl"), "{\"text\": \"b\"}\n");
            for split in ["dev", "test"] {
                p.write(
                    &format!("corpora/exams/{lang}/bible_translation_{split}.csv"),
                    "q,a,b,c,d,A\n",
                );
            }
        }
        for split in ["train", "test"] {
            p.write(&format!("corpora/sft/{split}.json"), "[]");
        }
        p.write("corpora/parallel/train.json", "[]");
        return vec![
            format!("vars.gguf={}", gguf.display()),
            format!("vars.corpora={}", corpora.display()),
        ];
    }
    if !recipe.to_string_lossy().contains("llama-beyond-english") {
        return Vec::new();
    }
    let root = repo_root();
    let samples = root.join("data/samples");
    // A checkpoint folder: the model fixture plus a tokenizer file.
    let ckpt = p.path("checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root.join("stages/model/tests/fixtures/tiny-gqa").join(f), ckpt.join(f)).unwrap();
    }
    std::fs::write(ckpt.join("tokenizer.json"), "{}").unwrap();
    let s = |rel: &str| samples.join(rel).display().to_string();
    vec![
        format!("vars.checkpoint={}", ckpt.display()),
        format!("vars.zh_text={}", s("text/zh.txt")),
        format!("vars.en_text={}", s("text/en.txt")),
        format!("vars.belle={}", s("instructions/zh.json")),
        format!("vars.llm_eval={}", s("instructions/zh.json")),
        format!("vars.ceval={}", s("exams/ceval")),
        format!("vars.mmlu={}", s("exams/mmlu")),
    ]
}

#[test]
fn plan_accepts_every_shipped_recipe() {
    let p = Project::new();
    let mut checked = Vec::new();
    let mut stack = vec![repo_root().join("pipelines")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with(".babelflow") {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let store = p.path("store");
                let mut args = vec!["plan".to_string(), path.display().to_string(), "--store".into()];
                args.push(store.display().to_string());
                for set in sample_paths(&p, &path) {
                    args.push("--set".into());
                    args.push(set);
                }
                if path.ends_with("gpu-smoke.yaml") && !cfg!(feature = "vulkan") {
                    // Asking for a backend this build lacks is refused at
                    // validation, where the recipe says so.
                    let refused = p.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
                    let stderr = String::from_utf8_lossy(&refused.stderr);
                    assert_eq!(refused.status.code(), Some(2), "{stderr}");
                    assert!(
                        stderr.contains(
                            "gpu-smoke.yaml:60:14: error: this babelflow was built without the `vulkan` backend"
                        ),
                        "{stderr}"
                    );
                    args.extend(["--set".into(), "vars.backend=cpu".into()]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = p.ok(&args);
                if path.to_string_lossy().contains("llama-beyond-english") {
                    // The study's grid: 3 scales × 2 vocabularies, 3 bases × 3 SFT sizes.
                    for name in [
                        "pretrain_1m@extended",
                        "sft_extended@950000",
                        "judged@original-5000",
                        "report",
                    ] {
                        assert!(out.contains(name), "{name} missing from the plan:\n{out}");
                    }
                }
                checked.push(path);
            }
        }
    }
    assert!(checked.len() >= 6, "found {checked:?}");
}
