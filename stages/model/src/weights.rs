//! Reading a checkpoint's tensors one at a time. The safetensors headers
//! are read first (names, dtypes, shapes, byte ranges); each tensor is then
//! read with one positioned read into a buffer reused for every tensor and
//! converted straight into the dtype the model holds it in. The model is
//! the only full copy of the weights in memory: loading peaks at the
//! model plus its largest tensor as stored, where reading whole files (or
//! converting all of them to f32 first) would have held the checkpoint
//! twice. The file is not memory-mapped either: mapped pages would count
//! against the process as the weights were read.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use half::{bf16, f16};

use crate::ModelError;

/// Where one tensor lies in which file.
struct Entry {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

pub struct Weights {
    files: Vec<(PathBuf, File)>,
    entries: HashMap<String, Entry>,
    source: PathBuf,
    /// The dtype each tensor (by checkpoint name) is converted to.
    target: HeldAs,
    buffer: Vec<u8>,
}

/// The dtype a tensor is held in, by its checkpoint name and rank.
pub type HeldAs = Box<dyn Fn(&str, usize) -> DType>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a safetensors header: 8 bytes of length, then JSON.
fn header(path: &Path, file: &File, index: usize, entries: &mut HashMap<String, Entry>) -> Result<(), ModelError> {
    let bad = |message: String| ModelError::Weights {
        path: path.to_path_buf(),
        message,
    };
    let size = file.metadata().map_err(io(path))?.len();
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)
        .map_err(|_| bad("not a safetensors file: shorter than its header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        return Err(bad(format!(
            "not a safetensors file: a header of {n} bytes in a file of {size}"
        )));
    }
    let mut text = vec![0u8; n as usize];
    file.read_exact_at(&mut text, 8).map_err(io(path))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a safetensors file: header: {e}")))?;
    let data_start = 8 + n;
    for (name, info) in json {
        if name == "__metadata__" {
            continue;
        }
        let field = |key: &str| {
            info.get(key)
                .ok_or_else(|| bad(format!("tensor `{name}`: no `{key}` in the header")))
        };
        let dtype = field("dtype")?.as_str().unwrap_or_default().to_string();
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
            .unwrap_or_default();
        let offsets: Vec<u64> = field("data_offsets")?
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        let [begin, end] = offsets[..] else {
            return Err(bad(format!("tensor `{name}`: data_offsets is not [begin, end]")));
        };
        if end < begin || data_start + end > size {
            return Err(bad(format!(
                "tensor `{name}`: bytes {begin}..{end} lie outside the file"
            )));
        }
        entries.insert(
            name,
            Entry {
                file: index,
                dtype,
                shape,
                start: data_start + begin,
                end: data_start + end,
            },
        );
    }
    Ok(())
}

impl Weights {
    /// Reads the headers of `files`; tensors are converted to `target`.
    pub fn open(source: &Path, files: &[PathBuf], target: DType) -> Result<Weights, ModelError> {
        Self::open_held_as(source, files, Box::new(move |_, _| target))
    }

    /// [`Weights::open`] with each tensor converted to `target(name)`: a
    /// training run holds what does not train in bf16 and the rest in f32.
    pub fn open_held_as(source: &Path, files: &[PathBuf], target: HeldAs) -> Result<Weights, ModelError> {
        let mut entries = HashMap::new();
        let mut opened = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(io(path))?;
            header(path, &file, i, &mut entries)?;
            opened.push((path.clone(), file));
        }
        Ok(Weights {
            files: opened,
            entries,
            source: source.to_path_buf(),
            target,
            buffer: Vec::new(),
        })
    }

    /// Reads tensor `name`, which must have `shape`, into `target` on `device`.
    pub fn take<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, ModelError> {
        let entry = self.entries.remove(name).ok_or_else(|| ModelError::Weights {
            path: self.source.clone(),
            message: format!("tensor `{name}` is missing"),
        })?;
        let (path, file) = &self.files[entry.file];
        if entry.shape != shape {
            return Err(ModelError::Weights {
                path: path.clone(),
                message: format!(
                    "tensor `{name}` has shape {:?}, the config implies {shape:?}",
                    entry.shape
                ),
            });
        }
        let count: usize = shape.iter().product();
        let width = match entry.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(ModelError::Weights {
                    path: path.clone(),
                    message: format!("tensor {name} has dtype {other}; babelflow reads F32, F16 and BF16"),
                })
            }
        };
        if (entry.end - entry.start) as usize != count * width {
            return Err(ModelError::Weights {
                path: path.clone(),
                message: format!(
                    "tensor `{name}` holds {} bytes, its shape and dtype need {}",
                    entry.end - entry.start,
                    count * width
                ),
            });
        }
        self.buffer.resize(count * width, 0);
        file.read_exact_at(&mut self.buffer, entry.start).map_err(io(path))?;
        let target = (self.target)(name, D);
        let data = convert(&self.buffer, &entry.dtype, target, shape.to_vec());
        Ok(Tensor::from_data(data, (device, target)))
    }

    /// Drops a tensor the model does not load (a tied head's copy).
    pub fn skip(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Checks that nothing but recomputed rotary tables was left unread.
    pub fn finish(&mut self) -> Result<(), ModelError> {
        self.entries.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
        match self.entries.keys().next() {
            Some(extra) => Err(ModelError::Weights {
                path: self.source.clone(),
                message: format!("unexpected tensor `{extra}` (not part of LlamaForCausalLM)"),
            }),
            None => Ok(()),
        }
    }
}

/// Little-endian `bytes` of `from` (F32, F16, BF16) as `to`, in a buffer
/// of its own that becomes the tensor's storage.
fn convert(bytes: &[u8], from: &str, to: DType, shape: Vec<usize>) -> TensorData {
    let f32s = |b: &[u8]| -> Vec<f32> {
        match from {
            "F32" => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    };
    match (from, to) {
        ("BF16", DType::BF16) => TensorData::new(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
            shape,
        ),
        ("F16", DType::F16) => TensorData::new(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
            shape,
        ),
        (_, DType::BF16) => TensorData::new(f32s(bytes).into_iter().map(bf16::from_f32).collect::<Vec<_>>(), shape),
        (_, DType::F16) => TensorData::new(f32s(bytes).into_iter().map(f16::from_f32).collect::<Vec<_>>(), shape),
        _ => TensorData::new(f32s(bytes), shape),
    }
}
