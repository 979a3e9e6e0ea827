//! `import-model`'s `dtype:` on an HF folder: the checkpoint's weight files
//! rewritten with every tensor in the asked dtype (f32 or bf16), one tensor
//! at a time, under the same file names so an index stays valid. A folder
//! already in that dtype is copied as it is.

use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::disk_dtype::DiskDtype;
use crate::gguf::quants::{dequantize, encode_float, GgmlType};
use crate::safetensors_out::SafetensorsWriter;
use crate::ModelError;

/// What a recast did, for the stage's log and stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recast {
    /// Tensors whose dtype changed.
    pub converted: usize,
    /// Tensors already in the target dtype.
    pub kept: usize,
    /// Bytes of tensor data written (an index's `total_size`).
    pub bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn map(file: &Path) -> Result<memmap2::Mmap, ModelError> {
    let handle = std::fs::File::open(file).map_err(io(file))?;
    // SAFETY: read while the map lives; babelflow never writes a file it has mapped.
    unsafe { memmap2::Mmap::map(&handle) }.map_err(io(file))
}

/// True when every tensor of `files` is stored as `dtype` already.
pub fn already(files: &[PathBuf], dtype: DiskDtype) -> Result<bool, ModelError> {
    let want = dtype.safetensors();
    for file in files {
        let bytes = map(file)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Weights {
            path: file.clone(),
            message: format!("not a safetensors file: {e}"),
        })?;
        if st.tensors().iter().any(|(_, v)| v.dtype() != want) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes each of `files` into `out` (same file name) with every tensor as
/// `dtype`, with its codec (`DiskDtype::codec`); a tensor already in
/// `dtype` is copied byte for byte.
pub fn recast(
    files: &[PathBuf],
    out: &Path,
    dtype: DiskDtype,
    progress: &dyn Fn(usize, usize),
) -> Result<Recast, ModelError> {
    let target = dtype.codec();
    let mut done = Recast::default();
    for (n, file) in files.iter().enumerate() {
        progress(n, files.len());
        let bytes = map(file)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Weights {
            path: file.clone(),
            message: format!("not a safetensors file: {e}"),
        })?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let views: Vec<_> = names
            .iter()
            .map(|name| st.tensor(name).map(|v| (name.clone(), v)))
            .collect::<Result<_, _>>()
            .map_err(|e| ModelError::Weights {
                path: file.clone(),
                message: e.to_string(),
            })?;
        let listing: Vec<(String, Vec<usize>)> = views.iter().map(|(n, v)| (n.clone(), v.shape().to_vec())).collect();
        let target_path = out.join(file.file_name().unwrap_or_default());
        let mut writer =
            SafetensorsWriter::create(&target_path, &listing, dtype.safetensors()).map_err(io(&target_path))?;
        for (name, view) in &views {
            let stored = match view.dtype() {
                Dtype::F32 => GgmlType::F32,
                Dtype::F16 => GgmlType::F16,
                Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(ModelError::Weights {
                        path: file.clone(),
                        message: format!("tensor `{name}` has dtype {other:?}; babelflow reads f32, f16 and bf16"),
                    })
                }
            };
            let out_bytes = if stored == target {
                done.kept += 1;
                view.data().to_vec()
            } else {
                done.converted += 1;
                encode_float(target, &dequantize(stored, view.data()))
            };
            std::io::Write::write_all(&mut writer.out, &out_bytes).map_err(io(&target_path))?;
            done.bytes += out_bytes.len() as u64;
        }
        std::io::Write::flush(&mut writer.out).map_err(io(&target_path))?;
    }
    progress(files.len(), files.len());
    Ok(done)
}
