//! Parquet as other tools write it, ingested: polars (its default
//! `string_view` / `large_string` columns) and pyarrow with `large_string`,
//! `string_view` and dictionary-encoded text. Needs `python3` with polars
//! and pyarrow (`.ci/run` installs both); under `CI=true` their absence is a
//! failure, elsewhere the test says it skipped.

mod common;

use common::{stats_of, Project};

const WRITE: &str = r#"
import sys, polars as pl, pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
texts = [f"document number {i}, written by another tool" for i in range(200)]
pl.DataFrame({"id": list(range(200)), "text": texts}).write_parquet(f"{out}/polars.parquet")
for name, typ in [("large_string", pa.large_string()), ("string_view", pa.string_view())]:
    table = pa.table({"id": pa.array(range(200)), "text": pa.array(texts, type=typ)})
    pq.write_table(table, f"{out}/pyarrow_{name}.parquet")
table = pa.table({"id": pa.array(range(200)), "text": pa.array(texts).dictionary_encode()})
pq.write_table(table, f"{out}/pyarrow_dictionary.parquet")
"#;

const LAYOUTS: [&str; 4] = [
    "polars",
    "pyarrow_large_string",
    "pyarrow_string_view",
    "pyarrow_dictionary",
];

#[test]
fn parquet_from_polars_and_pyarrow_is_ingested_whole() {
    let p = Project::new();
    let written = std::process::Command::new("python3")
        .args(["-c", WRITE, p.dir.path().to_str().unwrap()])
        .output();
    let ok = written.as_ref().is_ok_and(|o| o.status.success());
    if !ok {
        let why = written
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|e| e.to_string());
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have python3 with polars and pyarrow: {why}"
        );
        eprintln!("skipped: python3 with polars and pyarrow is needed ({why})");
        return;
    }
    let mut recipe = String::from("name: r\nstages:\n");
    for layout in LAYOUTS {
        for lenient in [false, true] {
            recipe.push_str(&format!(
                "  {layout}_{lenient}:\n    kind: ingest\n    needs: {{ files: ./{layout}.parquet }}\n    with: {{ lang: en, lenient: {lenient} }}\n"
            ));
        }
    }
    p.write("r.yaml", &recipe);
    p.ok(&["run", "r.yaml"]);
    let plan = p.plan("r.yaml", &[]);
    for layout in LAYOUTS {
        for lenient in [false, true] {
            let stats = stats_of(&p, &plan, &format!("{layout}_{lenient}"));
            assert_eq!(stats["documents_out"], 200, "{layout}, lenient {lenient}: {stats}");
        }
    }
}
