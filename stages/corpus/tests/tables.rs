//! `ingest-instructions`, `ingest-choice` and `split` on the shipped samples
//! and on broken fixtures.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, ListArray, RecordBatch, StringArray};
use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

fn kind(name: &str) -> std::sync::Arc<dyn StageKind> {
    babelflow_corpus::kinds()
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap()
}

fn samples(rel: &str) -> PathBuf {
    babelflow_stage::testing::package_dir()
        .join("../../data/samples")
        .join(rel)
}

fn read(path: &Path) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn strings(batches: &[RecordBatch], column: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let c = b
                .column_by_name(column)
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..c.len()).map(move |i| c.value(i).to_string())
        })
        .collect()
}

#[test]
fn bactrian_x_layout_gives_languages_from_file_names_and_keeps_ids() {
    let dir = tempfile::tempdir().unwrap();
    let files = [samples("instructions/sw.json"), samples("instructions/hi.json")];
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    run_kind(
        kind("ingest-instructions").as_ref(),
        json!({}),
        &inputs(&[("files", &refs)]),
        dir.path(),
    )
    .unwrap();
    let b = read(&dir.path().join("instructions.parquet"));
    assert_eq!(
        strings(&b, "lang"),
        vec!["sw", "sw", "sw", "sw", "hi", "hi", "hi", "hi"]
    );
    assert_eq!(strings(&b, "id")[0], "bx-1");
    assert_eq!(strings(&b, "id")[4], "bx-1", "same id across languages");
    assert_eq!(strings(&b, "input")[1], "Soko hufunguliwa kabla ya jua kuchomoza.");
}

#[test]
fn sharegpt_conversations_keep_their_turns() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("chat.jsonl");
    std::fs::write(
        &f,
        "{\"id\": \"c1\", \"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"hello\"}, {\"from\": \"human\", \"value\": \"bye\"}]}\n",
    )
    .unwrap();
    let out = dir.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    run_kind(
        kind("ingest-instructions").as_ref(),
        json!({"lang": "en"}),
        &inputs(&[("files", &[&f])]),
        &out,
    )
    .unwrap();
    let b = read(&out.join("instructions.parquet"));
    assert_eq!(strings(&b, "instruction"), vec!["hi"]);
    assert_eq!(strings(&b, "output"), vec!["hello"]);
    let turns: serde_json::Value = serde_json::from_str(&strings(&b, "turns")[0]).unwrap();
    assert_eq!(turns.as_array().unwrap().len(), 3);
    assert_eq!(turns[2], json!({"role": "user", "content": "bye"}));
}

#[test]
fn instruction_records_without_fields_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.jsonl");
    std::fs::write(
        &f,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"no output\"}\n",
    )
    .unwrap();
    let out = dir.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    let err = run_kind(
        kind("ingest-instructions").as_ref(),
        json!({}),
        &inputs(&[("files", &[&f])]),
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.jsonl:2: record lacks fields `instruction` and `output`"),
        "{err}"
    );
    run_kind(
        kind("ingest-instructions").as_ref(),
        json!({"lenient": true}),
        &inputs(&[("files", &[&f])]),
        &out,
    )
    .unwrap();
    assert_eq!(strings(&read(&out.join("instructions.parquet")), "output"), vec!["b"]);
}

