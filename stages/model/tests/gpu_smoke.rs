//! The GPU path on whatever Vulkan driver this machine has (NVIDIA's, or
//! Mesa's lavapipe on a CPU-only machine): a forward pass on `wgpu` agrees
//! with the CPU. Built only with `--features vulkan`:
//!
//!   cargo test -p babelflow-model --features vulkan --test gpu_smoke -- --ignored --nocapture
//!
//! Without a Vulkan loader and driver it says it skipped. Ignored by default:
//! Mesa's lavapipe (Debian 12's 22.3.6 and bookworm-backports' 25.0.7, both
//! on LLVM 15) segfaults inside libvulkan_lvp.so on the first model kernel
//! (a one-element tensor works), and a segfault cannot be turned into a skip.
//! Run it where a hardware Vulkan driver is installed.
#![cfg(feature = "vulkan")]

use babelflow_model::burn::tensor::{Int, Tensor, TensorData};
use babelflow_model::{device, hf, Rope};

fn vulkan_installed() -> bool {
    let loader = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
        "/usr/lib64/libvulkan.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    let icd = std::env::var_os("VK_DRIVER_FILES").is_some()
        || ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
            .iter()
            .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    loader && icd
}

#[test]
#[ignore = "needs a hardware Vulkan driver (lavapipe segfaults on cubecl kernels)"]
fn a_forward_pass_on_wgpu_matches_the_cpu() {
    if !vulkan_installed() {
        eprintln!("skipped: no Vulkan loader and driver (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let fixture = babelflow_stage::testing::package_dir().join("tests/fixtures/tiny-gqa");
    let ids: Vec<i64> = vec![1, 5, 9, 2, 7, 3, 4, 8];
    let logits_on = |backend: &str| -> Vec<f32> {
        let (device, _) = device::select(backend, 0).unwrap();
        let (config, model) = hf::load(&fixture, &device).unwrap();
        let rope = Rope::new(&config, ids.len(), &device).unwrap();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device);
        model
            .forward(x, &rope, None)
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap()
    };
    let (cpu, gpu) = (logits_on("cpu"), logits_on("wgpu"));
    let worst = cpu.iter().zip(&gpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "wgpu and CPU logits differ by {worst}");
}
