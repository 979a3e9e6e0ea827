//! The device an estimate is priced on: its memory, and its throughput
//! with the source of that figure. Either this machine (its RAM; its speed
//! from `babelflow calibrate`, stored in the store) or a named accelerator
//! from [`DOCUMENTED`] (its memory and documented peak × an assumed
//! utilisation).

use std::collections::BTreeMap;
use std::path::Path;

use babelflow_stage::estimate::Work;
use serde::Serialize;

pub use super::throughput::{Rate, RowsRate, Throughput};

/// Accelerators with their documented memory (bytes, as sold) and dense
/// bf16 tensor-core peak (FLOP/s), from the vendors' data sheets.
pub const DOCUMENTED: &[(&str, u64, f64, &str)] = &[
    (
        "a100-40gb",
        40_000_000_000,
        312e12,
        "NVIDIA A100 40 GB (SXM/PCIe), 312 TFLOP/s bf16 dense",
    ),
    (
        "a100-80gb",
        80_000_000_000,
        312e12,
        "NVIDIA A100 80 GB, 312 TFLOP/s bf16 dense",
    ),
    (
        "h100-80gb",
        80_000_000_000,
        989e12,
        "NVIDIA H100 SXM 80 GB, 989 TFLOP/s bf16 dense",
    ),
    (
        "h200",
        141_000_000_000,
        989e12,
        "NVIDIA H200 141 GB, 989 TFLOP/s bf16 dense",
    ),
    ("l4", 24_000_000_000, 121e12, "NVIDIA L4 24 GB, 121 TFLOP/s bf16 dense"),
    (
        "rtx-4090",
        24_000_000_000,
        165e12,
        "NVIDIA RTX 4090 24 GB, 165 TFLOP/s bf16 dense (fp32 accumulate)",
    ),
];

/// Reading and writing checkpoints on an accelerator's host, assumed.
const ASSUMED_IO_BYTES_PER_S: f64 = 1.0e9;

/// Bytes/s at which processes sum their gradients (a ring all-reduce sends
/// and receives 2(p−1)/p of them each): staged through the host and
/// OpenMPI's shared memory, as measured on this project's VM
/// (`scripts/bench-data-parallel.sh`: 538 MB on 2 processes in 0.18–0.28 s).
/// Assumed for every device: the trainer stages GPU gradients through the
/// host too, and `calibrate` runs no MPI.
pub const ASSUMED_ALL_REDUCE_BYTES_PER_S: f64 = 2.0e9;

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub name: String,
    pub memory_bytes: u64,
    pub memory_source: String,
    pub throughput: Option<Throughput>,
    /// What would make the throughput known, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_hint: Option<String>,
    /// This machine, where the store's earlier runs were measured (not a
    /// documented device priced from its data sheet).
    pub is_this_machine: bool,
    /// On this machine, the backend it is, `auto` resolved ([`resolve`]):
    /// an instance on another is priced on that one's; `None` for a
    /// documented device, which prices every instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

/// The memory of the GPU `backend` (resolved) opens as its device `index`,
/// read once a process: `plan` and `run` ask for each backend, and each
/// asking starts and stops a Vulkan instance.
fn gpu_memory(backend: &str, index: usize) -> Result<babelflow_model::gpu_memory::GpuMemory, String> {
    type Read = Result<babelflow_model::gpu_memory::GpuMemory, String>;
    static READ: std::sync::Mutex<BTreeMap<(String, usize), Read>> = std::sync::Mutex::new(BTreeMap::new());
    let mut read = READ.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    read.entry((backend.to_string(), index))
        .or_insert_with(|| babelflow_model::gpu_memory::gpu_memory(backend, index))
        .clone()
}

/// The device an instance on `resolved` runs on, as priced: its `device:`
/// on a GPU, where data-parallel ranks on their local GPUs (`device:
/// local`) are priced on device 0, taking a node's GPUs alike; the CPU is
/// one device whatever the recipe says.
pub fn device_index(resolved: &str, index: usize) -> usize {
    if resolved != "cpu" && index != crate::recipe::LOCAL_RANK_DEVICE {
        index
    } else {
        0
    }
}

