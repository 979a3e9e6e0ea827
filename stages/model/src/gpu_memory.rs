//! How much memory the GPU a `wgpu` or `vulkan` device would open has,
//! read from its Vulkan driver without opening it.
//!
//! `plan --estimate` checks an instance's peak against its device's memory
//! before anything runs, so this must not start burn's runtime (which opens
//! the adapter, builds pipelines and keeps them for the process). It asks
//! the Vulkan loader for the physical devices, picks the one burn's device
//! of that index would get (cubecl-wgpu 0.11: device 0 is wgpu's
//! high-performance adapter, a discrete GPU before an integrated one before
//! anything else; device n is the n-th discrete GPU), and takes its largest
//! device-local heap: the figure cubecl's own SPIR-V path records as the
//! device's capacity. Only Vulkan is read: on Linux it is what both
//! backends run on; CUDA needs its own driver API, which this build lacks.

/// One GPU's device-local memory, as its driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMemory {
    /// The driver's name for the device (`NVIDIA H100 80GB HBM3`,
    /// `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub device_name: String,
    /// Its largest device-local heap, in bytes.
    pub bytes: u64,
}

/// What kind of device a driver says it is, in wgpu's order of preference
/// for a high-performance adapter (a lower rank is picked first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    Discrete,
    Integrated,
    Other,
    Virtual,
    Cpu,
}

impl AdapterKind {
    fn rank(self) -> u8 {
        match self {
            AdapterKind::Discrete => 1,
            AdapterKind::Integrated => 2,
            AdapterKind::Other => 3,
            AdapterKind::Virtual => 4,
            AdapterKind::Cpu => 5,
        }
    }
}

/// Which of `kinds` (in the driver's order) burn's device `index` opens:
/// for 0, the first of the most preferred kind (wgpu sorts adapters by kind
/// with a stable sort); for n, the n-th discrete GPU, counted from 0 as
/// cubecl's `DiscreteGpu(n)` counts.
pub fn chosen(kinds: &[AdapterKind], index: usize) -> Option<usize> {
    if index == 0 {
        return (0..kinds.len()).min_by_key(|&i| (kinds[i].rank(), i));
    }
    (0..kinds.len())
        .filter(|&i| kinds[i] == AdapterKind::Discrete)
        .nth(index)
}

/// The memory of the GPU that burn's `backend` device `index` would open,
/// or why it is not known.
pub fn gpu_memory(backend: &str, index: usize) -> Result<GpuMemory, String> {
    match backend {
        "wgpu" | "vulkan" => vulkan::read(index),
        "cuda" => Err("a CUDA device's memory is not read (this build reads only Vulkan drivers)".into()),
        other => Err(format!("`{other}` is not a GPU backend")),
    }
}

#[cfg(feature = "wgpu")]
mod vulkan {
    use ash::vk;

    use super::{chosen, AdapterKind, GpuMemory};

    fn kind(t: vk::PhysicalDeviceType) -> AdapterKind {
        match t {
            vk::PhysicalDeviceType::DISCRETE_GPU => AdapterKind::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => AdapterKind::Integrated,
            vk::PhysicalDeviceType::VIRTUAL_GPU => AdapterKind::Virtual,
            vk::PhysicalDeviceType::CPU => AdapterKind::Cpu,
            _ => AdapterKind::Other,
        }
    }

    pub fn read(index: usize) -> Result<GpuMemory, String> {
        // SAFETY: loading the system's Vulkan loader runs its initialisers;
        // it is the same library wgpu loads for the run itself.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| format!("no Vulkan loader: {e}"))?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"babelflow")
            .api_version(vk::API_VERSION_1_0);
        let create = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: `create` and what it points to outlive the call.
        let instance =
            unsafe { entry.create_instance(&create, None) }.map_err(|e| format!("no Vulkan instance: {e}"))?;
        let found = read_devices(&instance, index);
        // SAFETY: nothing made from `instance` outlives this function.
        unsafe { instance.destroy_instance(None) };
        found
    }

    fn read_devices(instance: &ash::Instance, index: usize) -> Result<GpuMemory, String> {
        // SAFETY: `instance` is a live instance; the handles it returns are
        // used only while it lives.
        let devices = unsafe { instance.enumerate_physical_devices() }
            .map_err(|e| format!("the Vulkan driver lists no devices: {e}"))?;
        let properties: Vec<vk::PhysicalDeviceProperties> = devices
            .iter()
            .map(|&d| unsafe { instance.get_physical_device_properties(d) })
            .collect();
        let kinds: Vec<AdapterKind> = properties.iter().map(|p| kind(p.device_type)).collect();
        let Some(i) = chosen(&kinds, index) else {
            return Err(match index {
                0 => "the Vulkan driver lists no devices".into(),
                n => format!(
                    "device {n} is the Vulkan driver's discrete GPU {n} (counted from 0), and it lists {}",
                    kinds.iter().filter(|&&k| k == AdapterKind::Discrete).count()
                ),
            });
        };
        let device_name = properties[i]
            .device_name_as_c_str()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("Vulkan device {i}"));
        // SAFETY: as above.
        let memory = unsafe { instance.get_physical_device_memory_properties(devices[i]) };
        // The largest device-local heap, as cubecl's SPIR-V path takes it: a
        // driver may list a small host-visible window ahead of the card's own.
        let bytes = memory
            .memory_heaps_as_slice()
            .iter()
            .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .max()
            .ok_or_else(|| format!("{device_name} reports no device-local memory"))?;
        Ok(GpuMemory { device_name, bytes })
    }
}

#[cfg(not(feature = "wgpu"))]
mod vulkan {
    use super::GpuMemory;

    pub fn read(_index: usize) -> Result<GpuMemory, String> {
        Err("this build has no GPU backend (`--features wgpu` or `vulkan` reads the device's memory)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::AdapterKind::*;
    use super::*;

    #[test]
    fn device_0_is_the_adapter_wgpu_prefers_for_performance() {
        assert_eq!(chosen(&[Cpu, Integrated, Discrete, Discrete], 0), Some(2));
        assert_eq!(chosen(&[Cpu, Virtual, Integrated], 0), Some(2));
        assert_eq!(chosen(&[Virtual, Other], 0), Some(1));
        assert_eq!(chosen(&[Cpu], 0), Some(0), "lavapipe alone is device 0");
        assert_eq!(chosen(&[], 0), None);
    }

    #[test]
    fn device_n_is_the_nth_discrete_gpu_counted_from_0() {
        let kinds = [Integrated, Discrete, Cpu, Discrete];
        assert_eq!(chosen(&kinds, 1), Some(3));
        assert_eq!(chosen(&kinds, 2), None);
        assert_eq!(chosen(&[Cpu, Integrated], 1), None, "no discrete GPU, no device 1");
    }

    #[test]
    fn only_gpu_backends_have_a_gpu_memory() {
        assert!(gpu_memory("cpu", 0).unwrap_err().contains("not a GPU backend"));
        assert!(gpu_memory("cuda", 0).unwrap_err().contains("CUDA"));
    }
}
