//! Writing safetensors files one tensor at a time: the header first (all
//! shapes are known in advance), then each tensor's bytes as they are made,
//! so a 7B checkpoint is never held whole in memory.

use std::io::Write;
use std::path::Path;

use safetensors::tensor::Dtype;
use serde_json::{json, Value};

/// Writes a safetensors file tensor by tensor: the header first (all
/// shapes known in advance), then each tensor's bytes in the same order.
pub struct SafetensorsWriter {
    pub out: std::io::BufWriter<std::fs::File>,
}

impl SafetensorsWriter {
    pub fn create(path: &Path, tensors: &[(String, Vec<usize>)], dtype: Dtype) -> std::io::Result<Self> {
        let (stored, width) = (dtype.to_string(), dtype.bitsize() / 8);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0usize;
        for (name, shape) in tensors {
            let n = shape.iter().product::<usize>() * width;
            header.insert(
                name.clone(),
                json!({"dtype": stored, "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let mut text = serde_json::to_vec(&Value::Object(header)).map_err(std::io::Error::other)?;
        text.resize(text.len().div_ceil(8) * 8, b' ');
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        out.write_all(&(text.len() as u64).to_le_bytes())?;
        out.write_all(&text)?;
        Ok(SafetensorsWriter { out })
    }
}
