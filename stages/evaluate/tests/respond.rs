//! `respond` answers every instruction, and its per-answer and per-language
//! scores are what chrF and the code-switching detector say of the answers.

mod common;

use babelflow_evaluate::chrf::{chrf, Stats};
use babelflow_evaluate::codeswitch::Detector;
use common::*;
use serde_json::json;

#[test]
fn answers_are_generated_and_scored_per_language() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = tiny_model(dir.path());
    let tables: Vec<_> = ["sw", "hi"]
        .iter()
        .map(|l| {
            let f = samples().join(format!("instructions/{l}.json"));
            run(
                dir.path(),
                &format!("ins_{l}"),
                "ingest-instructions",
                json!({}),
                &[("files", &[&f])],
            )
            .join("instructions.parquet")
        })
        .collect();
    let params = json!({"max_new_tokens": 12, "max_examples": 3, "batch_size": 4});
    let ins: &[(&str, &[&std::path::Path])] = &[("model", &[&model_dir]), ("instructions", &[&tables[0], &tables[1]])];
    let out = run(dir.path(), "respond", "respond", params, ins);
    let rows = table(
        &out.join("generations.parquet"),
        &["lang", "prompt", "response", "reference", "chrf", "code_switched"],
    );
    assert_eq!(rows.len(), 6, "three per language");
    assert!(rows[0][1].starts_with("### Input:\n"), "the Bactrian-X template");
    let detector = Detector::default();
    let s = stats(&out);
    for lang in ["sw", "hi"] {
        let mut corpus = Stats::default();
        let mut switched = 0;
        for r in rows.iter().filter(|r| r[0] == lang) {
            let score: f64 = r[4].parse().unwrap();
            assert!((score - chrf(&r[2], &r[3])).abs() < 1e-3);
            corpus.add(&Stats::of(&r[2], &r[3]));
            let mixed = detector.judge(&r[2], lang, "en").mixed();
            assert_eq!(r[5], mixed.to_string());
            switched += mixed as usize;
        }
        let ours = &s["per_lang"][lang];
        assert!((ours["chrf_reference_based"].as_f64().unwrap() - corpus.score()).abs() < 1e-9);
        assert_eq!(ours["code_switch_rate"].as_f64().unwrap(), switched as f64 / 3.0);
    }
    // Greedy decoding is deterministic, and batching does not change it.
    let again = run(
        dir.path(),
        "respond2",
        "respond",
        json!({"max_new_tokens": 12, "max_examples": 3, "batch_size": 1}),
        ins,
    );
    assert_eq!(
        table(&again.join("generations.parquet"), &["response"]),
        table(&out.join("generations.parquet"), &["response"])
    );
}
