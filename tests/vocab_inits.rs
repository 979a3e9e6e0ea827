//! Which init for an extended vocabulary, as a user runs it: a small model
//! trained on English and Swahili, its vocabulary extended for Swahili and
//! started four ways (and once with its new rows trained first), each
//! further-pretrained the same way, and the report's "Vocabulary extension:
//! which init" table with every init's bits per character beside the
//! original vocabulary's and its tokens to recover.

mod common;

use common::{artifact_dir, repo_root, Project};

const RECIPE: &str = r#"name: inits
vars:
  samples: SAMPLES
  train: &train
    steps: 12
    batch_size: 4
    seq_len: 32
    lr: 3.0e-3
    min_lr: 3.0e-4
    warmup_steps: 2
    eval_every: 4
    eval_batches: 1
defaults: { backend: cpu }
stages:
  text:
    kind: ingest
    foreach: [en, sw]
    needs: { files: "${vars.samples}/text/${item}.txt" }
    with: { lang: "${item}" }
  pairs:
    kind: ingest-instructions
    needs: { files: "${vars.samples}/instructions/sw.json" }
    with: { lang: sw }
  tokenizer:
    kind: train-tokenizer
    needs: { corpus: text@en }
    with: { vocab_size: 300 }
  base:
    kind: init-model
    needs: { tokenizer: tokenizer }
    with: { hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2 }
  trained_base:
    kind: pretrain
    needs: { model: base, tokens: tokens@tokenizer-sw, validation: [tokens@tokenizer-sw, tokens@tokenizer-en] }
    with: { <<: *train, steps: 40, eval_every: 40 }
  extension:
    kind: extend-vocab
    needs: { tokenizer: tokenizer, corpus: text@sw }
    with: { new_tokens: 100, train_vocab_size: 400 }
  ext_subword:
    kind: resize-vocab
    needs: &extension { model: trained_base, added: "extension:added_tokens.json", tokenizer: "extension:tokenizer.json" }
  ext_mean:
    kind: resize-vocab
    needs: *extension
    with: { init: mean }
  ext_focus:
    kind: resize-vocab
    needs: { <<: *extension, corpus: text@sw }
    with: { init: focus, focus_dim: 16, focus_subsample: 0.001 }
  ext_aligned:
    kind: resize-vocab
    needs: { <<: *extension, parallel: pairs }
    with: { init: aligned }
  tokens:
    kind: tokenize
    matrix: { vocab: [tokenizer, extension], lang: [en, sw] }
    needs: { corpus: "text@${matrix.lang}", tokenizer: "${matrix.vocab}:tokenizer.json" }
  pretrain_base:
    kind: pretrain
    needs: { model: trained_base, tokens: tokens@tokenizer-sw, validation: [tokens@tokenizer-sw, tokens@tokenizer-en] }
    with: *train
  pretrain:
    kind: pretrain
    foreach: [ext_subword, ext_mean, ext_focus, ext_aligned]
    needs: &extended_text { model: "${item}", tokens: tokens@extension-sw, validation: [tokens@extension-sw, tokens@extension-en] }
    with: *train
  new_rows:
    kind: pretrain
    needs: { <<: *extended_text, model: ext_subword }
    with: { <<: *train, trainable: new-embeddings, steps: 4 }
  after_new_rows:
    kind: pretrain
    needs: { <<: *extended_text, model: new_rows }
    with: *train
  report:
    kind: report
    needs: { training: ["pretrain_base:stats.json", "pretrain:stats.json", "new_rows:stats.json", "after_new_rows:stats.json"] }
"#;

/// The cells of the rows of the markdown table titled `title`.
fn table_rows(md: &str, title: &str) -> Vec<Vec<String>> {
    let section = md
        .split(&format!("## {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no `{title}` in\n{md}"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect()
}

#[test]
fn the_report_compares_every_init_by_bits_per_char_and_tokens_to_recover() {
    let p = Project::new();
    let recipe = RECIPE.replace("SAMPLES", &repo_root().join("data/samples").display().to_string());
    p.write("inits.yaml", &recipe);
    p.ok(&["run", "inits.yaml"]);
    let plan = p.plan("inits.yaml", &[]);
    let md = std::fs::read_to_string(artifact_dir(&p, &plan, "report").join("report.md")).unwrap();
    let rows = table_rows(&md, "Vocabulary extension: which init");
    // language, init, training, original, untrained, after, Δ, tokens to recover, new rows by
    for lang in ["en", "sw"] {
        let of_lang: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == lang).collect();
        let runs: Vec<(&str, &str)> = of_lang.iter().map(|r| (r[1].as_str(), r[2].as_str())).collect();
        assert_eq!(
            runs,
            [
                ("aligned", "pretrain@ext_aligned"),
                ("focus", "pretrain@ext_focus"),
                ("mean", "pretrain@ext_mean"),
                ("subword-mean", "new_rows"),
                ("subword-mean", "pretrain@ext_subword"),
                ("subword-mean", "new_rows → after_new_rows"),
            ],
            "{md}"
        );
        for r in &of_lang {
            let number = |i: usize| r[i].parse::<f64>().unwrap_or_else(|_| panic!("column {i} of {r:?}"));
            let (original, untrained, after) = (number(3), number(4), number(5));
            assert!(original > 0.0 && untrained > 0.0 && after > 0.0, "{r:?}");
            assert!(
                (number(6) - (after - original)).abs() < 2e-3,
                "Δ is after − original: {r:?}"
            );
            // A count of tokens, or how far the run went without getting there.
            let recover = &r[7];
            assert!(
                recover.parse::<u64>().is_ok() || recover.starts_with("not within "),
                "{r:?}"
            );
            if let Ok(tokens) = recover.parse::<u64>() {
                assert!(
                    tokens == 0 || untrained > original,
                    "0 exactly when it starts at or below: {r:?}"
                );
            }
        }
        // The chain goes on from where its first phase ended (the tokens of
        // `new_rows`, 4 steps × 4 × 32, come first).
        let untrained = |training: &str| of_lang.iter().find(|r| r[2] == training).unwrap()[4].clone();
        assert_eq!(untrained("new_rows → after_new_rows"), untrained("new_rows"));
    }
    // The extension was learnt on Swahili: English text, which it splits
    // differently, is worse off, and 12 steps on Swahili do not win it back.
    assert!(
        rows.iter().any(|r| r[0] == "en" && r[7].starts_with("not within ")),
        "{md}"
    );
    let focus = rows.iter().find(|r| r[1] == "focus").unwrap();
    assert!(focus[8].contains("focus: "), "{focus:?}");
}
