//! Runs the plan on a pool of worker threads (crossbeam channels). The main
//! thread dispatches ready instances while their resources fit: CPU slots
//! (`--jobs`) and one slot per GPU device.
//!
//! An instance whose producer failed is skipped, except for kinds that run
//! with missing inputs (the report): they wait until every producer has
//! settled, then run without the missing ones, even after a failure stopped
//! the rest of the run, so a failed run still ends in a report saying what
//! is missing and why.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use babelflow_stage::{CancelFlag, StageError, Upstream, UpstreamOutcome};
use crossbeam_channel::{unbounded, RecvTimeoutError};

use super::execute::{Job, JobResult, Producer};
use super::plan::{Action, PlannedInstance};
use super::progress::Progress;
use crate::executor::Executor;
use crate::graph::Graph;
use crate::store::{RecipeId, Store};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Cached,
    Ran {
        seconds: f64,
    },
    /// Ran without the inputs of failed or skipped producers (named); its
    /// artifact is stored under a fingerprint of its own, `artifact`.
    Partial {
        seconds: f64,
        missing: Vec<String>,
        artifact: String,
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

impl Outcome {
    fn has_artifact(&self) -> bool {
        matches!(self, Outcome::Cached | Outcome::Ran { .. })
    }

    /// Why a dependent cannot read this instance's artifact (`None` when it can).
    fn why_missing(&self) -> Option<String> {
        // One line, as a table cell: the stage's error folded, cut at 300 characters.
        let folded = |s: &str| {
            let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
            match line.char_indices().nth(300) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => line,
            }
        };
        match self {
            Outcome::Cached | Outcome::Ran { .. } => None,
            Outcome::Partial { missing, .. } => Some(format!("partial (made without {})", missing.join(", "))),
            Outcome::Failed { error, .. } => Some(format!("failed: {}", folded(error))),
            Outcome::Cancelled => Some("cancelled".into()),
            Outcome::Skipped { why } => Some(format!("skipped: {why}")),
        }
    }
}

const STOPPED: &str = "run stopped after a failure (use --keep-going to continue other branches)";

pub struct SchedulerOptions {
    /// Instances in flight at once: CPU slots locally, jobs in the queue on a cluster.
    pub jobs: usize,
    pub keep_going: bool,
    pub executor: Arc<Executor>,
}

/// Called on the main thread as each instance finishes (for the lock file).
pub type OnDone<'a> = dyn FnMut(usize, &PlannedInstance, &Outcome, Option<&str>) + 'a;

