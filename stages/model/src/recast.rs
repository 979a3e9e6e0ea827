//! `import-model`'s `dtype:` on an HF folder: the checkpoint's weight files
//! rewritten with every tensor in the asked dtype (f32 or bf16), one tensor
//! at a time, under the same file names so an index stays valid. A folder
//! already in that dtype is copied as it is.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

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

/// The name transformers gives `dtype` in `config.json`'s `torch_dtype`.
pub fn torch_name(dtype: &str) -> &'static str {
    if dtype == "bf16" {
        "bfloat16"
    } else {
        "float32"
    }
}

/// True when every tensor of `files` is stored as `dtype` already.
pub fn already(files: &[PathBuf], dtype: &str) -> Result<bool, ModelError> {
    let want = if dtype == "bf16" { Dtype::BF16 } else { Dtype::F32 };
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
/// `dtype` (`f32` or `bf16`); f32 → bf16 rounds to nearest even, as
/// torch's `.to(torch.bfloat16)` does.
pub fn recast(
    files: &[PathBuf],
    out: &Path,
    dtype: &str,
    progress: &dyn Fn(usize, usize),
) -> Result<Recast, ModelError> {
    let (st_name, width, want) = match dtype {
        "bf16" => ("BF16", 2, Dtype::BF16),
        _ => ("F32", 4, Dtype::F32),
    };
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
        let target = out.join(file.file_name().unwrap_or_default());
        let mut writer = SafetensorsWriter::create(&target, &listing, st_name, width).map_err(io(&target))?;
        for (name, view) in &views {
            let values: Vec<f32> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(ModelError::Weights {
                        path: file.clone(),
                        message: format!("tensor `{name}` has dtype {other:?}; babelflow reads f32, f16 and bf16"),
                    })
                }
            };
            if view.dtype() == want {
                done.kept += 1;
            } else {
                done.converted += 1;
            }
            let out_bytes: Vec<u8> = match width {
                2 => values.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
                _ => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
            };
            std::io::Write::write_all(&mut writer.out, &out_bytes).map_err(io(&target))?;
            done.bytes += out_bytes.len() as u64;
        }
        std::io::Write::flush(&mut writer.out).map_err(io(&target))?;
    }
    progress(files.len(), files.len());
    Ok(done)
}
