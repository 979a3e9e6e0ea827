//! Model stage kinds through the CLI: a from-scratch model, an imported HF
//! checkpoint, and the vocabulary-extension path (extend-vocab → resize-vocab).

mod common;

use common::{artifact_dir, ran, repo_root, Project};

#[test]
fn init_import_and_resize_models_in_a_recipe() {
    let p = Project::new();
    let samples = repo_root().join("data/samples");
    let fixture = repo_root().join("stages/model/tests/fixtures/tiny-gqa");
    let recipe = format!(
        r#"name: models
stages:
  corpus:
    kind: ingest
    foreach: [en, zh]
    needs: {{ files: "{samples}/text/${{item}}.txt" }}
    with: {{ lang: "${{item}}" }}
  tokenizer:
    kind: train-tokenizer
    needs: {{ corpus: corpus@en }}
    with: {{ vocab_size: 400 }}
  scratch:
    kind: init-model
    needs: {{ tokenizer: tokenizer }}
    backend: cpu
    with: {{ hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 }}
  extended:
    kind: extend-vocab
    needs: {{ tokenizer: tokenizer, corpus: corpus@zh }}
    with: {{ new_tokens: 200, train_vocab_size: 600 }}
  ext_model:
    kind: resize-vocab
    needs: {{ model: scratch, added: "extended:added_tokens.json", tokenizer: "extended:tokenizer.json", corpus: corpus@zh }}
    with: {{ init: focus, focus_dim: 16, focus_subsample: 0.001 }}
  imported:
    kind: import-model
    needs: {{ checkpoint: "{fixture}/" }}
"#,
        samples = samples.display(),
        fixture = fixture.display()
    );
    p.write("r.yaml", &recipe);
    let out = p.ok(&["run", "r.yaml"]);
    assert_eq!(ran(&out).len(), 7, "{out}");
    let plan = p.plan("r.yaml", &[]);
    let dir = |name: &str| artifact_dir(&p, &plan, name);
    let read = |path: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let scratch = read(dir("scratch").join("model/config.json"));
    let tok = read(dir("tokenizer").join("tokenizer.json"));
    let vocab = tok["model"]["vocab"].as_object().unwrap().len();
    assert_eq!(scratch["vocab_size"], vocab, "vocab_size comes from the tokenizer");
    assert_eq!(scratch["num_key_value_heads"], 2);
    let added = read(dir("extended").join("added_tokens.json"));
    let ext = read(dir("ext_model").join("model/config.json"));
    assert_eq!(ext["vocab_size"], added["vocab_size"]);
    assert!(ext["vocab_size"].as_u64().unwrap() > vocab as u64);
    // stats.json says how the new rows started: FOCUS where the Chinese
    // text gave a new token a vector, its old pieces where it did not.
    let notes = &read(dir("ext_model").join("stats.json"));
    assert_eq!(notes["init"], "focus");
    assert!(notes["text_tokens"].as_u64().unwrap() > 100, "{notes}");
    let by: u64 = notes["new_rows_by"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by, ext["vocab_size"].as_u64().unwrap() - vocab as u64, "{notes}");
    assert!(notes["new_rows_by"]["focus"].as_u64().unwrap() > 0, "{notes}");
    // Without its text, the init is refused when planned, naming the input.
    let without = recipe.replace(", corpus: corpus@zh }", " }");
    p.write("no-corpus.yaml", &without);
    let out = p.run(&["plan", "no-corpus.yaml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs input `corpus`") && err.contains("init: focus"),
        "{err}"
    );
    assert!(dir("imported").join("model/model.safetensors").is_file());
    assert_eq!(read(dir("imported").join("manifest.json"))["notes"]["layers"], 2);

    // A folder that is not a checkpoint fails with its path named.
    p.write("bad/config.json", "{}");
    p.write(
        "bad.yaml",
        "stages:\n  m:\n    kind: import-model\n    needs: { checkpoint: ./bad/ }\n",
    );
    let out = p.run(&["run", "bad.yaml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad/config.json") && err.contains("not a LlamaConfig"),
        "{err}"
    );
}
