//! Reading documents out of the user's files: plain text (per file, line or
//! paragraph), JSONL/JSON, CSV/TSV and Parquet, with `.gz` and `.zst` opened
//! transparently. Each record carries where it came from (file, line) so
//! errors can name the place.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow_array::{Array, StringArray};
use babelflow_stage::StageError;
use serde_json::Value;

/// How a file's content is cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain text: the whole file is one document.
    TextFile,
    /// Plain text: every non-empty line is a document.
    TextLines,
    /// Plain text: blank-line-separated paragraphs are documents.
    TextParagraphs,
    Jsonl,
    Json,
    Csv,
    Tsv,
    Parquet,
}

impl Format {
    /// Picks a format from the file name (compression suffixes ignored);
    /// plain text files are cut by `text_unit`.
    pub fn detect(path: &Path, text_unit: Format) -> Format {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let name = name.trim_end_matches(".gz").trim_end_matches(".zst");
        match name.rsplit('.').next() {
            Some("jsonl" | "ndjson") => Format::Jsonl,
            Some("json") => Format::Json,
            Some("csv") => Format::Csv,
            Some("tsv") => Format::Tsv,
            Some("parquet") => Format::Parquet,
            _ => text_unit,
        }
    }
}

/// One record before cleaning. `fields` holds the whole JSON object / CSV row
/// so the caller can pick text, id and language fields.
#[derive(Debug, Clone)]
pub struct Record {
    pub fields: Value,
    /// 1-based line (text, JSONL, CSV, and where a JSON array's element
    /// starts) or row number (Parquet).
    pub line: u64,
}

/// Bytes of a file with `.gz`/`.zst` decompressed on the fly.
pub fn open(path: &Path) -> Result<Box<dyn Read>, StageError> {
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let name = path.to_string_lossy();
    Ok(if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(file).map_err(|e| StageError::io(path, e))?)
    } else {
        Box::new(file)
    })
}

/// Expands folders into the files under them (sorted), keeps files.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, StageError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| StageError::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            entries.sort();
            out.extend(expand_paths(&entries)?);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// What to do with bytes that are not UTF-8.
#[derive(Debug, Clone, Copy)]
pub struct Utf8Policy {
    pub strict: bool,
}

/// Calls `each` for every record of a file. `each` returns `Err` to stop.
/// Invalid UTF-8 is an error naming the byte offset under `strict`; otherwise
/// the record is passed as `None` so the caller can count it.
/// The 1-based line where the first value of a JSON text starts.
fn first_line(text: &str) -> u64 {
    let start = text.len() - text.trim_start().len();
    1 + text[..start].matches('\n').count() as u64
}

/// The 1-based line where each element of a top-level JSON array starts
/// (the text has already parsed as JSON): a message about the 2nd
/// conversation then points at its line, not at "2".
fn element_lines(text: &str) -> Vec<u64> {
    let (mut lines, mut line, mut depth) = (Vec::new(), 1u64, 0usize);
    let (mut in_string, mut escaped, mut expect_element) = (false, false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if expect_element && !c.is_whitespace() && c != ']' {
            lines.push(line);
            expect_element = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                expect_element = depth == 1 && c == '[';
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_element = true,
            _ => {}
        }
    }
    lines
}

