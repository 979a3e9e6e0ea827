//! `plan --estimate`: what the run will cost before it runs. Each instance's
//! kind estimates its outputs' facts and its work (tokens, FLOPs, memory)
//! from its parameters and the upstream estimates, upstream first; this
//! module turns the work into time on a [`Device`] and checks that each
//! instance fits the device's memory. On this machine, an instance with
//! the shape of runs the store already holds is priced by what those runs
//! measured ([`super::history`]).

use std::collections::BTreeMap;

use babelflow_stage::estimate::{Facts, PlannedInput, Work};
use babelflow_stage::{Estimate, EstimateContext};
use serde::Serialize;

use super::device::Device;
use super::history::{shape_of, History};
use super::plan::{Action, PlannedInstance};
use crate::graph::Graph;
use crate::recipe::expand::Source;
use crate::store::Store;

/// One instance's cost.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceCost {
    pub name: String,
    pub kind: String,
    pub action: Action,
    /// Processes the instance runs on (data-parallel ranks); each holds
    /// `work.memory`, and together they do `work`'s FLOPs.
    pub processes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work: Option<Work>,
    /// Why a kind that does real work has no estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
    /// Wall time on the device, when its throughput is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Where `seconds` came from: the device's throughput, or earlier runs
    /// of the same shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_source: Option<String>,
    /// Peak memory of one process: the work's, plus what the process
    /// holds besides (measured by `babelflow calibrate` on this machine);
    /// or the peak earlier runs of the same shape measured.
    pub peak_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_source: Option<String>,
    /// The key runs of the same shape share (see [`super::history::shape_of`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<String>,
    /// `peak_bytes` above the device's memory.
    pub over_memory: bool,
    /// The device it is priced on, where that is not the plan's: on this
    /// machine, an instance on another backend than most (a GPU stage in
    /// a recipe of CPU stages) is priced on its own backend's rates and
    /// checked against its memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<PricedOn>,
}

/// The device an instance is priced on, by name, and its memory.
#[derive(Debug, Clone, Serialize)]
pub struct PricedOn {
    pub name: String,
    pub memory_bytes: u64,
    pub memory_source: String,
}

/// An instance's estimate as a run records it in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Recorded {
    pub seconds: Option<f64>,
    pub peak_bytes: u64,
    pub device: String,
    /// Where the time came from; `None` when it is unknown.
    pub source: Option<String>,
    pub peak_source: Option<String>,
}

/// The sums over what would run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub tokens: f64,
    pub train_flops: f64,
    pub forward_flops: f64,
    /// Wall time of the instances that would run, one after another.
    pub seconds: Option<f64>,
    /// Device time: each instance's wall time × its processes.
    pub device_hours: Option<f64>,
    /// The largest peak memory of one process.
    pub peak_bytes: u64,
    /// Instances that would run and have no work estimate.
    pub not_estimated: Vec<String>,
    /// Instances that would run and do not fit.
    pub over_memory: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanCost {
    pub device: Device,
    pub instances: Vec<InstanceCost>,
    /// Over the instances that would run (not cached, not skipped).
    pub totals: Totals,
}

/// The estimate of every planned instance, upstream first.
pub fn estimate(graph: &Graph, planned: &[PlannedInstance], store: &Store, device: &Device) -> PlanCost {
    estimate_some(graph, planned, store, device, &vec![true; graph.instances.len()])
}

/// The estimate of the instances `these` marks, and of what they read from
/// (for their facts), without estimating the rest of a large recipe: what
/// `run` records (the work, and memory its instances would start with).
pub fn estimate_these(
    graph: &Graph,
    planned: &[PlannedInstance],
    store: &Store,
    device: &Device,
    these: &[bool],
) -> PlanCost {
    let mut wanted = these.to_vec();
    for &i in graph.order.iter().rev() {
        if wanted[i] {
            for &d in &graph.deps[i] {
                wanted[d] = true;
            }
        }
    }
    estimate_some(graph, planned, store, device, &wanted)
}

