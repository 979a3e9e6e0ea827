//! The corpus artifact: Parquet with columns `id, lang, text, source`
//! (all strings, zstd), written in row groups as documents stream through,
//! so memory stays bounded whatever the corpus size.

use std::fs::File;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use babelflow_stage::StageError;
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

/// One batch of a Parquet artifact, able to say which file and which
/// artifact it expected when a column is missing. Its text columns are
/// read as `Utf8` whatever layout the writer chose (see `parquet_in`).
pub struct TableBatch<'a> {
    pub batch: RecordBatch,
    texts: std::collections::HashMap<String, StringArray>,
    path: &'a Path,
    expected: &'a str,
}

impl TableBatch<'_> {
    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// A string column, or an error naming the file, the column and the
    /// artifact it should have been.
    pub fn text(&self, name: &str) -> Result<&StringArray, StageError> {
        self.texts
            .get(name)
            .ok_or_else(|| match self.batch.schema().field_with_name(name) {
                Ok(field) => self.error(format!("column `{name}` holds {}, not text", field.data_type())),
                Err(_) => self.error(format!("no text column `{name}`")),
            })
    }

    /// An error about this file, saying what it was expected to be.
    pub fn error(&self, message: impl std::fmt::Display) -> StageError {
        StageError::input(self.path, None, format!("{message} (expected {})", self.expected))
    }
}

/// A string cell; null reads as empty.
pub fn cell(column: &StringArray, row: usize) -> String {
    if column.is_null(row) {
        String::new()
    } else {
        column.value(row).to_string()
    }
}

/// Reads a Parquet artifact batch by batch; `expected` names what it should
/// be ("a corpus artifact (id, lang, text, source)") for error messages.
pub fn for_each_batch(
    path: &Path,
    expected: &str,
    each: &mut dyn FnMut(&TableBatch) -> Result<(), StageError>,
) -> Result<(), StageError> {
    for_batches_while(path, expected, &mut |b| each(b).map(|()| ControlFlow::Continue(())))
}

/// Data a read batch holds at most (but one row, whatever its size): what
/// a stage reading a table holds of it besides its own work. 1 MiB keeps
/// that small beside a model and still reads short rows 1024 at a time.
const READ_BATCH_BYTES: usize = 1 << 20;

/// [`for_each_batch`] that stops when `each` says `Break`.
fn for_batches_while(
    path: &Path,
    expected: &str,
    each: &mut dyn FnMut(&TableBatch) -> Result<ControlFlow<()>, StageError>,
) -> Result<(), StageError> {
    if !path.is_file() {
        return Err(StageError::input(
            path,
            None,
            format!("no such file (expected {expected})"),
        ));
    }
    let reader = crate::parquet_in::open_bounded(path, 1024, READ_BATCH_BYTES)
        .map_err(|e| StageError::input(path, None, format!("not a Parquet file: {e} (expected {expected})")))?;
    for batch in reader {
        let batch = batch.map_err(|e| StageError::input(path, None, format!("Parquet read error: {e}")))?;
        let mut texts = std::collections::HashMap::new();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            let text = crate::parquet_in::to_utf8(column)
                .map_err(|e| StageError::input(path, None, format!("column `{}`: {e}", field.name())))?;
            if let Some(text) = text {
                texts.insert(field.name().clone(), text);
            }
        }
        if each(&TableBatch {
            batch,
            texts,
            path,
            expected,
        })?
        .is_break()
        {
            break;
        }
    }
    Ok(())
}

/// Streams the documents of a corpus Parquet file, batch by batch.
pub fn read_corpus(path: &Path, each: &mut dyn FnMut(Document) -> Result<(), StageError>) -> Result<(), StageError> {
    read_corpus_head(path, usize::MAX, each).map(|_| ())
}

