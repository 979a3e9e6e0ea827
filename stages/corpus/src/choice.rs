//! The `ingest-choice` kind: multiple-choice exams → Parquet
//! `id, lang, subject, split, question, choices (list of strings), answer`.
//!
//! MMLU CSV: no header, `question, A, B, C, D, answer`, one file per subject
//! and split (`abstract_algebra_dev.csv`). C-Eval CSV: header
//! `id,question,A,B,C,D,answer[,explanation]`, files `{subject}_{split}.csv`
//! (the test split has no answers; they stay empty). Subject and split come
//! from the file name (`_dev`, `_val`, `_test`), else from the parent folder.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use parquet::arrow::ArrowWriter;
use serde_json::json;

use crate::read::{expand_paths, open};

pub struct IngestChoice;

const SPLITS: &[&str] = &["dev", "val", "validation", "test", "train", "auxiliary_train"];

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "format",
        ParamType::Choice(&["auto", "mmlu", "ceval"]),
        r#""auto""#,
        "`auto`: C-Eval when the first row is its header, else MMLU",
    ),
    ParamSpec::with_default(
        "lang",
        ParamType::Str,
        r#""en""#,
        "language of the questions (C-Eval: zh)",
    ),
];

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "files",
    required: true,
    many: true,
    doc: "exam CSV files, globs or folders",
}];

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("question", DataType::Utf8, false),
        Field::new(
            "choices",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("answer", DataType::Utf8, false),
    ]))
}

#[derive(Default)]
pub(crate) struct Rows {
    pub id: Vec<String>,
    pub subject: Vec<String>,
    pub split: Vec<String>,
    pub question: Vec<String>,
    pub choices: Vec<Vec<String>>,
    pub answer: Vec<String>,
}

/// (subject, split) from `abstract_algebra_dev.csv` or `dev/abstract_algebra.csv`.
fn subject_and_split(path: &Path) -> (String, String) {
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
        .trim_end_matches(".gz")
        .trim_end_matches(".csv")
        .to_string();
    for split in SPLITS {
        if let Some(subject) = stem.strip_suffix(&format!("_{split}")) {
            return (subject.to_string(), split.to_string());
        }
    }
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    (
        stem,
        if SPLITS.contains(&parent.as_str()) {
            parent
        } else {
            "test".into()
        },
    )
}

pub(crate) fn read_file(path: &Path, format: &str, rows: &mut Rows) -> Result<(), StageError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(open(path)?);
    let (subject, split) = subject_and_split(path);
    let mut is_ceval = format == "ceval";
    for (i, record) in reader.records().enumerate() {
        let record =
            record.map_err(|e| StageError::input(path, e.position().map(|p| p.line()), format!("CSV error: {e}")))?;
        let line = record.position().map(|p| p.line()).unwrap_or(i as u64 + 1);
        let cells: Vec<&str> = record.iter().collect();
        if i == 0 && format != "mmlu" && cells.first().is_some_and(|c| c.trim_start_matches('\u{feff}') == "id") {
            is_ceval = true;
            continue;
        }
        let (id, question, choices, answer) = if is_ceval {
            if cells.len() != 7 && cells.len() != 8 {
                return Err(StageError::input(
                    path,
                    Some(line),
                    format!(
                        "C-Eval row has {} columns; expected id,question,A,B,C,D,answer[,explanation]",
                        cells.len()
                    ),
                ));
            }
            (cells[0].to_string(), cells[1], &cells[2..6], cells[6])
        } else {
            if cells.len() != 6 {
                return Err(StageError::input(
                    path,
                    Some(line),
                    format!("MMLU row has {} columns; expected question,A,B,C,D,answer", cells.len()),
                ));
            }
            (format!("{subject}/{split}/{i}"), cells[0], &cells[1..5], cells[5])
        };
        let answer = answer.trim();
        if !answer.is_empty() && !["A", "B", "C", "D"].contains(&answer) {
            return Err(StageError::input(
                path,
                Some(line),
                format!("answer {answer:?} is not one of A, B, C, D"),
            ));
        }
        rows.id.push(id);
        rows.subject.push(subject.clone());
        rows.split.push(split.clone());
        rows.question.push(question.to_string());
        rows.choices.push(choices.iter().map(|c| c.to_string()).collect());
        rows.answer.push(answer.to_string());
    }
    Ok(())
}

impl StageKind for IngestChoice {
    fn name(&self) -> &'static str {
        "ingest-choice"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "MMLU / C-Eval CSV → Parquet id, lang, subject, split, question, choices, answer"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["questions.parquet".into(), "stats.json".into()]
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::ingest_choice(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let format = ctx.params.str("format")?;
        let lang = ctx.params.str("lang")?;
        let paths: Vec<PathBuf> = ctx.input("files").iter().map(|i| i.path.clone()).collect();
        let mut rows = Rows::default();
        for path in expand_paths(&paths)? {
            ctx.check_cancelled()?;
            read_file(&path, format, &mut rows)?;
        }
        let mut choices = ListBuilder::new(StringBuilder::new());
        for c in &rows.choices {
            for item in c {
                choices.values().append_value(item);
            }
            choices.append(true);
        }
        let n = rows.id.len();
        let strings = |v: &[String]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                strings(&rows.id),
                strings(&vec![lang.to_string(); n]),
                strings(&rows.subject),
                strings(&rows.split),
                strings(&rows.question),
                Arc::new(choices.finish()) as ArrayRef,
                strings(&rows.answer),
            ],
        )
        .map_err(|e| StageError::failed(format!("building the questions table: {e}")))?;
        let out = ctx.output("questions.parquet");
        let file = File::create(&out).map_err(|e| StageError::io(&out, e))?;
        let perr = |e: parquet::errors::ParquetError| StageError::failed(format!("writing {}: {e}", out.display()));
        let mut writer = ArrowWriter::try_new(file, schema(), None).map_err(perr)?;
        writer.write(&batch).map_err(perr)?;
        writer.close().map_err(perr)?;

        let mut per_subject = std::collections::BTreeMap::<String, std::collections::BTreeMap<String, u64>>::new();
        for (s, sp) in rows.subject.iter().zip(&rows.split) {
            *per_subject.entry(s.clone()).or_default().entry(sp.clone()).or_default() += 1;
        }
        let stats = json!({"questions": n, "lang": lang, "subjects": per_subject});
        ctx.write_json("stats.json", &stats)?;
        ctx.note("questions", n);
        Ok(())
    }
}
