//! Picking a burn 0.22 `Device` from a recipe's `backend:` / `device:`.
//!
//! `cpu` is burn's pure-Rust `flex` backend (in every build). `wgpu` needs
//! the `wgpu` cargo feature (WGSL shaders; `vulkan` implies it, and then
//! wgpu devices on Vulkan compile to SPIR-V too), `vulkan` the `vulkan`
//! feature, `cuda` the `cuda` feature (which downloads an LLVM bundle at
//! build time, so it cannot build offline).
//! `auto` takes the best one compiled in and present: CUDA, then Vulkan/WGPU
//! (when a Vulkan driver other than Mesa's software lavapipe is installed),
//! then CPU; `BURN_DEVICE=cpu|wgpu|vulkan|cuda` overrides what `auto` picks.

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
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    v.push("cpu");
    v
}

/// The names of the Vulkan driver manifests in the loader's standard folders.
fn driver_manifests() -> Vec<String> {
    [
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ]
    .iter()
    .filter_map(|d| std::fs::read_dir(d).ok())
    .flatten()
    .filter_map(Result::ok)
    .map(|e| e.file_name().to_string_lossy().to_lowercase())
    .filter(|name| name.ends_with(".json"))
    .collect()
}

fn driver_named_by_env() -> bool {
    ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Whether a Vulkan loader and any driver, Mesa's software lavapipe
/// included, are installed.
pub fn vulkan_installed() -> bool {
    // Debian-style multiarch folders (`/usr/lib/<triple>-linux-gnu`) as well
    // as the plain ones, so an arm64 machine is not told it has no loader.
    let multiarch = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("-linux-gnu"))
        .map(|e| e.path());
    let loader = ["/usr/lib", "/usr/lib64"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(multiarch)
        .any(|dir| dir.join("libvulkan.so.1").exists());
    loader && (driver_named_by_env() || !driver_manifests().is_empty())
}

/// Whether a GPU with a Vulkan driver looks present: a driver manifest named
/// by the loader's variables, or a GPU device node plus a manifest in the
/// standard folders that is not lavapipe (a CPU emulation slower than burn's
/// own CPU backend). Mesa installs manifests for hardware it may not find,
/// hence the device node.
pub fn gpu_driver_present() -> bool {
    if driver_named_by_env() {
        return true;
    }
    let gpu_node = std::path::Path::new("/dev/nvidia0").exists()
        || std::fs::read_dir("/dev/dri").is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        });
    gpu_node
        && driver_manifests()
            .iter()
            .any(|name| !name.contains("lvp") && !name.contains("lavapipe"))
}

/// What `auto` means in this build on this machine (no device is opened:
/// `select` may still fall back to the CPU when no adapter opens).
pub fn auto_choice() -> String {
    if let Some(forced) = std::env::var("BURN_DEVICE").ok().filter(|s| !s.is_empty()) {
        return forced;
    }
    if cfg!(feature = "cuda") {
        return "cuda".into();
    }
    if cfg!(feature = "vulkan") && gpu_driver_present() {
        return "vulkan".into();
    }
    if cfg!(feature = "wgpu") && gpu_driver_present() {
        return "wgpu".into();
    }
    "cpu".into()
}

/// Runs one tiny operation on `device`: burn opens GPU adapters lazily and
/// panics in a worker when none fits, so a missing adapter is found here,
/// as an error, rather than in the middle of a stage.
fn probe(device: &Device) -> Result<(), String> {
    let device = device.clone();
    std::panic::catch_unwind(move || {
        let t = burn::tensor::Tensor::<1>::ones([1], &device);
        t.into_data().convert::<f32>().try_to_vec::<f32>().map(|v| v.len())
    })
    .map_err(|_| "no adapter could be opened".to_string())
    .and_then(|r| r.map(|_| ()).map_err(|e| format!("{e:?}")))
}

/// A build with `vulkan` compiles every kernel to SPIR-V with cubecl's own
/// compiler, whose shared-memory declarations on drivers without
/// `VK_KHR_workgroup_memory_explicit_layout` are invalid (cubecl-spirv
/// 0.11.3) and crash Mesa's lavapipe in the first matrix product, killing
/// the process. Refused up front instead, where no hardware driver is found.
fn spirv_can_run() -> Result<(), String> {
    if cfg!(feature = "vulkan") && !gpu_driver_present() {
        return Err("no hardware Vulkan driver found (no GPU device node, or only Mesa's \
             software lavapipe, which crashes on the SPIR-V kernels of a `--features vulkan` \
             build); build with `--features wgpu` alone to run on lavapipe, or set \
             VK_DRIVER_FILES to your driver's manifest"
            .into());
    }
    Ok(())
}

