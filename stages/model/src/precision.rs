//! The dtype a model is evaluated in. burn 0.22 has no automatic mixed
//! precision, so training computes in f32 everywhere; evaluation and
//! generation can hold the weights in bf16 or f16 (half the memory, and
//! faster matmuls on GPUs), with the numerically delicate parts — RMSNorm,
//! the attention softmax and the output logits — in f32, as transformers
//! does for LLaMA.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Device, Tensor};

use crate::Llama;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

/// The spellings a recipe may use (each `Precision::name`).
pub const PRECISIONS: &[&str] = &["f32", "bf16", "f16"];

impl Precision {
    pub fn parse(name: &str) -> Result<Precision, String> {
        ALL.into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| format!("unknown precision `{name}` (one of {})", PRECISIONS.join(", ")))
    }

    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// An error naming the backend when `device` cannot compute in this
    /// precision (wgpu's WGSL shaders have no bf16, for one); burn would
    /// otherwise fail inside a kernel compiler on the first operation.
    pub fn check_device(self, device: &Device, backend: &str) -> Result<(), String> {
        if device.supports_dtype(self.dtype()) {
            return Ok(());
        }
        let works: Vec<&str> = ALL
            .into_iter()
            .filter(|p| device.supports_dtype(p.dtype()))
            .map(Precision::name)
            .collect();
        Err(format!(
            "precision `{}` is not supported on {backend}; it supports {}",
            self.name(),
            works.join(", ")
        ))
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The model with every weight in this precision.
    pub fn apply(self, model: Llama) -> Llama {
        if self == Precision::F32 {
            return model;
        }
        model.map(&mut CastWeights(self.dtype()))
    }
}

struct CastWeights(DType);

impl ModuleMapper for CastWeights {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `x` in `dtype`, unchanged (no copy, no graph node) when it already is.
pub fn in_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_computes_in_every_precision() {
        let device = Device::flex();
        for name in PRECISIONS {
            let p = Precision::parse(name).unwrap();
            assert_eq!(p.name(), *name);
            assert_eq!(p.check_device(&device, "cpu"), Ok(()));
        }
        let err = Precision::parse("fp8").unwrap_err();
        assert!(err.contains("`fp8`") && err.contains("f32, bf16, f16"), "{err}");
    }
}
