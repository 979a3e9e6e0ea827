//! The GPU path on whatever Vulkan driver this machine has (NVIDIA's, or
//! Mesa's software lavapipe on a CPU-only machine) agrees with the CPU: a
//! forward pass, cached and batched generation, and the gradients training
//! takes. Built only with a GPU feature:
//!
//!   cargo test -p babelflow-model --features wgpu --test gpu_smoke --profile gpu-smoke -- --nocapture
//!
//! Each test says it skipped, and passes, where no Vulkan loader and driver
//! are installed, except under `CI=true`, where that is a failure (CI
//! installs Mesa's lavapipe). On GPUs the model runs burn's composed operations (the
//! fused kernels are CPU-only), so this is the check of that path.
//!
//! With `--features vulkan` the tests run on cubecl's SPIR-V compiler, and
//! only with a hardware driver: on lavapipe, which lacks
//! `VK_KHR_workgroup_memory_explicit_layout`, cubecl-spirv 0.11.3 declares
//! shared memory with a pointer-to-pointer type (spirv-val rejects it) and
//! the driver crashes on the first matrix product. The `wgpu` feature's WGSL
//! path has no such problem.
#![cfg(feature = "wgpu")]

use babelflow_model::burn::tensor::{Device, Int, Tensor, TensorData};
use babelflow_model::generate::{generate, generate_batch, Sampling};
use babelflow_model::{device, hf, loss, Llama, LlamaConfig, Rope};

/// The backend under test: the SPIR-V one when the build has it.
const GPU: &str = if cfg!(feature = "vulkan") { "vulkan" } else { "wgpu" };

/// Whether this machine can run the backend under test; says why not.
fn gpu_runs_here(test: &str) -> bool {
    if !device::vulkan_installed() {
        // CI installs lavapipe (.ci/run): there, a skip would hide that the
        // GPU path never ran.
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: no Vulkan loader and driver, and CI must run this test (.ci/run installs mesa-vulkan-drivers)"
        );
        eprintln!("{test}: skipped: no Vulkan loader and driver (install mesa-vulkan-drivers for lavapipe)");
        return false;
    }
    if cfg!(feature = "vulkan") && !device::gpu_driver_present() {
        eprintln!(
            "{test}: skipped: only a software Vulkan driver here, which cannot run cubecl's \
             SPIR-V kernels; run with `--features wgpu` instead"
        );
        return false;
    }
    true
}

fn device_for(backend: &str) -> Device {
    let (device, name) = device::select(backend, 0).unwrap();
    eprintln!("{backend}: {name}");
    device
}

/// The tiny GQA fixture on `device`.
fn load(device: &Device) -> (LlamaConfig, Llama) {
    let fixture = babelflow_stage::testing::package_dir().join("tests/fixtures/tiny-gqa");
    hf::load(&fixture, device).unwrap()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

fn ids(ids: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device)
}

fn worst_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

const PROMPT: [i64; 8] = [1, 5, 9, 2, 7, 3, 4, 8];

#[test]
fn a_forward_pass_on_the_gpu_matches_the_cpu() {
    if !gpu_runs_here("forward") {
        return;
    }
    let logits_on = |backend: &str| {
        let device = device_for(backend);
        let (config, model) = load(&device);
        let rope = Rope::new(&config, PROMPT.len(), &device).unwrap();
        values(model.forward(ids(&PROMPT, &device), &rope, None))
    };
    let worst = worst_gap(&logits_on("cpu"), &logits_on(GPU));
    eprintln!("worst logit gap {worst:e}");
    assert!(worst < 1e-3, "{GPU} and CPU logits differ by {worst}");
}

#[test]
fn cached_and_batched_generation_on_the_gpu_picks_the_cpus_tokens() {
    if !gpu_runs_here("generation") {
        return;
    }
    let s = Sampling {
        max_new_tokens: 6,
        ..Sampling::default()
    };
    let prompts: Vec<Vec<u32>> = vec![vec![1, 5, 9, 2, 7], vec![3, 4], vec![8, 6, 2]];
    let run = |backend: &str| {
        let device = device_for(backend);
        let (config, model) = load(&device);
        let rope = Rope::new(&config, 32, &device).unwrap();
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| generate(&model, &rope, p, &s, true, &device))
            .collect();
        (alone, generate_batch(&model, &rope, &prompts, &s, &device))
    };
    let (cpu_alone, _) = run("cpu");
    let (gpu_alone, gpu_batched) = run(GPU);
    assert_eq!(gpu_alone, cpu_alone, "KV-cached greedy generation on {GPU}");
    assert_eq!(gpu_batched, cpu_alone, "left-padded batch on {GPU}");
}