#[allow(clippy::too_many_arguments)]
pub fn run(
    graph: &Graph,
    planned: &[PlannedInstance],
    store: &Arc<Store>,
    recipe: &RecipeId,
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
    let mut wound_down = false;
    // Failure messages already printed, each with the first instance that
    // had it: a cause shared by several instances (a cluster that is down,
    // a full disk) is said once, then referred to.
    let said: std::sync::Mutex<std::collections::HashMap<String, String>> = Default::default();
    let first_with = |text: &str, name: &str| -> Option<String> {
        let mut said = said.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match said.get(text) {
            Some(first) => Some(first.clone()),
            None => {
                said.insert(text.to_string(), name.to_string());
                None
            }
        }
    };
    let tolerant: Vec<bool> = graph
        .instances
        .iter()
        .map(|i| i.kind.runs_with_missing_inputs())
        .collect();

    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let job_rx = job_rx.clone();
            let result_tx = result_tx.clone();
            let store = Arc::clone(store);
            let cancel = cancel.clone();
            let progress = Arc::clone(progress);
            let executor = Arc::clone(&options.executor);
            scope.spawn(move || {
                for mut job in job_rx.iter() {
                    let retries = job
                        .instance
                        .policy
                        .retries
                        .unwrap_or_else(|| executor.default_retries());
                    let mut attempt = 0;
                    let result = loop {
                        let bar = progress.start(&job.instance.name);
                        let result = executor.run(&job, &store, recipe, base_dir, &cancel, &bar);
                        drop(bar);
                        match &result.outcome {
                            Err(e)
                                if !matches!(e, StageError::Cancelled)
                                    && attempt < retries
                                    && !cancel.is_cancelled() =>
                            {
                                attempt += 1;
                                let name = &job.instance.name;
                                let (next, of) = (attempt + 1, retries + 1);
                                progress.line(&match first_with(&e.to_string(), name) {
                                    Some(first) => format!(
                                        "↻ {name} failed (the same cause as {first}); retrying (attempt {next} of {of})"
                                    ),
                                    None => format!(
                                        "↻ {name} failed; retrying (attempt {next} of {of}):\n{}",
                                        indent(&e.to_string())
                                    ),
                                });
                                // A retry resumes from the checkpoint; `--force` meant the first attempt.
                                job.planned.forced = false;
                            }
                            _ => break result,
                        }
                    };
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
                        .all(|&d| outcomes[d].as_ref().is_some_and(Outcome::has_artifact));
                    let deps_settled = graph.deps[i].iter().all(|&d| outcomes[d].is_some());
                    let failed_dep = graph.deps[i]
                        .iter()
                        .find(|&&d| outcomes[d].as_ref().is_some_and(|o| !o.has_artifact()));
                    if let Some(&d) = failed_dep {
                        if !tolerant[i] {
                            outcomes[i] = Some(Outcome::Skipped {
                                why: format!("upstream {} did not finish", graph.instances[d].name),
                            });
                            continue;
                        }
                        if !deps_settled {
                            continue;
                        }
                    } else if !deps_done {
                        continue;
                    }
                    let inst = &graph.instances[i];
                    // Locally instances are packed under the CPU slots and
                    // one per GPU; on a cluster the scheduler there packs
                    // them, and a slot here is one job in flight.
                    let (cpus, gpu, threads) = match options.executor.as_ref() {
                        Executor::Local(_) => {
                            // Each rank of a data-parallel instance has its own threads.
                            let ranks = inst.resources.processes();
                            let cpus = (inst.resources.cpus * ranks).min(jobs);
                            (
                                cpus,
                                inst.resources.gpu.then_some(inst.device),
                                inst.resources.cpus.min(jobs),
                            )
                        }
                        Executor::Slurm(_) => (1, None, inst.resources.cpus),
                    };
                    if cpus > cpu_free || gpu.is_some_and(|d| gpus_busy.contains(&d)) {
                        continue;
                    }
                    cpu_free -= cpus;
                    if let Some(d) = gpu {
                        gpus_busy.insert(d);
                    }
                    running.insert(i, (cpus, gpu));
                    progress.line(&format!("▶ {} ({})", inst.name, planned[i].reasons.join("; ")));
                    let producers = graph.deps[i]
                        .iter()
                        .map(|&d| {
                            let outcome = outcomes[d].as_ref();
                            let producer = Producer {
                                name: graph.instances[d].name.clone(),
                                dir: outcome
                                    .is_some_and(Outcome::has_artifact)
                                    .then(|| store.artifact_dir(&planned[d].fingerprint)),
                                why_missing: outcome.and_then(Outcome::why_missing),
                            };
                            (d, producer)
                        })
                        .collect();
                    let job = Job {
                        index: i,
                        instance: inst.clone(),
                        planned: planned[i].clone(),
                        producers,
                        upstream: upstream_of(graph, planned, store, &outcomes, i),
                        threads,
                        alone: options.jobs == 1,
                        world: babelflow_stage::distributed::single_process(),
                    };
                    if job_tx.send(job).is_err() {
                        break;
                    }
                }
            }
            if running.is_empty() {
                if stopping && !wound_down && !cancel.is_cancelled() && tolerant.iter().any(|&t| t) {
                    // Settle what will not run now, so the instances that run
                    // with missing inputs can still say what is missing.
                    wound_down = true;
                    stopping = false;
                    for &i in &graph.order {
                        if outcomes[i].is_none() && !tolerant[i] {
                            outcomes[i] = Some(Outcome::Skipped { why: STOPPED.into() });
                        }
                    }
                    continue;
                }
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
                Ok(built) if !built.missing.is_empty() => {
                    progress.line(&format!(
                        "◐ {name} ({:.1}s) made without {}",
                        result.seconds,
                        built.missing.join(", ")
                    ));
                    Outcome::Partial {
                        seconds: result.seconds,
                        missing: built.missing,
                        artifact: built.fingerprint,
                    }
                }
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
                    // A retried instance said its cause at its first attempt.
                    let text = e.to_string();
                    match first_with(&text, name) {
                        Some(first) if &first == name => progress.line(&format!(
                            "✗ {name} failed after {:.1}s: the same cause as at its first attempt (above)",
                            result.seconds
                        )),
                        Some(first) => progress.line(&format!(
                            "✗ {name} failed after {:.1}s: the same cause as {first}",
                            result.seconds
                        )),
                        None => progress.line(&format!(
                            "✗ {name} failed after {:.1}s:\n{}",
                            result.seconds,
                            indent(&text)
                        )),
                    }
                    if !options.keep_going {
                        stopping = true;
                    }
                    Outcome::Failed {
                        seconds: result.seconds,
                        error: e.to_string(),
                    }
                }
            };
            on_done(result.index, &planned[result.index], &outcome, result.job.as_deref());
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
                    STOPPED.into()
                },
            })
        })
        .collect()
}

/// Every instance `i` depends on, directly or not, in run order, with how
/// it fared so far in this run.
fn upstream_of(
    graph: &Graph,
    planned: &[PlannedInstance],
    store: &Store,
    outcomes: &[Option<Outcome>],
    i: usize,
) -> Vec<Upstream> {
    let mut seen = BTreeSet::new();
    let mut stack = graph.deps[i].clone();
    while let Some(d) = stack.pop() {
        if seen.insert(d) {
            stack.extend(&graph.deps[d]);
        }
    }
    graph
        .order
        .iter()
        .filter(|d| seen.contains(d))
        .map(|&d| {
            let outcome = match &outcomes[d] {
                Some(Outcome::Cached) => UpstreamOutcome::Cached,
                Some(Outcome::Ran { seconds }) => UpstreamOutcome::Ran { seconds: *seconds },
                Some(other) => UpstreamOutcome::Missing {
                    why: other.why_missing().unwrap_or_default(),
                },
                None => UpstreamOutcome::Missing { why: "not run".into() },
            };
            let has_artifact = outcomes[d].as_ref().is_some_and(Outcome::has_artifact);
            Upstream {
                instance: graph.instances[d].name.clone(),
                kind: graph.instances[d].kind.name().to_string(),
                artifact: has_artifact.then(|| store.artifact_dir(&planned[d].fingerprint)),
                outcome,
            }
        })
        .collect()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
