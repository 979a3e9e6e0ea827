//! The dtypes babelflow writes weights in, and every name each goes by:
//! a recipe's (`f32`, `bf16`, `f16`), transformers' (`config.json`'s
//! `torch_dtype`), safetensors', and the codec that encodes f32 values into
//! it. One table, so saving, importing and recasting agree.

use std::path::Path;

use safetensors::tensor::Dtype;

use crate::gguf::quants::GgmlType;

/// On-disk precision when saving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDtype {
    F32,
    F16,
    Bf16,
}

/// (dtype, recipe name, transformers' name, safetensors dtype, codec).
const TABLE: [(DiskDtype, &str, &str, Dtype, GgmlType); 3] = [
    (DiskDtype::F32, "f32", "float32", Dtype::F32, GgmlType::F32),
    (DiskDtype::Bf16, "bf16", "bfloat16", Dtype::BF16, GgmlType::BF16),
    (DiskDtype::F16, "f16", "float16", Dtype::F16, GgmlType::F16),
];

impl DiskDtype {
    fn row(self) -> &'static (DiskDtype, &'static str, &'static str, Dtype, GgmlType) {
        TABLE.iter().find(|row| row.0 == self).expect("every dtype has a row")
    }

    /// The dtype a recipe names (`f32`, `bf16`, `f16`).
    pub fn parse(name: &str) -> Option<DiskDtype> {
        TABLE.iter().find(|row| row.1 == name).map(|row| row.0)
    }

    /// The recipe's name for it.
    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// transformers' name, for `config.json`'s `torch_dtype` (and `dtype`).
    pub fn torch_name(self) -> &'static str {
        self.row().2
    }

    /// The safetensors dtype the weights are stored as.
    pub fn safetensors(self) -> Dtype {
        self.row().3
    }

    /// The codec that encodes f32 values as this dtype (bf16 rounds to
    /// nearest even, as torch's `.to(torch.bfloat16)` does).
    pub fn codec(self) -> GgmlType {
        self.row().4
    }

    /// The dtype a folder's `config.json` says its weights are stored in
    /// (`dtype`, as transformers 5 writes it, else `torch_dtype`); `None`
    /// when it names none or one babelflow does not write.
    pub fn of_folder(dir: &Path) -> Option<DiskDtype> {
        let text = std::fs::read(dir.join("config.json")).ok()?;
        Self::of_config(&serde_json::from_slice(&text).ok()?)
    }

    /// The dtype a `config.json`'s contents name (see [`DiskDtype::of_folder`]).
    pub fn of_config(config: &serde_json::Value) -> Option<DiskDtype> {
        let name = config.get("dtype").or_else(|| config.get("torch_dtype"))?.as_str()?;
        TABLE.iter().find(|row| row.2 == name).map(|row| row.0)
    }

    /// Names this dtype in a `config.json`'s contents, as `retag_dtype` does on disk.
    pub fn tag(self, config: &mut serde_json::Value) {
        config["torch_dtype"] = self.torch_name().into();
        if config.get("dtype").is_some() {
            config["dtype"] = self.torch_name().into();
        }
    }

    /// Bytes a value takes on disk.
    pub fn bytes(self) -> u64 {
        self.safetensors().bitsize() as u64 / 8
    }
}

impl std::fmt::Display for DiskDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_leads_back_to_its_dtype() {
        for (dtype, name, torch, stored, codec) in TABLE {
            assert_eq!(DiskDtype::parse(name), Some(dtype));
            assert_eq!(
                (dtype.torch_name(), dtype.safetensors(), dtype.codec()),
                (torch, stored, codec)
            );
            assert_eq!(
                codec.bytes_for(1),
                Some(stored.bitsize() / 8),
                "{name}: codec and storage agree on width"
            );
        }
        assert_eq!(DiskDtype::parse("fp8"), None);
    }
}
