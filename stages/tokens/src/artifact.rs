//! The token artifact: a flat, memory-mappable binary of token ids (like
//! nanoGPT's / llm.c's `.bin` files) plus a Parquet document index.
//!
//! `tokens.bin` layout (little-endian):
//! ```text
//! 0   8  magic  "BFTOKENS"
//! 8   4  format version (1)
//! 12  4  bytes per id (2 = u16, 4 = u32)
//! 16  4  vocabulary size
//! 20  4  reserved (0)
//! 24  8  number of tokens
//! 32 32  blake3 of the tokenizer.json the ids came from
//! 64 ..  ids
//! ```
//! `index.parquet`: `id, lang, offset, n_tokens, n_chars, n_bytes` per
//! document, `offset` counted in tokens from the start of the ids.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use babelflow_stage::StageError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

pub const MAGIC: &[u8; 8] = b"BFTOKENS";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id_bytes: u32,
    pub vocab_size: u32,
    pub n_tokens: u64,
    pub tokenizer_hash: [u8; 32],
}

impl Header {
    /// u16 when every id fits, else u32.
    pub fn id_bytes_for(vocab_size: u32) -> u32 {
        if vocab_size <= u16::MAX as u32 + 1 {
            2
        } else {
            4
        }
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.id_bytes.to_le_bytes());
        h[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        h[24..32].copy_from_slice(&self.n_tokens.to_le_bytes());
        h[32..64].copy_from_slice(&self.tokenizer_hash);
        h
    }
}

/// Streams ids into `tokens.bin`; the header is written last, when the count is known.
pub struct TokenWriter {
    path: PathBuf,
    out: BufWriter<File>,
    header: Header,
}

impl TokenWriter {
    pub fn create(path: &Path, vocab_size: u32, tokenizer_hash: [u8; 32]) -> Result<Self, StageError> {
        let mut file = File::create(path).map_err(|e| StageError::io(path, e))?;
        file.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| StageError::io(path, e))?;
        Ok(TokenWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            header: Header {
                id_bytes: Header::id_bytes_for(vocab_size),
                vocab_size,
                n_tokens: 0,
                tokenizer_hash,
            },
        })
    }

    pub fn write(&mut self, ids: &[u32]) -> Result<(), StageError> {
        let io = |e| StageError::io(&self.path, e);
        if self.header.id_bytes == 2 {
            let mut buf = Vec::with_capacity(ids.len() * 2);
            for &id in ids {
                buf.extend_from_slice(&(id as u16).to_le_bytes());
            }
            self.out.write_all(&buf).map_err(io)?;
        } else {
            let mut buf = Vec::with_capacity(ids.len() * 4);
            for &id in ids {
                buf.extend_from_slice(&id.to_le_bytes());
            }
            self.out.write_all(&buf).map_err(io)?;
        }
        self.header.n_tokens += ids.len() as u64;
        Ok(())
    }

    pub fn tokens_written(&self) -> u64 {
        self.header.n_tokens
    }

    pub fn finish(self) -> Result<Header, StageError> {
        let path = self.path.clone();
        let io = |e| StageError::io(&path, e);
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| StageError::io(&path, e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&self.header.encode()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(self.header)
    }
}