/// The backend a recipe's `backend:` runs on here: `auto` as this build
/// picks it on this machine (no device is opened), `flex` as `cpu`, the
/// name `calibrate` stores a backend's throughput under.
pub fn resolve(backend: &str) -> String {
    match backend {
        "auto" => babelflow_model::device::auto_choice(),
        "flex" => "cpu".into(),
        other => other.into(),
    }
}

/// The file `babelflow calibrate` writes into a store: throughput per backend.
pub const CALIBRATION_FILE: &str = "calibration.json";

impl Device {
    /// One documented accelerator, at `utilisation` of its peak.
    pub fn named(name: &str, utilisation: f64) -> Result<Device, String> {
        let Some(&(name, memory, peak, doc)) = DOCUMENTED.iter().find(|d| d.0 == name) else {
            let known: Vec<&str> = DOCUMENTED.iter().map(|d| d.0).collect();
            return Err(format!(
                "unknown device `{name}`; known: {} (or leave --device out for this machine)",
                known.join(", ")
            ));
        };
        if !(utilisation > 0.0 && utilisation <= 1.0) {
            return Err(format!("--utilisation must be in (0, 1], not {utilisation}"));
        }
        let flops = peak * utilisation;
        Ok(Device {
            name: name.to_string(),
            memory_bytes: memory,
            memory_source: doc.to_string(),
            throughput: Some(Throughput {
                rates: vec![Rate {
                    hidden_size: 0,
                    train_flops_per_s: flops,
                    forward_flops_per_s: flops,
                    forward_by_rows: Vec::new(),
                    optimizer_seconds_per_update: 0.0,
                }],
                io_bytes_per_s: ASSUMED_IO_BYTES_PER_S,
                overhead_s: BTreeMap::new(),
                overhead_per_token_s: BTreeMap::new(),
                process_bytes: BTreeMap::new(),
                source: format!(
                    "documented peak {:.0} TFLOP/s × {:.0} % assumed utilisation",
                    peak / 1e12,
                    utilisation * 100.0
                ),
            }),
            throughput_hint: None,
            is_this_machine: false,
            backend: None,
        })
    }

    /// This machine for `backend`: its memory (the RAM for the CPU; for a
    /// GPU, its device-local memory as its driver reports it, see
    /// [`gpu_memory`]), and the throughput `babelflow calibrate` stored in
    /// `store_dir`, if any.
    pub fn this_machine(backend: &str, store_dir: &Path) -> Device {
        Self::this_machine_on(backend, 0, store_dir)
    }

    /// This machine for `backend`'s device `index` (a recipe's `device:`,
    /// taken as [`device_index`] takes it).
    pub fn this_machine_on(backend: &str, index: usize, store_dir: &Path) -> Device {
        let resolved = resolve(backend);
        let on_gpu = resolved != "cpu";
        let index = device_index(&resolved, index);
        let (memory, memory_source) = if on_gpu {
            Self::gpu_memory_of(&resolved, gpu_memory(&resolved, index))
        } else {
            match host_memory_bytes() {
                Some(bytes) => (Some(bytes), "MemTotal of /proc/meminfo".into()),
                None => (None, "unknown (not Linux): not checked".into()),
            }
        };
        let (calibration, unreadable) = match read_calibration(store_dir) {
            Ok(c) => (c, None),
            Err(e) => (BTreeMap::new(), Some(e)),
        };
        // `auto` is priced as what it picks: the rates and the memory of one backend.
        let throughput = calibration.get(&resolved).cloned();
        Device {
            name: match index {
                0 => format!("this machine ({backend})"),
                n => format!("this machine ({backend}, device {n})"),
            },
            memory_bytes: memory.unwrap_or(u64::MAX),
            memory_source,
            throughput_hint: throughput.is_none().then(|| {
                let why =
                    unreadable.unwrap_or_else(|| format!("no throughput measured for `{resolved}` in this store"));
                let on = if on_gpu {
                    format!(" --backend {resolved}")
                } else {
                    String::new()
                };
                format!(
                    "{why}: run `babelflow calibrate{on} --store {}` (about a minute), or price a documented device \
                     with --device",
                    store_dir.display()
                )
            }),
            throughput,
            is_this_machine: true,
            backend: Some(resolved),
        }
    }