pub fn for_each_record(
    path: &Path,
    format: Format,
    utf8: Utf8Policy,
    each: &mut dyn FnMut(Result<Record, RecordError>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    match format {
        Format::Parquet => return read_parquet(path, each),
        Format::Json => {
            let mut text = String::new();
            open(path)?
                .read_to_string(&mut text)
                .map_err(|e| StageError::input(path, None, format!("cannot read as UTF-8 JSON: {e}")))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| StageError::input(path, Some(e.line() as u64), format!("invalid JSON: {e}")))?;
            let (items, lines) = match value {
                Value::Array(items) => (items, element_lines(&text)),
                other => (vec![other], vec![first_line(&text)]),
            };
            for (i, fields) in items.into_iter().enumerate() {
                each(Ok(Record {
                    fields,
                    line: lines.get(i).copied().unwrap_or(i as u64 + 1),
                }))?;
            }
            return Ok(());
        }
        Format::Csv | Format::Tsv => return read_csv(path, format == Format::Tsv, each),
        _ => {}
    }
    let mut reader = BufReader::with_capacity(1 << 16, open(path)?);
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut offset = 0u64;
    let mut paragraph = String::new();
    let mut paragraph_line = 1u64;
    let mut whole = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| StageError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let line = match std::str::from_utf8(&buf) {
            Ok(s) => s.trim_end_matches(['\n', '\r']),
            Err(e) => {
                let at = offset + e.valid_up_to() as u64;
                if utf8.strict {
                    return Err(StageError::input(
                        path,
                        Some(line_no),
                        format!("invalid UTF-8 at byte offset {at}"),
                    ));
                }
                offset += n as u64;
                each(Err(RecordError::InvalidUtf8))?;
                continue;
            }
        };
        offset += n as u64;
        match format {
            Format::Jsonl => {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(line) {
                    Ok(fields) => each(Ok(Record { fields, line: line_no }))?,
                    Err(e) => each(Err(RecordError::Malformed {
                        line: line_no,
                        message: format!("invalid JSON: {e}"),
                    }))?,
                }
            }
            Format::TextLines => {
                if !line.trim().is_empty() {
                    each(Ok(Record {
                        fields: Value::String(line.to_string()),
                        line: line_no,
                    }))?;
                }
            }
            Format::TextParagraphs => {
                if line.trim().is_empty() {
                    if !paragraph.is_empty() {
                        each(Ok(Record {
                            fields: Value::String(std::mem::take(&mut paragraph)),
                            line: paragraph_line,
                        }))?;
                    }
                } else {
                    if paragraph.is_empty() {
                        paragraph_line = line_no;
                    } else {
                        paragraph.push('\n');
                    }
                    paragraph.push_str(line);
                }
            }
            _ => {
                whole.push_str(line);
                whole.push('\n');
            }
        }
    }
    if !paragraph.is_empty() {
        each(Ok(Record {
            fields: Value::String(paragraph),
            line: paragraph_line,
        }))?;
    }
    if format == Format::TextFile && !whole.trim().is_empty() {
        each(Ok(Record {
            fields: Value::String(whole),
            line: 1,
        }))?;
    }
    Ok(())
}

/// A record that could not be read; skipped and counted in lenient mode.
#[derive(Debug, Clone)]
pub enum RecordError {
    InvalidUtf8,
    Malformed { line: u64, message: String },
}

fn read_csv(
    path: &Path,
    tabs: bool,
    each: &mut dyn FnMut(Result<Record, RecordError>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(if tabs { b'\t' } else { b',' })
        .flexible(false)
        .from_reader(open(path)?);
    let headers = reader
        .headers()
        .map_err(|e| StageError::input(path, Some(1), format!("cannot read the header row: {e}")))?
        .clone();
    for row in reader.records() {
        match row {
            Ok(row) => {
                let line = row.position().map(|p| p.line()).unwrap_or(0);
                let fields = headers
                    .iter()
                    .zip(row.iter())
                    .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
                    .collect();
                each(Ok(Record {
                    fields: Value::Object(fields),
                    line,
                }))?;
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        format!("row has {len} columns, the header has {expected_len}")
                    }
                    csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_string(),
                    _ => e.to_string(),
                };
                each(Err(RecordError::Malformed { line, message }))?;
            }
        }
    }
    Ok(())
}

fn read_parquet(
    path: &Path,
    each: &mut dyn FnMut(Result<Record, RecordError>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    let reader = crate::parquet_in::open(path, 4096)
        .map_err(|e| StageError::input(path, None, format!("not a readable Parquet file: {e}")))?;
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| StageError::input(path, Some(row + 1), format!("Parquet read error: {e}")))?;
        let schema = batch.schema();
        // Only text columns (any string layout) are mapped; others are ignored.
        let mut columns: Vec<(String, StringArray)> = Vec::new();
        for (f, c) in schema.fields().iter().zip(batch.columns()) {
            let text = crate::parquet_in::to_utf8(c)
                .map_err(|e| StageError::input(path, Some(row + 1), format!("column `{}`: {e}", f.name())))?;
            if let Some(text) = text {
                columns.push((f.name().clone(), text));
            }
        }
        for r in 0..batch.num_rows() {
            row += 1;
            let fields = columns
                .iter()
                .filter(|(_, c)| !c.is_null(r))
                .map(|(name, c)| (name.clone(), Value::String(c.value(r).to_string())))
                .collect();
            each(Ok(Record {
                fields: Value::Object(fields),
                line: row,
            }))?;
        }
    }
    Ok(())
}

/// Follows a dotted path (`meta.content`) into a JSON value; a plain string
/// record (text formats) is its own text.
pub fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if let Value::String(_) = value {
        return Some(value);
    }
    let mut v = value;
    for key in path.split('.') {
        v = match v {
            Value::Object(m) => m.get(key)?,
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}
