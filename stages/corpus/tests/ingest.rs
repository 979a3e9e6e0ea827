//! `ingest` on every supported format, its cleaning steps, and its errors.

use std::io::Write;
use std::path::{Path, PathBuf};

use babelflow_corpus::{kinds, read_corpus, Document};
use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::{StageError, StageKind};
use serde_json::{json, Value};

fn ingest() -> std::sync::Arc<dyn StageKind> {
    kinds().into_iter().find(|k| k.name() == "ingest").unwrap()
}

struct Out {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn run(params: Value, files: &[&Path]) -> Result<(Vec<Document>, Value, Out), StageError> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    run_kind(ingest().as_ref(), params, &inputs(&[("files", files)]), &out)?;
    let mut docs = Vec::new();
    read_corpus(&out.join("corpus.parquet"), &mut |d| {
        docs.push(d);
        Ok(())
    })?;
    let stats: Value = serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    Ok((docs, stats, Out { _dir: dir, path: out }))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn texts(docs: &[Document]) -> Vec<&str> {
    docs.iter().map(|d| d.text.as_str()).collect()
}

#[test]
fn plain_text_by_paragraph_line_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "a.txt", b"first para\nstill first\n\nsecond para\n");
    let (docs, stats, _) = run(json!({"lang": "en"}), &[&f]).unwrap();
    assert_eq!(texts(&docs), vec!["first para\nstill first", "second para"]);
    assert_eq!(docs[1].id, "a.txt:4");
    assert_eq!(docs[0].lang, "en");
    assert_eq!(docs[0].source, "a.txt");
    assert_eq!(stats["documents_out"], 2);
    let (docs, _, _) = run(json!({"text_unit": "line"}), &[&f]).unwrap();
    assert_eq!(docs.len(), 3);
    let (docs, _, _) = run(json!({"text_unit": "file"}), &[&f]).unwrap();
    assert_eq!(docs.len(), 1);
}

#[test]
fn jsonl_with_nested_fields_gz_and_zst() {
    let dir = tempfile::tempdir().unwrap();
    let body = b"{\"meta\": {\"content\": \"hello\"}, \"doc\": 7, \"l\": \"en\"}\n\n{\"meta\": {\"content\": \"habari\"}, \"doc\": 8, \"l\": \"sw\"}\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    let a = write(dir.path(), "a.jsonl.gz", &gz.finish().unwrap());
    let b = write(dir.path(), "b.jsonl.zst", &zstd::encode_all(&body[..], 3).unwrap());
    let params = json!({"text_field": "meta.content", "id_field": "doc", "lang_field": "l", "dedup": false});
    let (docs, stats, _) = run(params, &[&a, &b]).unwrap();
    assert_eq!(texts(&docs), vec!["hello", "habari", "hello", "habari"]);
    assert_eq!(docs[1].id, "8");
    assert_eq!(docs[1].lang, "sw");
    assert_eq!(stats["languages"]["sw"]["documents"], 2);
}

#[test]
fn json_array_csv_tsv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let json_file = write(dir.path(), "a.json", br#"[{"text": "one"}, {"text": "two"}]"#);
    let csv_file = write(dir.path(), "b.csv", b"id,text\nx1,\"three, with comma\"\n");
    let tsv_file = write(dir.path(), "c.tsv", b"text\tid\nfour\tx2\n");
    let (docs, _, out) = run(json!({"id_field": "id"}), &[&json_file, &csv_file, &tsv_file]).unwrap();
    assert_eq!(texts(&docs), vec!["one", "two", "three, with comma", "four"]);
    assert_eq!(docs[2].id, "x1");
    // A corpus artifact is itself Parquet input (column mapping by name).
    let parquet_in = dir.path().join("again.parquet");
    std::fs::copy(out.path.join("corpus.parquet"), &parquet_in).unwrap();
    let (again, _, _) = run(json!({"id_field": "id"}), &[&parquet_in]).unwrap();
    assert_eq!(texts(&again), texts(&docs));
    assert_eq!(again[2].id, "x1");
}

#[test]
fn malformed_records_name_file_and_line_or_are_counted_when_lenient() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = write(
        dir.path(),
        "bad.jsonl",
        b"{\"text\": \"ok\"}\n{\"text\": oops}\n{\"body\": \"no text\"}\n",
    );
    let err = run(json!({}), &[&jsonl]).err().unwrap().to_string();
    assert!(err.contains("bad.jsonl:2: invalid JSON"), "{err}");
    let (docs, stats, _) = run(json!({"lenient": true}), &[&jsonl]).unwrap();
    assert_eq!(texts(&docs), vec!["ok"]);
    assert_eq!(stats["dropped"]["malformed"], 1);
    assert_eq!(stats["dropped"]["missing_text"], 1);

    let missing = write(dir.path(), "m.jsonl", b"{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
    let err = run(json!({}), &[&missing]).err().unwrap().to_string();
    assert!(err.contains("m.jsonl:2: record has no text field `text`"), "{err}");

    let csv = write(dir.path(), "bad.csv", b"id,text\n1,fine\n2,too,many\n");
    let err = run(json!({}), &[&csv]).err().unwrap().to_string();
    assert!(err.contains("bad.csv:3: row has 3 columns, the header has 2"), "{err}");

    let err = run(json!({}), &[&dir.path().join("absent.txt")])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("absent.txt"), "{err}");
}