    /// A GPU's memory and where it came from: what its driver reported,
    /// or why nothing is checked against it.
    fn gpu_memory_of(
        backend: &str,
        read: Result<babelflow_model::gpu_memory::GpuMemory, String>,
    ) -> (Option<u64>, String) {
        match read {
            Ok(gpu) => (
                Some(gpu.bytes),
                format!(
                    "the largest device-local heap of {}, as its Vulkan driver reports it",
                    gpu.device_name
                ),
            ),
            Err(why) => (None, Self::gpu_memory_unknown(backend, &why)),
        }
    }

    /// Why a GPU's memory is not checked on this machine: an instance on a
    /// GPU holds its weights, gradients and activations in the device's own
    /// memory, which this machine's RAM says nothing of (checked against
    /// RAM, a 60 GiB training would "fit" a 24 GiB card on a 128 GiB host),
    /// and `why` its driver did not say.
    fn gpu_memory_unknown(backend: &str, why: &str) -> String {
        format!(
            "unknown: the `{backend}` device's own memory, not this machine's RAM, is what a GPU instance needs, \
             and it could not be read ({why}), so nothing is checked against it; `--device` prices and checks \
             a documented GPU (h100-80gb, a100-80gb, ...)"
        )
    }

    /// What a process running `kind` holds besides its work (0 unless measured).
    pub fn process_bytes(&self, kind: &str) -> u64 {
        self.throughput.as_ref().map_or(0, |t| t.process_bytes(kind))
    }

    /// Wall time of `kind`'s `work` split over `processes` on `nodes`
    /// machines, when the throughput is known. A documented device is one
    /// per process; this machine's rate was measured with all of it, so
    /// processes on one node share it and only more nodes go faster. The
    /// optimizer's update is every process's whole, on its own machine.
    pub fn seconds(&self, kind: &str, work: &Work, processes: usize, nodes: usize) -> Option<f64> {
        let t = self.throughput.as_ref()?;
        let (train, forward) = t.at(work.hidden_size, work.forward_rows)?;
        let compute = work.train_flops / train + work.forward_flops / forward;
        let apart = if self.is_this_machine { nodes } else { processes };
        let updating = work.optimizer_updates * t.optimizer_at(work.hidden_size);
        Some(
            compute / apart.max(1) as f64
                + updating
                + all_reduce_seconds(work, processes)
                + self.fixed_seconds(kind, work),
        )
    }

    /// What `kind`'s `work` costs besides its FLOPs: reading and writing
    /// checkpoints, and the kind's fixed cost (0 where not measured).
    pub fn fixed_seconds(&self, kind: &str, work: &Work) -> f64 {
        self.fixed_seconds_at(kind, work, work.tokens.value)
    }

    /// `fixed_seconds` of `work`'s shape reading `tokens`.
    pub fn fixed_seconds_at(&self, kind: &str, work: &Work, tokens: f64) -> f64 {
        self.throughput.as_ref().map_or(0.0, |t| {
            work.io_bytes as f64 / t.io_bytes_per_s + t.overhead(kind, tokens)
        })
    }
}

/// Seconds `work`'s processes spend summing what they share
/// ([`ASSUMED_ALL_REDUCE_BYTES_PER_S`]); 0 on one process.
pub fn all_reduce_seconds(work: &Work, processes: usize) -> f64 {
    if processes <= 1 {
        return 0.0;
    }
    let p = processes as f64;
    2.0 * (p - 1.0) / p * work.all_reduce_bytes as f64 / ASSUMED_ALL_REDUCE_BYTES_PER_S
}

