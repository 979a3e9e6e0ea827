//! GGUF, llama.cpp's model file: read (any v2/v3 file, memory-mapped,
//! tensors dequantised on demand), converted to and from babelflow's HF
//! layout, and written.
//!
//! - `file`: the container — header, typed metadata, tensor infos,
//!   alignment — read and written;
//! - `quants`: the block formats (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
//!   Q5_1, Q4_K, Q5_K, Q6_K, Q8_K) dequantised, and Q8_0 quantised, as
//!   ggml's reference code does;
//! - `names`: llama.cpp tensor names ↔ HF names, and the Q/K row
//!   permutation `convert_hf_to_gguf.py` applies;
//! - `vocab`: `tokenizer.ggml.*` ↔ an HF tokenizer.json / tokenizer_config.json;
//! - `import` / `export`: a GGUF file ↔ an HF model folder.
//!
//! No crate was taken for the container: the ones that exist either only
//! read (gguf-rs) or come inside a whole ML framework (candle-core); the
//! format is small and llama.cpp's `gguf-py` documents it.

pub mod export;
pub mod file;
pub mod import;
pub mod names;
pub mod quants;
pub mod vocab;

pub use file::{GgufFile, MetaValue, TensorInfo};
pub use quants::GgmlType;
