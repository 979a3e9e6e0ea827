//! Training metrics as long-format Parquet rows: `step, tokens, metric,
//! lang, value` (`loss`, `lr`, `tokens_per_s` with an empty lang;
//! `val_loss`, `val_ppl` per validation language). The report reads them.

use std::fs::File;
use std::path::{Path, PathBuf};
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

pub struct MetricsWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: Vec<(u64, u64, String, String, f64)>,
}

impl MetricsWriter {
    pub fn create(path: &Path) -> Result<Self, StageError> {
        let file = File::create(path).map_err(|e| StageError::io(path, e))?;
        let writer = ArrowWriter::try_new(file, schema(), None)
            .map_err(|e| StageError::failed(format!("writing {}: {e}", path.display())))?;
        Ok(MetricsWriter {
            path: path.to_path_buf(),
            writer,
            rows: Vec::new(),
        })
    }

    pub fn push(&mut self, step: u64, tokens: u64, metric: &str, lang: &str, value: f64) -> Result<(), StageError> {
        self.rows
            .push((step, tokens, metric.to_string(), lang.to_string(), value));
        if self.rows.len() >= 8192 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
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
        .map_err(|e| StageError::failed(format!("building metrics: {e}")))?;
        self.writer
            .write(&batch)
            .map_err(|e| StageError::failed(format!("writing {}: {e}", self.path.display())))
    }

    pub fn finish(mut self) -> Result<(), StageError> {
        self.flush()?;
        let path = self.path.clone();
        self.writer
            .close()
            .map(|_| ())
            .map_err(|e| StageError::failed(format!("writing {}: {e}", path.display())))
    }
}
