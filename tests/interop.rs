//! Artifacts are read by the tools users reach for: polars (Python) reads
//! every Parquet babelflow writes with the documented schema. Needs
//! `python3 -m pip install polars` (`.ci/run` installs it); skipped with a
//! message elsewhere, failed in CI.

mod common;

use common::{artifact_dir, repo_root, Project};

const RECIPE: &str = r#"name: interop
stages:
  corpus:
    kind: ingest
    needs: { files: "SAMPLES/text/sw.txt" }
    with: { lang: sw }
  instructions:
    kind: ingest-instructions
    needs: { files: "SAMPLES/instructions/*.json" }
  exams:
    kind: ingest-choice
    needs: { files: "SAMPLES/exams/mmlu/" }
  held_out:
    kind: split
    needs: { table: "corpus:corpus.parquet" }
    with: { validation: 0.3, test: 0.3 }
  tokenizer:
    kind: train-tokenizer
    needs: { corpus: corpus }
    with: { vocab_size: 400 }
  tokens:
    kind: tokenize
    needs: { corpus: corpus, tokenizer: tokenizer }
"#;

const CHECK: &str = r#"
import json, sys, polars as pl
want = json.loads(sys.argv[1])
for path, schema in want.items():
    df = pl.read_parquet(path)
    got = {k: str(v) for k, v in df.schema.items()}
    assert got == schema, f"{path}: {got} != {schema}"
    assert df.height > 0, path
print("polars read", len(want), "tables")
"#;

fn polars_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import polars"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn polars_reads_every_parquet_artifact_with_the_documented_schema() {
    if !polars_available() {
        assert!(std::env::var_os("CI").is_none(), "CI must have polars (see .ci/run)");
        eprintln!("skipped: python3 -c 'import polars' fails here");
        return;
    }
    let p = Project::new();
    let samples = repo_root().join("data/samples");
    p.write("r.yaml", &RECIPE.replace("SAMPLES", samples.to_str().unwrap()));
    p.ok(&["run", "r.yaml"]);
    let plan = p.plan("r.yaml", &[]);
    let dir = |name: &str| artifact_dir(&p, &plan, name);
    let s = "String";
    let u = "UInt64";
    let want = serde_json::json!({
        dir("corpus").join("corpus.parquet").to_str().unwrap():
            {"id": s, "lang": s, "text": s, "source": s},
        dir("instructions").join("instructions.parquet").to_str().unwrap():
            {"id": s, "lang": s, "instruction": s, "input": s, "output": s, "turns": s},
        dir("exams").join("questions.parquet").to_str().unwrap():
            {"id": s, "lang": s, "subject": s, "split": s, "question": s, "choices": "List(String)", "answer": s},
        dir("held_out").join("train.parquet").to_str().unwrap():
            {"id": s, "lang": s, "text": s, "source": s},
        dir("tokens").join("index.parquet").to_str().unwrap():
            {"id": s, "lang": s, "offset": u, "n_tokens": u, "n_chars": u, "n_bytes": u},
    });
    let out = std::process::Command::new("python3")
        .args(["-c", CHECK, &want.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