/// A wgpu device on any graphics API (`wgpu`) or pinned to Vulkan
/// (`vulkan`); `None` when this build lacks the feature. Device 0 is the
/// best adapter the API offers (a discrete GPU first); others are discrete
/// GPUs by index.
#[cfg(feature = "wgpu")]
fn wgpu_device(api: &str, index: usize) -> Option<Device> {
    let kind = match index {
        0 => burn::tensor::DeviceKind::DefaultDevice,
        n => burn::tensor::DeviceKind::DiscreteGpu(n),
    };
    match api {
        "wgpu" => Some(Device::wgpu(kind)),
        #[cfg(feature = "vulkan")]
        "vulkan" => Some(Device::vulkan(kind)),
        _ => None,
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device(_api: &str, _index: usize) -> Option<Device> {
    None
}

/// `device` once it has run a tiny operation; under `auto`, the CPU when
/// no adapter opens.
fn probed(device: Device, wanted: &str, backend: &str, index: usize) -> Result<(Device, String), String> {
    match probe(&device) {
        Ok(()) => Ok((device, format!("{wanted}:{index}"))),
        Err(_) if backend == "auto" => Ok((Device::flex(), "cpu (flex; no usable GPU adapter)".into())),
        Err(why) => Err(format!("{wanted} device {index}: {why}")),
    }
}

/// The device for a request, and the name of the backend chosen.
pub fn select(backend: &str, index: usize) -> Result<(Device, String), ModelError> {
    let wanted = match backend {
        "auto" => auto_choice(),
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
            let device = wgpu_device(&wanted, index)
                .ok_or_else(|| unavailable(&format!("babelflow was built without the `{wanted}` feature")))?;
            spirv_can_run().map_err(|why| unavailable(&why))?;
            probed(device, &wanted, backend, index).map_err(|why| unavailable(&why))
        }
        other => Err(unavailable(&format!(
            "`{other}` is not a backend (cpu, wgpu, vulkan, cuda)"
        ))),
    }
}

/// The most a GPU device's allocator held at any moment it was sampled: a
/// GPU stage's peak memory on the device, which the process's resident
/// memory (host RAM) says nothing of. `None` on the CPU, where burn's
/// `flex` backend keeps no pool and the process's peak is the figure.
///
/// What is read is the memory the allocator has reserved on the device
/// (cubecl's pools: what it holds for tensors, padding and pages kept for
/// reuse), which is what another process could not have. Pools give pages
/// back as they empty, so it is sampled where a stage's memory is at its
/// highest (after a training step, after a forward pass) and the largest
/// kept. Each sample waits for the device's queue, so it is taken where a
/// stage waits anyway (it reads a loss or log-probabilities back).
#[derive(Debug)]
pub struct DevicePeak {
    device: Device,
    /// Whether the device reports a pool at all: on the CPU it does not,
    /// and a sample is then nothing (it sits in every scoring pass).
    pooled: bool,
    peak: std::sync::atomic::AtomicU64,
}

impl DevicePeak {
    /// Starts tracking `device`, with a first sample (the weights loaded).
    /// The pools first give back the pages nothing uses: those an earlier
    /// instance in this process left reserved are not this one's peak (as
    /// the process's RSS peak is started over before an instance).
    pub fn new(device: &Device) -> Self {
        device.memory_cleanup();
        let usage = device.memory_pool_usage();
        DevicePeak {
            device: device.clone(),
            pooled: usage.is_some(),
            peak: usage.map_or(0, |u| u.bytes_reserved).into(),
        }
    }

    /// Reads what the device's allocator holds now and keeps the largest.
    /// Through a shared reference: an evaluation samples from the passes
    /// of a model its threads share.
    pub fn sample(&self) {
        if !self.pooled {
            return;
        }
        if let Some(usage) = self.device.memory_pool_usage() {
            self.peak
                .fetch_max(usage.bytes_reserved, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The largest sample, in bytes; `None` on a device without a pool (the CPU).
    pub fn bytes(&self) -> Option<u64> {
        self.pooled
            .then(|| self.peak.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Samples once more and notes the peak in the instance's manifest
    /// (nothing on the CPU), where the report and later estimates read it
    /// (`babelflow_stage::memory::measured_peak`); returns it for stats.json.
    pub fn note(&self, ctx: &babelflow_stage::StageContext) -> Option<u64> {
        self.sample();
        let bytes = self.bytes();
        if let Some(bytes) = bytes {
            ctx.note(babelflow_stage::memory::DEVICE_PEAK_NOTE, bytes);
        }
        bytes
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
        // `vulkan` implies `wgpu`, so a wgpu-only build must still name `vulkan`.
        for (gpu, compiled_in) in [("wgpu", cfg!(feature = "wgpu")), ("vulkan", cfg!(feature = "vulkan"))] {
            if !compiled_in {
                let err = select(gpu, 0).err().unwrap().to_string();
                assert!(err.contains(&format!("built without the `{gpu}` feature")), "{err}");
            }
        }
        let err = select("tpu", 0).err().unwrap().to_string();
        assert!(err.contains("not a backend"), "{err}");
    }

    #[test]
    fn the_cpu_has_no_device_peak_its_peak_is_the_processes() {
        let (device, _) = select("cpu", 0).unwrap();
        let peak = DevicePeak::new(&device);
        let _held = burn::tensor::Tensor::<2>::ones([256, 256], &device);
        peak.sample();
        assert_eq!(peak.bytes(), None);
    }
}
