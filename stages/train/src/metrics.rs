//! Training metrics as long-format Parquet rows: `step, tokens, metric,
//! lang, value` (`loss`, `lr`, `tokens_per_s` with an empty lang;
//! `val_loss`, `val_ppl`, `val_bits_per_char` per validation language; `grad_norm` when
//! clipping is on). The report reads them.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use babelflow_stage::StageError;
use parquet::arrow::ArrowWriter;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("tokens", DataType::UInt64, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

/// One metric value: `(step, tokens seen, metric, lang, value)`.
pub type Row = (u64, u64, String, String, f64);

/// Metrics of one training run, kept in memory (a few rows per step) so a
/// checkpoint can carry them, and written as Parquet when the run ends.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub rows: Vec<Row>,
}

impl Metrics {
    pub fn push(&mut self, step: u64, tokens: u64, metric: &str, lang: &str, value: f64) {
        self.rows
            .push((step, tokens, metric.to_string(), lang.to_string(), value));
    }

    pub fn write(&self, path: &Path) -> Result<(), StageError> {
        let fail = |e: &dyn std::fmt::Display| StageError::failed(format!("writing {}: {e}", path.display()));
        let file = File::create(path).map_err(|e| StageError::io(path, e))?;
        let mut writer = ArrowWriter::try_new(file, schema(), None).map_err(|e| fail(&e))?;
        let rows = &self.rows;
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(UInt64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())) as ArrayRef,
                Arc::new(UInt64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.3.as_str()).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
            ],
        )
        .map_err(|e| fail(&e))?;
        writer.write(&batch).map_err(|e| fail(&e))?;
        writer.close().map(|_| ()).map_err(|e| fail(&e))
    }
}