#[test]
fn mmlu_and_ceval_csv_become_one_questions_table() {
    let dir = tempfile::tempdir().unwrap();
    let mmlu = samples("exams/mmlu");
    run_kind(
        kind("ingest-choice").as_ref(),
        json!({}),
        &inputs(&[("files", &[&mmlu])]),
        dir.path(),
    )
    .unwrap();
    let b = read(&dir.path().join("questions.parquet"));
    assert_eq!(strings(&b, "split"), vec!["dev", "dev", "test", "test", "test", "test"]);
    assert_eq!(strings(&b, "subject")[0], "everyday_science");
    assert_eq!(strings(&b, "answer")[0], "C");
    let choices = b[0]
        .column_by_name("choices")
        .unwrap()
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    let first = choices.value(0);
    let first = first.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(
        (0..4).map(|i| first.value(i)).collect::<Vec<_>>(),
        vec!["50", "90", "100", "120"]
    );

    let out = dir.path().join("c");
    std::fs::create_dir_all(&out).unwrap();
    let ceval = samples("exams/ceval");
    run_kind(
        kind("ingest-choice").as_ref(),
        json!({"lang": "zh"}),
        &inputs(&[("files", &[&ceval])]),
        &out,
    )
    .unwrap();
    let b = read(&out.join("questions.parquet"));
    assert_eq!(strings(&b, "split"), vec!["dev", "val", "val"]);
    assert_eq!(strings(&b, "question")[0], "泡茶大约需要几分钟？");
    assert_eq!(strings(&b, "lang")[0], "zh");
}

#[test]
fn a_csv_row_with_the_wrong_column_count_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x_test.csv");
    std::fs::write(&f, "q1,a,b,c,d,A\nq2,a,b,c,A\n").unwrap();
    let err = run_kind(
        kind("ingest-choice").as_ref(),
        json!({}),
        &inputs(&[("files", &[&f])]),
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("x_test.csv:2: MMLU row has 5 columns"), "{err}");
}

#[test]
fn split_is_deterministic_by_id_and_never_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("many.txt");
    std::fs::write(
        &text,
        (0..400).map(|i| format!("document number {i}\n")).collect::<String>(),
    )
    .unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    run_kind(
        kind("ingest").as_ref(),
        json!({"text_unit": "line"}),
        &inputs(&[("files", &[&text])]),
        &corpus,
    )
    .unwrap();
    let split = |name: &str| {
        let out = dir.path().join(name);
        std::fs::create_dir_all(&out).unwrap();
        let table = corpus.join("corpus.parquet");
        run_kind(
            kind("split").as_ref(),
            json!({"validation": 0.1, "test": 0.1}),
            &inputs(&[("table", &[&table])]),
            &out,
        )
        .unwrap();
        ["train", "validation", "test"].map(|s| strings(&read(&out.join(format!("{s}.parquet"))), "id"))
    };
    let a = split("a");
    let b = split("b");
    assert_eq!(a, b, "same ids, same sides");
    let total: usize = a.iter().map(Vec::len).sum();
    assert_eq!(total, 400);
    for (i, side) in a.iter().enumerate() {
        for (j, other) in a.iter().enumerate() {
            if i != j {
                assert!(side.iter().all(|id| !other.contains(id)));
            }
        }
    }
    assert!(
        (20..=60).contains(&a[1].len()),
        "about 10% validation, got {}",
        a[1].len()
    );
    assert!((20..=60).contains(&a[2].len()), "about 10% test, got {}", a[2].len());
}

#[test]
fn a_sharegpt_array_record_without_an_answer_is_named_by_its_line() {
    // A pretty-printed JSON array (as ShareGPT dumps are): the second
    // conversation starts on line 15, and "conv.json:2" would point into
    // the first one.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("conv.json");
    let records = json!([
        {"id": "a", "conversations": [{"from": "human", "value": "hi, [1], {x}"}, {"from": "gpt", "value": "\"hello\""}]},
        {"id": "b", "conversations": [{"from": "human", "value": "no answer"}]}
    ]);
    let text = serde_json::to_string_pretty(&records).unwrap();
    let line = 1 + text.lines().enumerate().filter(|(_, l)| *l == "  {").nth(1).unwrap().0;
    assert_eq!(line, 15);
    std::fs::write(&f, &text).unwrap();
    let out = dir.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    let err = run_kind(
        kind("ingest-instructions").as_ref(),
        json!({"lang": "en"}),
        &inputs(&[("files", &[&f])]),
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!(
            "conv.json:{line}: record lacks a conversation with a user turn and an assistant turn"
        )),
        "{err}\n{text}"
    );
}