/// Streams the first `limit` documents of a corpus Parquet file (reading
/// no further than the batch they end in); returns how many it read.
pub fn read_corpus_head(
    path: &Path,
    limit: usize,
    each: &mut dyn FnMut(Document) -> Result<(), StageError>,
) -> Result<usize, StageError> {
    let expected = format!("a corpus artifact: {}", CORPUS_COLUMNS.join(", "));
    let mut read = 0;
    for_batches_while(path, &expected, &mut |b| {
        let (id, lang, text, source) = (b.text("id")?, b.text("lang")?, b.text("text")?, b.text("source")?);
        for r in 0..b.num_rows() {
            if read == limit {
                return Ok(ControlFlow::Break(()));
            }
            read += 1;
            each(Document {
                id: id.value(r).to_string(),
                lang: lang.value(r).to_string(),
                text: text.value(r).to_string(),
                source: source.value(r).to_string(),
            })?;
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(read)
}

/// One row of an `ingest-instructions` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub id: String,
    pub lang: String,
    pub instruction: String,
    pub input: String,
    pub output: String,
    /// A conversation's turns as (role, content), in order; empty for a
    /// single instruction.
    pub turns: Vec<(String, String)>,
}

/// The `turns` cell: a JSON list of `{role, content}` (empty when absent).
fn parse_turns(cell: &str) -> Vec<(String, String)> {
    serde_json::from_str::<Vec<serde_json::Value>>(cell)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| Some((t["role"].as_str()?.to_string(), t["content"].as_str()?.to_string())))
        .collect()
}

/// Every row of an `ingest-instructions` table (instruction sets are small).
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>, StageError> {
    let mut rows = Vec::new();
    for_each_batch(path, "an ingest-instructions table", &mut |b| {
        let (id, lang) = (b.text("id")?, b.text("lang")?);
        let (instruction, input, output) = (b.text("instruction")?, b.text("input")?, b.text("output")?);
        // Tables written before conversations were kept have no `turns`.
        let turns = b.text("turns").ok();
        for r in 0..b.num_rows() {
            rows.push(Instruction {
                id: cell(id, r),
                lang: cell(lang, r),
                instruction: cell(instruction, r),
                input: cell(input, r),
                output: cell(output, r),
                turns: turns.map(|t| parse_turns(&cell(t, r))).unwrap_or_default(),
            });
        }
        Ok(())
    })?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corpus table of `rows` documents of `bytes` bytes each.
    fn corpus(dir: &Path, rows: usize, bytes: usize) -> PathBuf {
        let path = dir.join(format!("{rows}x{bytes}.parquet"));
        let mut writer = StringTableWriter::create(&path, &CORPUS_COLUMNS).unwrap();
        for i in 0..rows {
            let text = format!("{i:08} {}", "x".repeat(bytes - 9));
            writer.push(&[&i.to_string(), "en", &text, "test"]).unwrap();
        }
        writer.finish().unwrap();
        path
    }

    fn batch_sizes(path: &Path) -> Vec<usize> {
        let mut sizes = Vec::new();
        for_each_batch(path, "a corpus", &mut |b| {
            sizes.push(b.num_rows());
            Ok(())
        })
        .unwrap();
        sizes
    }

    #[test]
    fn long_documents_are_read_a_few_at_a_time_and_short_ones_1024_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        // 300 chapters of 20 KB: about 1 MiB a batch, not 6 MB.
        let long = corpus(dir.path(), 300, 20_000);
        let sizes = batch_sizes(&long);
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert!(sizes.iter().all(|&n| (30..=52).contains(&n)), "{sizes:?}");
        let mut ids = Vec::new();
        read_corpus(&long, &mut |doc| {
            assert!(doc.text.starts_with(&format!("{:08}", ids.len())));
            ids.push(doc.id);
            Ok(())
        })
        .unwrap();
        assert_eq!(ids, (0..300).map(|i| i.to_string()).collect::<Vec<_>>());

        // 3000 sentences of 40 bytes: 1024 a batch, as before.
        let short = corpus(dir.path(), 3000, 40);
        assert_eq!(batch_sizes(&short), [1024, 1024, 952]);

        // One document larger than a batch's bytes is still read, alone.
        let huge = corpus(dir.path(), 3, 1_500_000);
        assert_eq!(batch_sizes(&huge), [1, 1, 1]);
    }
}
