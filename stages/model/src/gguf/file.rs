//! The GGUF container (llama.cpp's `gguf.md`): `GGUF`, a version (2 or 3),
//! the tensor and key-value counts, the key-values (typed metadata), the
//! tensor infos (name, dims innermost first, ggml type, offset), padding to
//! `general.alignment` (default 32), then the tensor data, each tensor at
//! its offset from the start of the data. Little-endian throughout.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::quants::{dequantize, GgmlType};
use crate::ModelError;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) if v >= 0 => Some(v as u64),
            MetaValue::I16(v) if v >= 0 => Some(v as u64),
            MetaValue::I32(v) if v >= 0 => Some(v as u64),
            MetaValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::Array(_) => 9,
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (a row's length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// The shape in HF's (row-major, outermost first) order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file, memory-mapped; tensors are read when asked for.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    map: memmap2::Mmap,
}

/// A cursor over the mapped bytes that names the file and offset in errors.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
    /// Which entry is being read (`the header lists 21 tensors; reading
    /// tensor 21 (after ...)`): a damaged count otherwise surfaces only
    /// as "N bytes run past the end".
    entry: String,
}

impl Reader<'_> {
    fn fail(&self, what: &str) -> ModelError {
        ModelError::Weights {
            path: self.path.to_path_buf(),
            message: format!("not a readable GGUF file: {}{what}", self.entry),
        }
    }

    /// `step` with its errors naming `entry` as what was being read.
    fn within<T>(
        &mut self,
        entry: String,
        step: impl FnOnce(&mut Self) -> Result<T, ModelError>,
    ) -> Result<T, ModelError> {
        self.entry = format!("{entry}: ");
        let result = step(self);
        self.entry.clear();
        result
    }

    fn take(&mut self, n: usize) -> Result<&[u8], ModelError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            self.fail(&format!(
                "{n} bytes from byte {} run past the end of the file ({} bytes)",
                self.at,
                self.bytes.len()
            ))
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ModelError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Result<String, ModelError> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| self.fail(&format!("a string that is not UTF-8 before byte {}", self.at)))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue, ModelError> {
        let b8 = |r: &mut Self| -> Result<[u8; 8], ModelError> { Ok(r.take(8)?.try_into().expect("8 bytes")) };
        Ok(match ty {
            0 => MetaValue::U8(self.take(1)?[0]),
            1 => MetaValue::I8(self.take(1)?[0] as i8),
            2 => {
                let b = self.take(2)?;
                MetaValue::U16(u16::from_le_bytes([b[0], b[1]]))
            }
            3 => {
                let b = self.take(2)?;
                MetaValue::I16(i16::from_le_bytes([b[0], b[1]]))
            }
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(self.u32()? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32()?)),
            7 => MetaValue::Bool(self.take(1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(self.fail("arrays nested too deep"));
                }
                let item = self.u32()?;
                let n = self.u64()? as usize;
                if n > self.bytes.len() {
                    return Err(self.fail(&format!("an array of {n} items, more than the file has bytes")));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(b8(self)?)),
            11 => MetaValue::I64(i64::from_le_bytes(b8(self)?)),
            12 => MetaValue::F64(f64::from_le_bytes(b8(self)?)),
            other => return Err(self.fail(&format!("metadata value type {other} before byte {}", self.at))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
        let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| ModelError::Weights {
            path: path.to_path_buf(),
            message,
        };
        let len = file.metadata().map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if len.len() == 0 {
            return Err(bad("empty file (0 bytes); a GGUF file starts with `GGUF`".into()));
        }
        // SAFETY: the file is only read while the map lives; babelflow
        // never writes a file it has mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let magic = &map[..map.len().min(4)];
        if magic != b"GGUF" {
            return Err(bad(format!(
                "not a GGUF file (magic `{}`, expected `GGUF`)",
                magic.escape_ascii()
            )));
        }
        let mut r = Reader {
            bytes: &map,
            at: 4,
            path,
            entry: String::new(),
        };
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.fail(&format!("GGUF version {version} (babelflow reads 2 and 3)")));
        }
        let (n_tensors, n_kv) = (r.u64()?, r.u64()?);
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let what = format!("the header lists {n_kv} key-values; reading key-value {}", i + 1);
            let (key, value) = r.within(what, |r| {
                let key = r.string()?;
                let ty = r.u32()?;
                Ok((key.clone(), r.value(ty, 0)?))
            })?;
            metadata.insert(key, value);
        }
        // Each tensor description takes at least 28 bytes (an empty name,
        // one dimension, the type and the offset): a count the rest of the
        // file cannot hold is a damaged header, said before reading on.
        let room = (map.len() - r.at) as u64 / 28;
        if n_tensors > room {
            return Err(r.fail(&format!(
                "the header lists {n_tensors} tensors, and the {} bytes left after the key-values hold at most {room} tensor descriptions",
                map.len() - r.at
            )));
        }
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let what = match tensors.last() {
                Some(prev) => format!(
                    "the header lists {n_tensors} tensors; reading tensor {} (after `{}`)",
                    i + 1,
                    prev.name
                ),
                None => format!("the header lists {n_tensors} tensors; reading the first"),
            };
            let info = r.within(what, |r| {
                let name = r.string()?;
                let n_dims = r.u32()?;
                if n_dims > 4 {
                    return Err(r.fail(&format!("tensor `{name}` with {n_dims} dimensions")));
                }
                let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
                let ty_id = r.u32()?;
                let ty = GgmlType::from_id(ty_id).map_err(|e| r.fail(&format!("tensor `{name}`: {e}")))?;
                let offset = r.u64()?;
                Ok(TensorInfo { name, dims, ty, offset })
            })?;
            tensors.push(info);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a as usize,
                _ => return Err(bad(format!("general.alignment is {v:?}; it must be a power of two"))),
            },
        };
        let data_start = r.at.div_ceil(alignment) * alignment;
        let gguf = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            map,
        };
        gguf.check_layout(alignment)?;
        Ok(gguf)
    }

    /// llama.cpp's rule for the data section: tensors lie in the order of
    /// their descriptions, each at the running offset padded to
    /// `general.alignment`, and all inside the file. A tensor table that
    /// breaks it (a shifted or duplicated offset) would otherwise read
    /// another tensor's bytes, or bytes between two, as weights.
    fn check_layout(&self, alignment: usize) -> Result<(), ModelError> {
        let mut expected = 0u64;
        for t in &self.tensors {
            let fail = |m: String| ModelError::Weights {
                path: self.path.clone(),
                message: format!("tensor `{}`: {m}", t.name),
            };
            if t.offset != expected {
                let why = if !t.offset.is_multiple_of(alignment as u64) {
                    format!("not a multiple of general.alignment ({alignment})")
                } else if t.offset < expected {
                    "inside the tensors before it".to_string()
                } else {
                    "leaving a gap after the tensors before it".to_string()
                };
                return Err(fail(format!(
                    "its data offset is {}, expected {expected} ({why}): the tensor table is damaged",
                    t.offset
                )));
            }
            let n = self.bytes_of(t)?.len() as u64;
            expected = (expected + n).div_ceil(alignment as u64) * alignment as u64;
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's stored bytes, checked to lie within the file.
    pub fn bytes_of(&self, t: &TensorInfo) -> Result<&[u8], ModelError> {
        let fail = |m: String| ModelError::Weights {
            path: self.path.clone(),
            message: format!("tensor `{}`: {m}", t.name),
        };
        let n = t.ty.bytes_for(t.elements()).ok_or_else(|| {
            fail(format!(
                "{} values are not whole {} blocks of {}",
                t.elements(),
                t.ty.name(),
                t.ty.block().0
            ))
        })?;
        let start = (self.data_start as u64).saturating_add(t.offset);
        let end = start.saturating_add(n as u64);
        self.map.get(start as usize..end as usize).ok_or_else(|| {
            fail(format!(
                "its {n} bytes at data offset {} (bytes {start}..{end}) run past the end of the file ({} bytes): the file is cut short",
                t.offset,
                self.map.len()
            ))
        })
    }

    /// A tensor's values as f32, in HF's row-major order.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, ModelError> {
        Ok(dequantize(t.ty, self.bytes_of(t)?))
    }
}

