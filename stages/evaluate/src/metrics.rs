//! Evaluation results as long-format Parquet rows — `model, stage, lang,
//! task, metric, value, n` — so variants of a recipe stack into one table.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use babelflow_stage::StageError;
use parquet::arrow::ArrowWriter;

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub lang: String,
    pub task: String,
    pub metric: String,
    pub value: f64,
    /// How many items (documents, questions, responses) the value covers.
    pub n: u64,
}

#[derive(Debug, Default)]
pub struct EvalMetrics {
    pub rows: Vec<Row>,
}

impl EvalMetrics {
    pub fn push(&mut self, lang: &str, task: &str, metric: &str, value: f64, n: u64) {
        self.rows.push(Row {
            lang: lang.into(),
            task: task.into(),
            metric: metric.into(),
            value,
            n,
        });
    }

    /// The value of one metric, for tests and stats.
    pub fn get(&self, lang: &str, task: &str, metric: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.lang == lang && r.task == task && r.metric == metric)
            .map(|r| r.value)
    }

    pub fn write(&self, path: &Path, model: &str, stage: &str) -> Result<(), StageError> {
        let fail = |e: &dyn std::fmt::Display| StageError::failed(format!("writing {}: {e}", path.display()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("model", DataType::Utf8, false),
            Field::new("stage", DataType::Utf8, false),
            Field::new("lang", DataType::Utf8, false),
            Field::new("task", DataType::Utf8, false),
            Field::new("metric", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("n", DataType::UInt64, false),
        ]));
        let r = &self.rows;
        let constant = |v: &str| Arc::new(StringArray::from(vec![v; r.len()])) as ArrayRef;
        let text = |f: fn(&Row) -> &str| Arc::new(StringArray::from(r.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                constant(model),
                constant(stage),
                text(|x| &x.lang),
                text(|x| &x.task),
                text(|x| &x.metric),
                Arc::new(Float64Array::from(r.iter().map(|x| x.value).collect::<Vec<_>>())),
                Arc::new(UInt64Array::from(r.iter().map(|x| x.n).collect::<Vec<_>>())),
            ],
        )
        .map_err(|e| fail(&e))?;
        let file = File::create(path).map_err(|e| StageError::io(path, e))?;
        let mut writer = ArrowWriter::try_new(file, schema, None).map_err(|e| fail(&e))?;
        writer.write(&batch).map_err(|e| fail(&e))?;
        writer.close().map(|_| ()).map_err(|e| fail(&e))
    }
}