/// A token file opened by memory map, header checked.
pub struct TokenFile {
    pub header: Header,
    map: memmap2::Mmap,
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<Self, StageError> {
        let bad = |msg: String| StageError::input(path, None, format!("not a valid token artifact: {msg}"));
        let file = File::open(path).map_err(|e| StageError::io(path, e))?;
        // SAFETY: the store never modifies a finished artifact in place; files
        // are written in a temporary folder and renamed in whole.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| StageError::io(path, e))?;
        if map.len() < HEADER_LEN {
            return Err(bad(format!(
                "{} bytes is shorter than the {HEADER_LEN}-byte header",
                map.len()
            )));
        }
        if &map[..8] != MAGIC {
            return Err(bad("wrong magic (expected BFTOKENS)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap_or([0; 4]));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!("format version {version}, this babelflow reads {VERSION}")));
        }
        let id_bytes = u32_at(12);
        if id_bytes != 2 && id_bytes != 4 {
            return Err(bad(format!("id width {id_bytes} bytes (expected 2 or 4)")));
        }
        let n_tokens = u64::from_le_bytes(map[24..32].try_into().unwrap_or([0; 8]));
        let expected = HEADER_LEN as u64 + n_tokens * id_bytes as u64;
        if map.len() as u64 != expected {
            return Err(bad(format!(
                "header says {n_tokens} tokens ({expected} bytes) but the file has {} bytes (truncated or corrupt)",
                map.len()
            )));
        }
        let mut tokenizer_hash = [0u8; 32];
        tokenizer_hash.copy_from_slice(&map[32..64]);
        Ok(TokenFile {
            header: Header {
                id_bytes,
                vocab_size: u32_at(16),
                n_tokens,
                tokenizer_hash,
            },
            map,
        })
    }

    pub fn len(&self) -> usize {
        self.header.n_tokens as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> u32 {
        let data = &self.map[HEADER_LEN..];
        if self.header.id_bytes == 2 {
            u16::from_le_bytes([data[2 * i], data[2 * i + 1]]) as u32
        } else {
            u32::from_le_bytes(data[4 * i..4 * i + 4].try_into().unwrap_or([0; 4]))
        }
    }

    /// Ids `start..end` as u32.
    pub fn slice(&self, start: usize, end: usize) -> Vec<u32> {
        (start..end).map(|i| self.get(i)).collect()
    }
}

/// One row of the document index.
#[derive(Debug, Clone, PartialEq)]
pub struct DocEntry {
    pub id: String,
    pub lang: String,
    pub offset: u64,
    pub n_tokens: u64,
    pub n_chars: u64,
    pub n_bytes: u64,
}

fn index_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("n_tokens", DataType::UInt64, false),
        Field::new("n_chars", DataType::UInt64, false),
        Field::new("n_bytes", DataType::UInt64, false),
    ]))
}

pub struct IndexWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: Vec<DocEntry>,
}

impl IndexWriter {
    pub fn create(path: &Path) -> Result<Self, StageError> {
        let file = File::create(path).map_err(|e| StageError::io(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            .build();
        let writer = ArrowWriter::try_new(file, index_schema(), Some(props))
            .map_err(|e| StageError::failed(format!("writing {}: {e}", path.display())))?;
        Ok(IndexWriter {
            path: path.to_path_buf(),
            writer,
            rows: Vec::new(),
        })
    }

    pub fn push(&mut self, entry: DocEntry) -> Result<(), StageError> {
        self.rows.push(entry);
        if self.rows.len() >= 65_536 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let u64s = |f: fn(&DocEntry) -> u64| {
            Arc::new(UInt64Array::from(rows.iter().map(f).collect::<Vec<_>>())) as Arc<dyn Array>
        };
        let batch = RecordBatch::try_new(
            index_schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                )) as Arc<dyn Array>,
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.lang.as_str()).collect::<Vec<_>>(),
                )),
                u64s(|r| r.offset),
                u64s(|r| r.n_tokens),
                u64s(|r| r.n_chars),
                u64s(|r| r.n_bytes),
            ],
        )
        .map_err(|e| StageError::failed(format!("building the index batch: {e}")))?;
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

pub fn read_index(path: &Path) -> Result<Vec<DocEntry>, StageError> {
    let reader = babelflow_corpus::parquet_in::open(path, 8192)
        .map_err(|e| StageError::input(path, None, format!("not a token index: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| StageError::input(path, None, format!("token index read error: {e}")))?;
        let missing = |name: &str| {
            StageError::input(
                path,
                None,
                format!("token index has no column `{name}` of the right type"),
            )
        };
        let s = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| babelflow_corpus::parquet_in::to_utf8(c).ok().flatten())
                .ok_or_else(|| missing(name))
        };
        let u = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
                .ok_or_else(|| missing(name))
        };
        let (id, lang, offset, n_tokens, n_chars, n_bytes) = (
            s("id")?,
            s("lang")?,
            u("offset")?,
            u("n_tokens")?,
            u("n_chars")?,
            u("n_bytes")?,
        );
        for r in 0..batch.num_rows() {
            out.push(DocEntry {
                id: id.value(r).to_string(),
                lang: lang.value(r).to_string(),
                offset: offset.value(r),
                n_tokens: n_tokens.value(r),
                n_chars: n_chars.value(r),
                n_bytes: n_bytes.value(r),
            });
        }
    }
    Ok(out)
}