/// Backend → throughput, as `babelflow calibrate` stored it; empty when
/// there is none, an error naming the file, line and column when it does
/// not read.
pub fn read_calibration(store_dir: &Path) -> Result<BTreeMap<String, Throughput>, String> {
    let path = store_dir.join(CALIBRATION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{} does not read: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn host_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line["MemTotal:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use babelflow_stage::estimate::{Basis, Count, Memory};

    fn work(train_flops: f64) -> Work {
        Work {
            tokens: Count::new(1.0, Basis::Params, "test"),
            train_flops,
            forward_flops: 0.0,
            parameters: 0,
            trainable_parameters: 0,
            memory: Memory::default(),
            fit_options: vec![],
            io_bytes: 0,
            hidden_size: 512,
            forward_rows: 0,
            all_reduce_bytes: 0,
            optimizer_updates: 0.0,
        }
    }

    #[test]
    fn a_documented_device_runs_at_its_peak_times_the_utilisation() {
        let a100 = Device::named("a100-80gb", 0.5).unwrap();
        assert_eq!(a100.memory_bytes, 80_000_000_000);
        // 156 TFLOP/s: 1.56e17 FLOPs take 1000 s, 500 s on two processes.
        assert!((a100.seconds("pretrain", &work(1.56e17), 1, 1).unwrap() - 1000.0).abs() < 1e-6);
        assert!((a100.seconds("pretrain", &work(1.56e17), 2, 1).unwrap() - 500.0).abs() < 1e-6);
    }

    #[test]
    fn processes_pay_for_summing_their_gradients() {
        let a100 = Device::named("a100-80gb", 0.5).unwrap();
        let mut shared = work(1.56e17);
        // 100 steps of 1 GB of gradients: 100 GB, of which a ring sends
        // 2·(p−1)/p: 100 GB on 2 processes, 150 GB on 4.
        shared.all_reduce_bytes = 100_000_000_000;
        let bytes_per_s = ASSUMED_ALL_REDUCE_BYTES_PER_S;
        let two = a100.seconds("pretrain", &shared, 2, 1).unwrap();
        assert!((two - (500.0 + 1e11 / bytes_per_s)).abs() < 1e-6, "{two}");
        let four = a100.seconds("pretrain", &shared, 4, 2).unwrap();
        assert!((four - (250.0 + 1.5e11 / bytes_per_s)).abs() < 1e-6, "{four}");
        // One process sums nothing.
        assert_eq!(all_reduce_seconds(&shared, 1), 0.0);
    }

    /// 1 GFLOP/s at `hidden_size`, the optimizer's update at `per_update` seconds a weight.
    fn gigaflop(hidden_size: usize, per_update: f64) -> Rate {
        Rate {
            hidden_size,
            train_flops_per_s: 1e9,
            forward_flops_per_s: 1e9,
            forward_by_rows: Vec::new(),
            optimizer_seconds_per_update: per_update,
        }
    }

    /// This machine, calibrated at `rates`, with no fixed costs.
    fn calibrated(rates: Vec<Rate>) -> Device {
        Device {
            name: "this machine (cpu)".into(),
            memory_bytes: 1 << 30,
            memory_source: "test".into(),
            throughput: Some(Throughput {
                rates,
                io_bytes_per_s: 1e9,
                overhead_s: BTreeMap::new(),
                overhead_per_token_s: BTreeMap::new(),
                process_bytes: BTreeMap::new(),
                source: "test".into(),
            }),
            throughput_hint: None,
            is_this_machine: true,
            backend: Some("cpu".into()),
        }
    }

    #[test]
    fn processes_on_one_node_share_this_machine() {
        let machine = calibrated(vec![gigaflop(512, 0.0)]);
        // 100 s of FLOPs: as long on 2 processes of one node (their cores
        // are the ones the rate was measured with), half on 2 nodes.
        assert_eq!(machine.seconds("pretrain", &work(1e11), 1, 1), Some(100.0));
        assert_eq!(machine.seconds("pretrain", &work(1e11), 2, 1), Some(100.0));
        assert_eq!(machine.seconds("pretrain", &work(1e11), 2, 2), Some(50.0));
    }

    #[test]
    fn the_optimizers_update_is_priced_apart_and_every_process_makes_it_whole() {
        // 100 s of FLOPs and 10 steps of 1 M weights at 2 ns each: 20 ms.
        let mut training = work(1e11);
        training.optimizer_updates = 1e7;
        let measured = calibrated(vec![gigaflop(512, 2e-9)]);
        let seconds = |d: &Device, p, n| d.seconds("pretrain", &training, p, n).unwrap();
        assert!((seconds(&measured, 1, 1) - 100.02).abs() < 1e-9);
        // Two nodes halve the FLOPs, not the update each rank makes.
        assert!((seconds(&measured, 2, 2) - 50.02).abs() < 1e-9);
        // Between widths, log-log: 2 and 8 ns, 4 ns halfway.
        let two = calibrated(vec![gigaflop(256, 2e-9), gigaflop(1024, 8e-9)]);
        assert!((two.throughput.as_ref().unwrap().optimizer_at(512) - 4e-9).abs() < 1e-18);
        // A calibration that did not measure it at every width: inside the training rate.
        let older = calibrated(vec![gigaflop(256, 0.0), gigaflop(1024, 8e-9)]);
        assert!((seconds(&older, 1, 1) - 100.0).abs() < 1e-9);
        let old: Rate =
            serde_json::from_str(r#"{"hidden_size": 64, "train_flops_per_s": 1e9, "forward_flops_per_s": 3e9}"#)
                .unwrap();
        assert_eq!(old.optimizer_seconds_per_update, 0.0);
    }

    #[test]
    fn unknown_devices_and_utilisations_are_refused_with_the_choices() {
        let e = Device::named("a100", 0.4).unwrap_err();
        assert!(e.contains("a100-80gb"), "{e}");
        assert!(Device::named("a100-80gb", 1.5).unwrap_err().contains("--utilisation"));
    }

    #[test]
    fn this_machine_without_calibration_says_how_to_measure_it() {
        let dir = std::env::temp_dir().join(format!("babelflow-device-{}", std::process::id()));
        let host = Device::this_machine("cpu", &dir);
        assert!(host.throughput.is_none() && host.seconds("pretrain", &work(1.0), 1, 1).is_none());
        assert!(host.throughput_hint.unwrap().contains("babelflow calibrate --store"));
    }

    #[test]
    fn a_gpu_backend_is_never_checked_against_this_machines_ram() {
        let dir = std::env::temp_dir().join(format!("babelflow-device-gpu-{}", std::process::id()));
        let gpu = Device::this_machine("vulkan", &dir);
        assert_eq!(gpu.memory_bytes, u64::MAX, "{}", gpu.memory_source);
        assert!(
            gpu.memory_source.contains("not this machine's RAM"),
            "{}",
            gpu.memory_source
        );
        assert!(gpu.memory_source.contains("--device"), "{}", gpu.memory_source);
        // And says why it was not read: in a CPU build there is no driver to ask.
        if !cfg!(feature = "wgpu") {
            assert!(
                gpu.memory_source.contains("this build has no GPU backend"),
                "{}",
                gpu.memory_source
            );
        }
        // Uncalibrated, it is told the backend to calibrate.
        let hint = gpu.throughput_hint.unwrap();
        assert!(hint.contains("babelflow calibrate --backend vulkan --store"), "{hint}");
        // The CPU's memory is the RAM.
        let host = Device::this_machine("cpu", &dir);
        assert!(host.memory_bytes < u64::MAX && host.memory_source.contains("MemTotal"));
    }

    #[test]
    fn a_gpus_memory_is_what_its_driver_reported_and_else_says_why_not() {
        let h100 = babelflow_model::gpu_memory::GpuMemory {
            device_name: "NVIDIA H100 80GB HBM3".into(),
            bytes: 85_520_809_984,
        };
        let (bytes, source) = Device::gpu_memory_of("vulkan", Ok(h100));
        assert_eq!(bytes, Some(85_520_809_984));
        assert!(
            source.contains("NVIDIA H100 80GB HBM3") && source.contains("Vulkan driver"),
            "{source}"
        );
        let (bytes, source) = Device::gpu_memory_of("vulkan", Err("no Vulkan loader: libvulkan.so.1".into()));
        assert_eq!(bytes, None);
        assert!(
            source.contains("no Vulkan loader") && source.contains("--device"),
            "{source}"
        );
    }

    #[test]
    fn local_rank_gpus_and_the_cpu_are_priced_as_device_0() {
        assert_eq!(device_index("vulkan", 1), 1);
        assert_eq!(device_index("vulkan", crate::recipe::LOCAL_RANK_DEVICE), 0);
        assert_eq!(device_index("cpu", 3), 0);
    }

    #[test]
    fn a_calibration_that_does_not_read_is_named_with_its_line() {
        let dir = std::env::temp_dir().join(format!("babelflow-device-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CALIBRATION_FILE), "{\n  \"cpu\": {\"rates\": 3}\n}").unwrap();
        let hint = Device::this_machine("cpu", &dir).throughput_hint.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            hint.contains("calibration.json does not read") && hint.contains("line 2"),
            "{hint}"
        );
    }
}