#[test]
fn invalid_utf8_is_counted_or_named_with_its_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "u.txt", b"good line\nbad \xff byte\n");
    let (docs, stats, _) = run(json!({"text_unit": "line"}), &[&f]).unwrap();
    assert_eq!(texts(&docs), vec!["good line"]);
    assert_eq!(stats["dropped"]["invalid_utf8"], 1);
    let err = run(json!({"text_unit": "line", "strict": true}), &[&f])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("u.txt:2: invalid UTF-8 at byte offset 14"), "{err}");
}

#[test]
fn cleaning_normalises_filters_and_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "c.txt",
        "ｆｕｌｌ  width\n\nshort\n\nsame text\n\nsame   text\n\n\u{0007}\n".as_bytes(),
    );
    let (docs, stats, _) = run(json!({"normalize": "nfkc", "min_chars": 6}), &[&f]).unwrap();
    assert_eq!(texts(&docs), vec!["full width", "same text"]);
    assert_eq!(stats["dropped"]["too_short"], 1);
    assert_eq!(stats["dropped"]["duplicate"], 1);
    assert_eq!(stats["dropped"]["empty"], 1);
    assert_eq!(stats["documents_in"], 5);
}

#[test]
fn language_id_drops_a_planted_foreign_paragraph() {
    let dir = tempfile::tempdir().unwrap();
    let hindi = std::fs::read_to_string(babelflow_stage::testing::package_dir().join("../../data/samples/text/hi.txt"))
        .unwrap();
    let planted = "The committee will publish its annual report on the state of the harbour next Tuesday morning.";
    let f = write(dir.path(), "hi.txt", format!("{hindi}\n\n{planted}\n").as_bytes());
    let (docs, stats, _) = run(json!({"lang": "hi", "langid": true}), &[&f]).unwrap();
    assert!(!texts(&docs).contains(&planted), "the English paragraph was kept");
    assert_eq!(stats["dropped"]["wrong_language"], 1, "{stats}");
    assert_eq!(docs.len(), hindi.split("\n\n").count(), "every Hindi paragraph is kept");
}

#[test]
fn near_duplicates_are_dropped_above_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let a = "The river flooded the lower town in the spring of that year, and the people moved their goats to the hills above the old mill for three weeks.";
    let b = "The river flooded the lower town in the spring of that year, and the people moved their goats to the hills above the old mill for four weeks.";
    let c =
        "A recipe for flatbread needs flour, water, salt and a very hot pan; knead for ten minutes and rest the dough.";
    let f = write(dir.path(), "n.txt", format!("{a}\n\n{b}\n\n{c}\n").as_bytes());
    let (docs, stats, _) = run(json!({"near_dup_threshold": 0.7}), &[&f]).unwrap();
    assert_eq!(texts(&docs), vec![a, c]);
    assert_eq!(stats["dropped"]["near_duplicate"], 1);
    let (docs, _, _) = run(json!({}), &[&f]).unwrap();
    assert_eq!(docs.len(), 3, "off unless asked for");
}

#[test]
fn langid_for_a_language_the_identifier_lacks_is_refused_before_running() {
    let k = ingest();
    let params = babelflow_stage::testing::params_for(k.params(), json!({"lang": "sw", "langid": true})).unwrap();
    let problems = k.check(&params);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].0, "lang");
    assert!(problems[0].1.contains("no model for `sw`"));
}

/// Writes a Parquet file whose `text` column has the given Arrow layout, as
/// polars (LargeUtf8, Utf8View), pandas (dictionary) or a binary-only
/// writer would.
fn parquet_with_layout(dir: &Path, name: &str, text: arrow_array::ArrayRef) -> PathBuf {
    use std::sync::Arc;
    let n = text.len();
    let ids: arrow_array::ArrayRef = Arc::new(arrow_array::Int64Array::from((0..n as i64).collect::<Vec<_>>()));
    let batch = arrow_array::RecordBatch::try_from_iter([("id", ids), ("text", text)]).unwrap();
    let path = dir.join(name);
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

#[test]
fn parquet_text_in_every_arrow_layout_is_ingested() {
    use arrow_array::types::Int32Type;
    use arrow_array::{BinaryArray, DictionaryArray, LargeStringArray, StringArray, StringViewArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..200).map(|i| format!("document number {i} in a layout")).collect();
    let strs: Vec<&str> = rows.iter().map(String::as_str).collect();
    let layouts: Vec<(&str, arrow_array::ArrayRef)> = vec![
        ("utf8", Arc::new(StringArray::from(strs.clone()))),
        ("large_utf8", Arc::new(LargeStringArray::from(strs.clone()))),
        ("utf8_view", Arc::new(StringViewArray::from(strs.clone()))),
        (
            "dictionary",
            Arc::new(strs.iter().copied().collect::<DictionaryArray<Int32Type>>()),
        ),
        (
            "binary",
            Arc::new(BinaryArray::from(strs.iter().map(|s| s.as_bytes()).collect::<Vec<_>>())),
        ),
    ];
    for (layout, column) in layouts {
        let file = parquet_with_layout(dir.path(), &format!("{layout}.parquet"), column);
        let (docs, stats, _) = run(json!({"lang": "en"}), &[&file]).unwrap_or_else(|e| panic!("{layout}: {e}"));
        assert_eq!(docs.len(), 200, "{layout}: {stats}");
        assert_eq!(docs[7].text, "document number 7 in a layout", "{layout}");
        // And the corpus artifact reads back through the same readers.
        let (_, _, out) = run(json!({"lang": "en"}), &[&file]).unwrap();
        let mut again = 0;
        read_corpus(&out.path.join("corpus.parquet"), &mut |_| {
            again += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(again, 200, "{layout}");
    }
}