fn estimate_some(
    graph: &Graph,
    planned: &[PlannedInstance],
    store: &Store,
    device: &Device,
    wanted: &[bool],
) -> PlanCost {
    let mut estimates: Vec<Option<Estimate>> = vec![None; graph.instances.len()];
    for &i in graph.order.iter().filter(|&&i| wanted[i]) {
        let inst = &graph.instances[i];
        let mut inputs: BTreeMap<String, Vec<PlannedInput>> = BTreeMap::new();
        for binding in &inst.inputs {
            let items = binding.sources.iter().map(|source| match source {
                Source::File { path } => PlannedInput {
                    path: path.exists().then(|| path.clone()),
                    facts: Facts::default(),
                },
                Source::Artifact { instance, output } => {
                    let up = &planned[*instance];
                    let path = (up.action == Action::Cached).then(|| store.artifact_dir(&up.fingerprint).join(output));
                    let facts = estimates[*instance]
                        .as_ref()
                        .and_then(|e| e.outputs.get(output).cloned())
                        .unwrap_or_default();
                    PlannedInput { path, facts }
                }
            });
            inputs.entry(binding.name.clone()).or_default().extend(items);
        }
        let ctx = EstimateContext {
            instance: &inst.name,
            params: &inst.params,
            inputs,
            processes: processes(inst),
            // On this machine, what its backend resolves to; a documented
            // device is a GPU.
            on_gpu: !device.is_this_machine || super::device::resolve(&inst.backend) != "cpu",
        };
        estimates[i] = Some(inst.kind.estimate(&ctx));
    }
    // Earlier runs price only the machine they ran on, and only what would
    // run: the store's manifests are read once, when first needed.
    let history = std::cell::OnceCell::new();
    // This machine under each other backend and GPU the instances run on
    // (`auto` that picks the plan's backend is the plan's; its device 0 is
    // the plan's device).
    fn on_device(inst: &crate::recipe::Instance) -> (&str, usize) {
        let index = super::device::device_index(&super::device::resolve(&inst.backend), inst.device);
        (inst.backend.as_str(), index)
    }
    let others: BTreeMap<(&str, usize), Device> = match &device.backend {
        Some(planned_on) if device.is_this_machine => graph
            .instances
            .iter()
            .map(on_device)
            .filter(|&(backend, index)| super::device::resolve(backend) != *planned_on || index != 0)
            .map(|(backend, index)| ((backend, index), Device::this_machine_on(backend, index, store.root())))
            .collect(),
        _ => BTreeMap::new(),
    };
    let instances: Vec<InstanceCost> = planned
        .iter()
        .zip(&graph.instances)
        .zip(estimates)
        .map(|((p, inst), estimate)| {
            let estimate = estimate.unwrap_or_default();
            let processes = processes(inst);
            let on = others.get(&on_device(inst));
            let device = on.unwrap_or(device);
            let mut cost = InstanceCost {
                name: p.name.clone(),
                kind: p.kind.clone(),
                action: p.action,
                processes,
                work: None,
                unknown: estimate.unknown,
                seconds: None,
                seconds_source: None,
                peak_bytes: 0,
                peak_source: None,
                shape: None,
                over_memory: false,
                device: on.map(|d| PricedOn {
                    name: d.name.clone(),
                    memory_bytes: d.memory_bytes,
                    memory_source: d.memory_source.clone(),
                }),
            };
            if let Some(work) = estimate.work {
                cost.seconds = device.seconds(&p.kind, &work, processes, inst.resources.nodes);
                cost.seconds_source = cost.seconds.and(device.throughput.as_ref()).map(|t| {
                    let summing = super::device::all_reduce_seconds(&work, processes);
                    if summing > 0.0 {
                        format!(
                            "{}; and {:.1} s summing {:.2} GB of gradients across {processes} processes at an assumed \
                             {:.0} GB/s (host-staged, as scripts/bench-data-parallel.sh measured here)",
                            t.source,
                            summing,
                            work.all_reduce_bytes as f64 / 1e9,
                            super::device::ASSUMED_ALL_REDUCE_BYTES_PER_S / 1e9
                        )
                    } else {
                        t.source.clone()
                    }
                });
                cost.peak_bytes = work.memory.total_bytes() + device.process_bytes(&p.kind);
                let besides = if device.process_bytes(&p.kind) > 0 {
                    "; and what the process holds besides (babelflow calibrate)"
                } else {
                    ""
                };
                cost.peak_source = Some(format!(
                    "model: weights, gradients, optimizer state, activations{besides}"
                ));
                let shape = shape_of(&p.kind, &work, processes);
                let fixed_s = |tokens| device.fixed_seconds_at(&p.kind, &work, tokens);
                let past = (device.is_this_machine && p.action == Action::Run)
                    .then(|| history.get_or_init(|| History::load(store)))
                    .and_then(|h| h.estimate(&shape, &inst.backend, &work, fixed_s));
                if let Some(past) = past {
                    cost.seconds = Some(past.seconds);
                    cost.seconds_source = Some(past.seconds_source);
                    if let Some((peak, source)) = past.peak {
                        cost.peak_bytes = peak;
                        cost.peak_source = Some(source);
                    }
                }
                cost.shape = Some(shape);
                cost.over_memory = cost.peak_bytes > device.memory_bytes;
                cost.work = Some(work);
            }
            cost
        })
        .collect();
    let totals = totals(&instances, device);
    PlanCost {
        device: device.clone(),
        instances,
        totals,
    }
}

/// Processes an instance runs on: each rank of a data-parallel one.
pub fn processes(inst: &crate::recipe::Instance) -> usize {
    (inst.resources.nodes * inst.resources.tasks_per_node).max(1)
}

fn totals(instances: &[InstanceCost], device: &Device) -> Totals {
    let mut totals = Totals::default();
    let mut seconds = Some(0.0);
    let mut device_seconds = Some(0.0);
    for cost in instances.iter().filter(|c| c.action == Action::Run) {
        if cost.over_memory {
            totals.over_memory.push(cost.name.clone());
        }
        let Some(work) = &cost.work else {
            if cost.unknown.is_some() {
                totals.not_estimated.push(cost.name.clone());
            }
            continue;
        };
        totals.tokens += work.tokens.value;
        totals.train_flops += work.train_flops;
        totals.forward_flops += work.forward_flops;
        totals.peak_bytes = totals.peak_bytes.max(cost.peak_bytes);
        seconds = seconds.zip(cost.seconds).map(|(a, b)| a + b);
        device_seconds = device_seconds
            .zip(cost.seconds)
            .map(|(a, b)| a + b * cost.processes as f64);
    }
    // Known when every instance is priced, by the device or by earlier runs.
    if device.throughput.is_some() || instances.iter().any(|c| c.action == Action::Run && c.seconds.is_some()) {
        totals.seconds = seconds;
        totals.device_hours = device_seconds.map(|s| s / 3600.0);
    }
    totals
}

impl PlanCost {
    /// Each instance's estimate as a run records it (`None` where there is no work estimate).
    pub fn recorded(&self) -> Vec<Option<Recorded>> {
        self.instances
            .iter()
            .map(|c| {
                c.work.as_ref().map(|_| Recorded {
                    seconds: c.seconds,
                    peak_bytes: c.peak_bytes,
                    device: c.device.as_ref().map_or(&self.device.name, |d| &d.name).clone(),
                    source: c.seconds_source.clone(),
                    peak_source: c.peak_source.clone(),
                })
            })
            .collect()
    }
}
