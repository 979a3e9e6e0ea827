//! The README's run command, end to end on the shipped samples.

mod common;

use common::{browser, metrics_of, ran, repo_root, stats_of, Project};

#[test]
fn quickstart_runs_end_to_end_then_is_fully_cached_and_reports_its_numbers() {
    let p = Project::new();
    let recipe = repo_root().join("pipelines/quickstart.yaml");
    let recipe = recipe.to_str().unwrap();
    let store = p.path("store");
    let store = store.to_str().unwrap();
    let first = p.ok(&["run", recipe, "--store", store]);
    assert_eq!(ran(&first).len(), 28, "{first}");
    let second = p.ok(&["run", recipe, "--store", store]);
    assert!(ran(&second).is_empty(), "{second}");

    let located = p.ok(&[
        "report",
        recipe,
        "--store",
        store,
        "--out",
        p.path("out").to_str().unwrap(),
    ]);
    assert!(located.contains("report.html"), "{located}");
    let html = std::fs::read_to_string(p.path("out/report.html")).unwrap();
    let md = std::fs::read_to_string(p.path("out/report.md")).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the report is self-contained"
    );

    // Training curves are drawn from metrics.parquet: the pretrain loss line
    // has one point per step.
    let figure = html
        .split("<figure>")
        .find(|f| f.contains("<figcaption>pretrain: training loss</figcaption>"))
        .expect("a loss figure for pretrain");
    let line = figure
        .split("<polyline")
        .find(|p| p.contains("stroke-width=\"2\""))
        .expect("a drawn series");
    let points = line.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
    assert_eq!(points.split_whitespace().count(), 60, "one point per pretraining step");
    assert!(html.contains("<figcaption>Code-switching: share of responses that mix languages</figcaption>"));

    // Every number in the fertility table is the one in the tokenize artifact.
    let plan = p.plan(recipe, &["--store", store]);
    for inst in plan["instances"].as_array().unwrap() {
        let name = inst["name"].as_str().unwrap();
        if let Some(lang) = name.strip_prefix("tokens@") {
            let stats = stats_of(&p, &plan, name);
            let f = &stats["languages"][lang];
            let row = format!(
                "<tr><td>{name}</td><td>{lang}</td><td class=\"num\">{}</td><td class=\"num\">{:.3}</td>",
                f["tokens"],
                f["tokens_per_char"].as_f64().unwrap()
            );
            assert!(html.contains(&row), "missing {row} in the report");
            assert!(md.contains(&format!(
                "| {name} | {lang} | {} | {:.3} |",
                f["tokens"],
                f["tokens_per_char"].as_f64().unwrap()
            )));
        }
        if name == "pretrain" {
            let stats = stats_of(&p, &plan, name);
            for lang in ["en", "sw", "hi"] {
                let (before, after) = (
                    stats["validation_loss_start"][lang].as_f64().unwrap(),
                    stats["validation_loss_end"][lang].as_f64().unwrap(),
                );
                assert!(
                    after < before,
                    "{lang}: held-out loss did not fall ({before} → {after})"
                );
                let row = format!(
                    "| pretrain | {lang} | {before:.3} | {after:.3} | {:.2} | {:.2} |",
                    before.exp(),
                    after.exp()
                );
                assert!(md.contains(&row), "missing {row} in\n{md}");
            }
        }
        if let Some(model) = name.strip_prefix("perplexity@") {
            // The HTML shows what metrics.parquet holds, to its precision.
            let metrics = metrics_of(&p, &plan, name);
            for lang in ["en", "sw", "hi"] {
                let value = |metric: &str| {
                    metrics
                        .iter()
                        .find(|(l, m, _)| l == lang && m == metric)
                        .unwrap_or_else(|| panic!("{name}: no {metric} for {lang} in metrics.parquet"))
                        .2
                };
                let row = format!(
                    "<tr><td>{name}</td><td>{model}</td><td>{lang}</td><td class=\"num\">{:.2}</td><td class=\"num\">{:.3}</td><td class=\"num\">{:.3}</td>",
                    value("token_perplexity"),
                    value("bits_per_char"),
                    value("bits_per_byte")
                );
                assert!(html.contains(&row), "missing {row} in the HTML report");
            }
            let stats = stats_of(&p, &plan, name);
            for lang in ["en", "sw", "hi"] {
                let v = &stats["per_lang"][lang];
                let row = format!(
                    "| {name} | {model} | {lang} | {:.2} | {:.3} |",
                    v["token_perplexity"].as_f64().unwrap(),
                    v["bits_per_char"].as_f64().unwrap()
                );
                assert!(md.contains(&row), "missing {row} in\n{md}");
            }
        }
        // The study's Table 2: each model beside the one its training
        // started from, with the change in bits per character.
        if name == "perplexity@model" {
            let per_lang = |instance: &str| stats_of(&p, &plan, instance)["per_lang"].clone();
            let (untrained, pretrained, tuned) = (
                per_lang("perplexity@model"),
                per_lang("perplexity@pretrain"),
                per_lang("perplexity@sft"),
            );
            let num = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap();
            for lang in ["en", "sw", "hi"] {
                let first = format!(
                    "| {lang} | model |  | — | {:.2} | {:.3} | — | — |",
                    num(&untrained[lang], "token_perplexity"),
                    num(&untrained[lang], "bits_per_char")
                );
                assert!(md.contains(&first), "missing {first} in\n{md}");
                for (model, start, after, before) in [
                    ("pretrain", "model", &pretrained, &untrained),
                    ("sft", "pretrain", &tuned, &pretrained),
                ] {
                    let (a, b) = (num(&after[lang], "bits_per_char"), num(&before[lang], "bits_per_char"));
                    let row = format!(
                        "| {lang} | {model} |  | {start} | {:.2} | {a:.3} | {:.3} | {:.1} |",
                        num(&after[lang], "token_perplexity"),
                        a - b,
                        100.0 * (a - b) / b
                    );
                    assert!(md.contains(&row), "missing {row} in\n{md}");
                }
            }
        }
        // The run table: every instance upstream of the report, made in the
        // first run.
        if name != "report" {
            let row = md
                .lines()
                .find(|l| l.starts_with(&format!("| {name} | ")) && l.contains("| ran ("))
                .unwrap_or_else(|| panic!("{name} has no run row in\n{md}"));
            // Stages that ran a model say on what; the others used no device.
            let uses_model = ["model", "pretrain", "sft", "respond"].contains(&name)
                || name.starts_with("perplexity@")
                || name.starts_with("exam@");
            if uses_model {
                assert!(row.contains("| cpu (flex) | — |"), "{row}");
            } else {
                assert!(row.contains("| — | — |"), "{row}");
            }
        }
        if name == "sft" {
            let stats = stats_of(&p, &plan, name);
            assert_eq!(
                stats["examples_per_lang"],
                serde_json::json!({"en": 4, "sw": 4, "hi": 4})
            );
        }
        if let Some(lang) = name.strip_prefix("corpus@") {
            let stats = stats_of(&p, &plan, name);
            let kept = &stats["languages"][lang];
            assert!(
                md.contains(&format!(
                    "| {name} | {lang} | {} | {} | {} |",
                    stats["documents_in"], kept["documents"], kept["chars"]
                )),
                "{md}"
            );
        }
    }

    // The page opens in a real browser without a console message, and
    // renders: the screenshot is kept beside the build for a person to see.
    if let Some(chromium) = browser::chromium() {
        let png = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("quickstart-report.png");
        let console = browser::render(&chromium, &p.path("out/report.html"), &png, 3000);
        assert!(
            console.is_empty(),
            "report.html logged to the console:\n{}",
            console.join("\n")
        );
        assert_eq!(browser::png_size(&png), (1280, 3000));
        // The check itself can fail: a page with a script error is caught.
        let broken = p.write(
            "broken.html",
            "<!DOCTYPE html><p>x</p><script>undefinedFunction()</script>",
        );
        let console = browser::render(&chromium, &broken, &p.path("broken.png"), 200);
        assert!(console.iter().any(|l| l.contains("undefinedFunction")), "{console:?}");
    }
}
