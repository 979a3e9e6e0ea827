//! The corpus artifact: Parquet with columns `id, lang, text, source`
//! (all strings, zstd), written in row groups as documents stream through,
//! so memory stays bounded whatever the corpus size.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use babelflow_stage::StageError;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

pub const CORPUS_COLUMNS: [&str; 4] = ["id", "lang", "text", "source"];

/// Flush a row group once this much text is buffered.
const ROW_GROUP_BYTES: usize = 32 << 20;
const ROW_GROUP_ROWS: usize = 65_536;

/// Streams rows of string columns into a Parquet file.
pub struct StringTableWriter {
    path: PathBuf,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    columns: Vec<Vec<String>>,
    buffered_bytes: usize,
    rows: u64,
}

fn parquet_err(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> StageError + '_ {
    move |e| StageError::failed(format!("writing {}: {e}", path.display()))
}

impl StringTableWriter {
    pub fn create(path: &Path, columns: &[&str]) -> Result<Self, StageError> {
        let schema: SchemaRef = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| Field::new(*c, DataType::Utf8, false))
                .collect::<Vec<_>>(),
        ));
        let file = File::create(path).map_err(|e| StageError::io(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_err(path))?;
        Ok(StringTableWriter {
            path: path.to_path_buf(),
            schema,
            writer,
            columns: vec![Vec::new(); columns.len()],
            buffered_bytes: 0,
            rows: 0,
        })
    }

    pub fn push(&mut self, row: &[&str]) -> Result<(), StageError> {
        for (col, value) in self.columns.iter_mut().zip(row) {
            self.buffered_bytes += value.len();
            col.push((*value).to_string());
        }
        self.rows += 1;
        if self.buffered_bytes >= ROW_GROUP_BYTES || self.columns[0].len() >= ROW_GROUP_ROWS {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<(), StageError> {
        if self.columns[0].is_empty() {
            return Ok(());
        }
        let arrays: Vec<Arc<dyn Array>> = self
            .columns
            .iter_mut()
            .map(|c| Arc::new(StringArray::from(std::mem::take(c))) as Arc<dyn Array>)
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| StageError::failed(format!("building a batch for {}: {e}", self.path.display())))?;
        self.writer.write(&batch).map_err(parquet_err(&self.path))?;
        self.writer.flush().map_err(parquet_err(&self.path))?;
        self.buffered_bytes = 0;
        Ok(())
    }

    /// Writes the remaining rows and the footer; returns the row count.
    pub fn finish(mut self) -> Result<u64, StageError> {
        self.flush_group()?;
        let path = self.path.clone();
        self.writer.close().map_err(parquet_err(&path))?;
        Ok(self.rows)
    }
}

/// One document of a corpus artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub lang: String,
    pub text: String,
    pub source: String,
}

/// Streams the documents of a corpus Parquet file, batch by batch.
pub fn read_corpus(path: &Path, each: &mut dyn FnMut(Document) -> Result<(), StageError>) -> Result<(), StageError> {
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(1024).build())
        .map_err(|e| StageError::input(path, None, format!("not a corpus Parquet file: {e}")))?;
    for batch in reader {
        let batch = batch.map_err(|e| StageError::input(path, None, format!("Parquet read error: {e}")))?;
        let col = |name: &str| -> Result<&StringArray, StageError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    StageError::input(
                        path,
                        None,
                        format!(
                            "not a corpus artifact: no string column `{name}` (expected {})",
                            CORPUS_COLUMNS.join(", ")
                        ),
                    )
                })
        };
        let (id, lang, text, source) = (col("id")?, col("lang")?, col("text")?, col("source")?);
        for r in 0..batch.num_rows() {
            each(Document {
                id: id.value(r).to_string(),
                lang: lang.value(r).to_string(),
                text: text.value(r).to_string(),
                source: source.value(r).to_string(),
            })?;
        }
    }
    Ok(())
}

/// One row of an `ingest-instructions` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub id: String,
    pub lang: String,
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// Every row of an `ingest-instructions` table (instruction sets are small).
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>, StageError> {
    let bad = |m: String| StageError::input(path, None, m);
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| bad(format!("not a Parquet file: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("Parquet read error: {e}")))?;
        let col = |name: &str| -> Result<&StringArray, StageError> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| {
                    bad(format!(
                        "no text column `{name}` (is this an ingest-instructions table?)"
                    ))
                })
        };
        let cols = [
            col("id")?,
            col("lang")?,
            col("instruction")?,
            col("input")?,
            col("output")?,
        ];
        let value = |c: usize, r: usize| {
            if cols[c].is_null(r) {
                String::new()
            } else {
                cols[c].value(r).to_string()
            }
        };
        for r in 0..batch.num_rows() {
            rows.push(Instruction {
                id: value(0, r),
                lang: value(1, r),
                instruction: value(2, r),
                input: value(3, r),
                output: value(4, r),
            });
        }
    }
    Ok(rows)
}