/// A tensor to write: its name, dims (ggml order) and type.
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorOut {
    fn bytes(&self) -> u64 {
        let n = self.dims.iter().product::<u64>() as usize;
        self.ty.bytes_for(n).unwrap_or(n * 4) as u64
    }
}

/// Writes a GGUF v3 file: `metadata` in order, the infos of `tensors`,
/// then each tensor's bytes as `data(i)` makes them (one at a time, so a
/// model is never held whole), each aligned to 32 bytes.
pub fn write(
    path: &Path,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorOut],
    data: &mut dyn FnMut(usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<()> {
    const ALIGN: u64 = 32;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut head: Vec<u8> = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    fn value(buf: &mut Vec<u8>, v: &MetaValue) {
        match v {
            MetaValue::U8(x) => buf.push(*x),
            MetaValue::I8(x) => buf.push(*x as u8),
            MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
            MetaValue::Bool(x) => buf.push(*x as u8),
            MetaValue::Str(s) => string(buf, s),
            MetaValue::Array(items) => {
                let item = items.first().map_or(8, MetaValue::type_id);
                buf.extend_from_slice(&item.to_le_bytes());
                buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    value(buf, i);
                }
            }
        }
    }
    for (key, v) in metadata {
        string(&mut head, key);
        head.extend_from_slice(&v.type_id().to_le_bytes());
        value(&mut head, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.bytes()).div_ceil(ALIGN) * ALIGN;
    }
    let pad = |n: u64| vec![0u8; (n.div_ceil(ALIGN) * ALIGN - n) as usize];
    head.extend(pad(head.len() as u64));
    out.write_all(&head)?;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != t.bytes() {
            return Err(std::io::Error::other(format!(
                "tensor `{}`: {} bytes made, {} declared",
                t.name,
                bytes.len(),
                t.bytes()
            )));
        }
        out.write_all(&bytes)?;
        out.write_all(&pad(bytes.len() as u64))?;
    }
    out.flush()
}
