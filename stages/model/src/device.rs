//! Picking a burn 0.22 `Device` from a recipe's `backend:` / `device:`.
//!
//! `cpu` is burn's pure-Rust `flex` backend (in every build). `wgpu` and
//! `vulkan` need the `vulkan` cargo feature, `cuda` the `cuda` feature (which
//! downloads an LLVM bundle at build time, so it cannot build offline).
//! `auto` takes the best one compiled in: CUDA, then Vulkan/WGPU, then CPU;
//! `BURN_DEVICE=cpu|wgpu|vulkan|cuda` overrides what `auto` picks.

use burn::tensor::Device;

use crate::ModelError;

/// Backends compiled into this build, best first.
pub fn compiled() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
        v.push("wgpu");
    }
    v.push("cpu");
    v
}

/// The device for a request, and the name of the backend chosen.
pub fn select(backend: &str, index: usize) -> Result<(Device, String), ModelError> {
    let wanted = match backend {
        "auto" => std::env::var("BURN_DEVICE")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| compiled()[0].to_string()),
        other => other.to_string(),
    };
    let unavailable = |why: &str| ModelError::Backend {
        requested: wanted.clone(),
        message: format!("{why}; this build has: {}", compiled().join(", ")),
    };
    match wanted.as_str() {
        "cpu" | "flex" => Ok((Device::flex(), "cpu (flex)".into())),
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                return Ok((Device::cuda(index), format!("cuda:{index}")));
            }
            #[allow(unreachable_code)]
            Err(unavailable("babelflow was built without the `cuda` feature"))
        }
        "wgpu" | "vulkan" => {
            #[cfg(feature = "vulkan")]
            {
                let kind = burn::tensor::DeviceKind::DiscreteGpu(index);
                let device = if wanted == "vulkan" {
                    Device::vulkan(kind)
                } else {
                    Device::wgpu(kind)
                };
                return Ok((device, format!("{wanted}:{index}")));
            }
            #[allow(unreachable_code)]
            {
                let _ = index;
                Err(unavailable("babelflow was built without the `vulkan` feature"))
            }
        }
        other => Err(unavailable(&format!(
            "`{other}` is not a backend (cpu, wgpu, vulkan, cuda)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_missing_backends_are_named() {
        assert!(select("cpu", 0).is_ok());
        if !cfg!(feature = "cuda") {
            let err = select("cuda", 0).err().unwrap().to_string();
            assert!(
                err.contains("without the `cuda` feature") && err.contains("cpu"),
                "{err}"
            );
        }
        let err = select("tpu", 0).err().unwrap().to_string();
        assert!(err.contains("not a backend"), "{err}");
    }
}