#[test]
fn the_loss_and_its_gradients_on_the_gpu_match_the_cpu() {
    if !gpu_runs_here("gradients") {
        return;
    }
    let run = |backend: &str| {
        let device = device_for(backend).autodiff();
        let (config, model) = load(&device);
        let rope = Rope::new(&config, PROMPT.len(), &device).unwrap();
        let (input, target) = (&PROMPT[..7], &PROMPT[1..]);
        let logits = model.forward(ids(input, &device), &rope, None);
        let loss = loss::cross_entropy(logits, ids(target, &device), None);
        let grads = loss.backward();
        let layer = &model.layers[0];
        let grad = |p: &Tensor<2>| values(p.grad(&grads).expect("a gradient"));
        (
            values(loss),
            grad(&model.embed_tokens.val()),
            grad(&layer.self_attn.q_proj.weight.val()),
            grad(&layer.mlp.down_proj.weight.val()),
        )
    };
    let (cpu, gpu) = (run("cpu"), run(GPU));
    let gaps = [
        worst_gap(&cpu.0, &gpu.0),
        worst_gap(&cpu.1, &gpu.1),
        worst_gap(&cpu.2, &gpu.2),
        worst_gap(&cpu.3, &gpu.3),
    ];
    eprintln!("loss {:?} vs {:?}; worst gradient gaps {gaps:?}", cpu.0, gpu.0);
    assert!(
        gaps.iter().all(|g| *g < 1e-4),
        "{GPU} and CPU disagree (loss, embedding, q, down): {gaps:?}"
    );
}

/// WGSL has no bf16: an evaluation asking for it gets an error naming what
/// the device can do, not a panic inside the shader compiler.
#[test]
#[cfg(not(feature = "vulkan"))]
fn a_precision_the_device_lacks_is_refused_naming_those_it_has() {
    use babelflow_model::Precision;
    if !gpu_runs_here("precision") {
        return;
    }
    let device = device_for(GPU);
    assert_eq!(Precision::F32.check_device(&device, GPU), Ok(()));
    let err = Precision::Bf16.check_device(&device, GPU).unwrap_err();
    assert!(
        err.contains("`bf16` is not supported on wgpu") && err.contains("f32"),
        "{err}"
    );
}

/// A GPU stage's peak memory is the device's, read from its allocator: at
/// least what its tensors hold, and still at least that once they are
/// freed (the peak, not what is held at the end).
#[test]
fn the_device_peak_counts_what_the_gpu_held() {
    if !gpu_runs_here("device peak") {
        return;
    }
    let device = device_for(GPU);
    let peak = device::DevicePeak::new(&device);
    let held = Tensor::<2>::ones([1024, 1024], &device);
    // Wait for the tensor to exist on the device before reading the pools.
    assert_eq!(values(held.clone().sum())[0], (1024 * 1024) as f32);
    peak.sample();
    let with_tensor = peak.bytes().expect("a GPU device reports its allocator");
    drop(held);
    peak.sample();
    eprintln!("device peak with a 4 MiB tensor: {with_tensor} bytes");
    assert!(with_tensor >= 4 << 20, "{with_tensor}");
    assert!(peak.bytes() >= Some(with_tensor));
}

/// `plan` checks a GPU instance against its device's memory, read from the
/// Vulkan driver without opening the device: the device-local heap of the
/// adapter burn opens (lavapipe's, which says 2 GiB, on a CPU-only
/// machine), never this machine's RAM by another name.
#[test]
fn the_gpus_memory_is_read_from_its_driver() {
    use babelflow_model::gpu_memory::gpu_memory;
    if !gpu_runs_here("gpu memory") {
        return;
    }
    let gpu = gpu_memory(GPU, 0).unwrap();
    eprintln!("{GPU} device 0: {} with {} bytes", gpu.device_name, gpu.bytes);
    assert!(gpu.bytes >= 256 << 20, "{gpu:?}");
    if !device::gpu_driver_present() {
        // Only Mesa's software driver: that is the adapter burn opens.
        assert!(gpu.device_name.contains("llvmpipe"), "{gpu:?}");
        // Device n > 0 is the n-th discrete GPU, which a CPU-only machine lacks.
        let none = gpu_memory(GPU, 1).unwrap_err();
        assert!(none.contains("discrete GPU 1") && none.contains("lists 0"), "{none}");
    }
    // The same answer each time (plan asks once a backend, run again).
    assert_eq!(gpu_memory(GPU, 0).unwrap(), gpu);
}
