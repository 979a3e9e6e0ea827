//! Runs the plan on a pool of worker threads (crossbeam channels). The main
//! thread dispatches ready instances while their resources fit: CPU slots
//! (`--jobs`) and one slot per GPU device.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use babelflow_stage::{CancelFlag, StageError};
use crossbeam_channel::{unbounded, RecvTimeoutError};

use super::execute::{execute, Job, JobResult};
use super::plan::{Action, PlannedInstance};
use super::progress::Progress;
use crate::graph::Graph;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    Ran {
        seconds: f64,
    },
    Failed {
        seconds: f64,
        error: String,
    },
    Cancelled,
    /// Not run: not selected, or an upstream instance failed.
    Skipped {
        why: String,
    },
}

pub struct SchedulerOptions {
    pub jobs: usize,
    pub keep_going: bool,
}

/// Called on the main thread as each instance finishes (for the lock file).
pub type OnDone<'a> = dyn FnMut(usize, &PlannedInstance, &Outcome) + 'a;

#[allow(clippy::too_many_arguments)]
pub fn run(
    graph: &Graph,
    planned: &[PlannedInstance],
    store: &Arc<Store>,
    recipe: &str,
    base_dir: &std::path::Path,
    options: &SchedulerOptions,
    cancel: &CancelFlag,
    progress: &Arc<Progress>,
    on_done: &mut OnDone,
) -> Vec<Outcome> {
    let n = graph.instances.len();
    // planned[] is in graph.instances order.
    debug_assert_eq!(planned.len(), n);
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    for (i, p) in planned.iter().enumerate() {
        match p.action {
            Action::Cached => outcomes[i] = Some(Outcome::Cached),
            Action::Skip => {
                outcomes[i] = Some(Outcome::Skipped {
                    why: p.reasons.join("; "),
                })
            }
            Action::Run => {}
        }
    }
    let jobs = options.jobs.max(1);
    let (job_tx, job_rx) = unbounded::<Job>();
    let (result_tx, result_rx) = unbounded::<JobResult>();
    let mut running: BTreeMap<usize, (usize, Option<usize>)> = BTreeMap::new();
    let mut cpu_free = jobs;
    let mut gpus_busy: BTreeSet<usize> = BTreeSet::new();
    let mut stopping = false;

    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let job_rx = job_rx.clone();
            let result_tx = result_tx.clone();
            let store = Arc::clone(store);
            let cancel = cancel.clone();
            let progress = Arc::clone(progress);
            scope.spawn(move || {
                for job in job_rx.iter() {
                    let bar = progress.start(&job.instance.name);
                    let result = execute(&job, &store, recipe, base_dir, &cancel, &bar);
                    drop(bar);
                    if result_tx.send(result).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(result_tx);

        loop {
            if cancel.is_cancelled() {
                stopping = true;
            }
            // Dispatch everything ready that fits, in topological order.
            if !stopping {
                for &i in &graph.order {
                    if outcomes[i].is_some() || running.contains_key(&i) {
                        continue;
                    }
                    let deps_done = graph.deps[i]
                        .iter()
                        .all(|&d| matches!(outcomes[d], Some(Outcome::Cached | Outcome::Ran { .. })));
                    let failed_dep = graph.deps[i].iter().find(|&&d| {
                        matches!(
                            outcomes[d],
                            Some(Outcome::Failed { .. } | Outcome::Cancelled | Outcome::Skipped { .. })
                        )
                    });
                    if let Some(&d) = failed_dep {
                        outcomes[i] = Some(Outcome::Skipped {
                            why: format!("upstream {} did not finish", graph.instances[d].name),
                        });
                        continue;
                    }
                    if !deps_done {
                        continue;
                    }
                    let inst = &graph.instances[i];
                    let cpus = inst.resources.cpus.min(jobs);
                    let gpu = inst.resources.gpu.then_some(inst.device);
                    if cpus > cpu_free || gpu.is_some_and(|d| gpus_busy.contains(&d)) {
                        continue;
                    }
                    cpu_free -= cpus;
                    if let Some(d) = gpu {
                        gpus_busy.insert(d);
                    }
                    running.insert(i, (cpus, gpu));
                    progress.line(&format!("▶ {} ({})", inst.name, planned[i].reasons.join("; ")));
                    let producer_dirs = graph.deps[i]
                        .iter()
                        .map(|&d| (d, store.artifact_dir(&planned[d].fingerprint)))
                        .collect();
                    let job = Job {
                        index: i,
                        instance: inst.clone(),
                        planned: planned[i].clone(),
                        producer_dirs,
                        threads: cpus,
                    };
                    if job_tx.send(job).is_err() {
                        break;
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            let result = match result_rx.recv_timeout(std::time::Duration::from_millis(200)) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let Some((cpus, gpu)) = running.remove(&result.index) else {
                continue;
            };
            cpu_free += cpus;
            if let Some(d) = gpu {
                gpus_busy.remove(&d);
            }
            let name = &graph.instances[result.index].name;
            let outcome = match result.outcome {
                Ok(_) => {
                    progress.line(&format!("✓ {name} ({:.1}s)", result.seconds));
                    Outcome::Ran {
                        seconds: result.seconds,
                    }
                }
                Err(StageError::Cancelled) => {
                    progress.line(&format!("✗ {name} cancelled"));
                    Outcome::Cancelled
                }
                Err(e) => {
                    progress.line(&format!(
                        "✗ {name} failed after {:.1}s:\n{}",
                        result.seconds,
                        indent(&e.to_string())
                    ));
                    if !options.keep_going {
                        stopping = true;
                    }
                    Outcome::Failed {
                        seconds: result.seconds,
                        error: e.to_string(),
                    }
                }
            };
            on_done(result.index, &planned[result.index], &outcome);
            outcomes[result.index] = Some(outcome);
        }
        drop(job_tx);
    });

    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or(Outcome::Skipped {
                why: if cancel.is_cancelled() {
                    "run cancelled".into()
                } else {
                    "run stopped after a failure (use --keep-going to continue other branches)".into()
                },
            })
        })
        .collect()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
