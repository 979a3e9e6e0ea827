//! The Slurm executor: one `sbatch` job per ready instance, running
//! `babelflow exec` on a node against the shared store. What it trusts:
//!
//! - **done** is the instance's artifact committed in the store (atomic
//!   rename, by the job); the job's `result.json` says more (a partial
//!   artifact's fingerprint, a stage's error) but never less;
//! - **alive** is the job being in `squeue`; one that left the queue
//!   without committing is failed after `grace_s` (a shared filesystem may
//!   show the rename late), with `sacct`'s or `scontrol`'s word on why;
//! - **cancel** (Ctrl-C on the driver) is `scancel` of every job in flight.
//!
//! The driver is the only writer of lock files; jobs take no store lock.

mod queue;
pub mod script;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use babelflow_stage::{CancelFlag, ProgressSink, StageError};

use super::handoff::{self, Ended};
use crate::engine::execute::{Built, Job, JobResult};
use crate::recipe::executor::ExecutorSettings;
use crate::store::{RecipeId, Store};
pub use queue::alive;

/// Every job of this user in the queue, id → state; `None` without Slurm.
pub fn queue_states() -> Option<std::collections::HashMap<String, String>> {
    queue::Queue::new(Duration::ZERO).all().ok()
}
pub use script::Invocation;

pub struct Slurm {
    pub settings: ExecutorSettings,
    pub invocation: Invocation,
    queue: queue::Queue,
    /// Jobs in flight, instance → job id (for `status` and for the record).
    live: Mutex<std::collections::BTreeMap<String, String>>,
    /// `scontrol ping`'s verdict, asked once, before the first submission.
    controller: std::sync::OnceLock<Result<(), String>>,
}

impl Slurm {
    pub fn new(settings: ExecutorSettings, invocation: Invocation) -> Slurm {
        // Asked at most every second, whatever the number of jobs.
        let min_age = Duration::from_secs_f64(settings.poll_interval_s.min(1.0));
        Slurm {
            settings,
            invocation,
            queue: queue::Queue::new(min_age),
            live: Mutex::new(Default::default()),
            controller: std::sync::OnceLock::new(),
        }
    }

    /// Where `squeue`-visible jobs of this run are listed for `babelflow status`.
    pub fn live_path(store: &Store, recipe: &RecipeId) -> PathBuf {
        store.root().join("jobs").join(format!("{}.running.json", recipe.key))
    }

    fn set_live(&self, store: &Store, recipe: &RecipeId, instance: &str, job: Option<&str>) {
        let Ok(mut live) = self.live.lock() else { return };
        match job {
            Some(id) => live.insert(instance.to_string(), id.to_string()),
            None => live.remove(instance),
        };
        let path = Self::live_path(store, recipe);
        let _ = if live.is_empty() {
            std::fs::remove_file(&path).or(Ok(()))
        } else {
            serde_json::to_vec_pretty(&*live)
                .map_err(std::io::Error::other)
                .and_then(|bytes| crate::store::write_atomic(&path, &bytes))
        };
    }

    pub fn run(
        &self,
        job: &Job,
        store: &Store,
        recipe: &RecipeId,
        cancel: &CancelFlag,
        progress: &dyn ProgressSink,
    ) -> JobResult {
        let started = Instant::now();
        let mut job_id = None;
        let outcome = self.submit_and_wait(job, store, recipe, cancel, progress, &mut job_id);
        if job_id.is_some() {
            self.set_live(store, recipe, &job.instance.name, None);
        }
        JobResult {
            index: job.index,
            seconds: started.elapsed().as_secs_f64(),
            outcome,
            job: job_id.map(|id| format!("slurm {id}")),
        }
    }

    fn submit_and_wait(
        &self,
        job: &Job,
        store: &Store,
        recipe: &RecipeId,
        cancel: &CancelFlag,
        progress: &dyn ProgressSink,
        job_id: &mut Option<String>,
    ) -> Result<Built, StageError> {
        let inst = &job.instance;
        let fp = &job.planned.fingerprint;
        let dir = handoff::job_dir(store, fp);
        let failed = |what: &str, e: &dyn std::fmt::Display| StageError::failed(format!("{what}: {e}"));
        // Concurrent workers wait for the one asking; all get its answer.
        if let Err(e) = self.controller.get_or_init(queue::controller_up) {
            return Err(StageError::failed(format!(
                "{e}; nothing was submitted: start slurmctld or check the cluster (`sinfo`), then rerun"
            )));
        }
        handoff::begin(&dir, job)?;
        let script_path = dir.join("job.sh");
        let text = script::script(&self.invocation, inst, fp, &dir, &self.settings);
        std::fs::write(&script_path, text).map_err(|e| StageError::io(&script_path, e))?;
        let log = job_log(store, recipe, &inst.name);
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        let flags = script::sbatch_flags(inst, &self.settings, &log);
        tracing::debug!("sbatch {} {}", flags.join(" "), script_path.display());
        let id = queue::submit(&flags, &script_path).map_err(|e| failed("cannot submit the job", &e))?;
        self.queue.invalidate();
        *job_id = Some(id.clone());
        self.set_live(store, recipe, &inst.name, Some(&id));
        progress.update(0, None, &format!("Slurm job {id}"));
        tracing::info!("{}: submitted as Slurm job {id}", inst.name);

        let max_interval = Duration::from_secs_f64(self.settings.poll_interval_s);
        let grace = Duration::from_secs_f64(self.settings.grace_s);
        let mut interval = Duration::from_millis(250).min(max_interval);
        let mut gone_since: Option<Instant> = None;
        let mut last_state = String::new();
        loop {
            sleep_unless_cancelled(interval, cancel);
            if cancel.is_cancelled() {
                let _ = queue::cancel(&id);
                // Wait (bounded) for the job to go, so nothing still writes
                // into the store after the driver has said it stopped.
                let until = Instant::now() + Duration::from_secs(60);
                while Instant::now() < until {
                    self.queue.invalidate();
                    if !matches!(self.queue.state(&id), Ok(Some(ref s)) if alive(s)) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                return Err(StageError::Cancelled);
            }
            // The store first: it is the truth.
            match handoff::read_result(&dir).map(|r| r.ended) {
                Some(Ended::Built { fingerprint, missing }) if store.has_artifact(&fingerprint) => {
                    return Ok(Built {
                        dir: store.artifact_dir(&fingerprint),
                        fingerprint,
                        missing,
                    });
                }
                Some(Ended::Failed { error }) => {
                    return Err(StageError::failed(format!(
                        "{error}\n(Slurm job {id}; its output: {})",
                        log.display()
                    )));
                }
                Some(Ended::Cancelled) => {
                    return Err(StageError::failed(format!(
                        "Slurm job {id} was stopped by a signal (scancel, preemption or its time limit) before it finished; its output: {}",
                        log.display()
                    )));
                }
                _ => {}
            }
            if store.has_artifact(fp) {
                // Committed, and the job died before it could say so.
                return Ok(Built {
                    dir: store.artifact_dir(fp),
                    fingerprint: fp.clone(),
                    missing: Vec::new(),
                });
            }
            match self.queue.state(&id) {
                Ok(Some(state)) if alive(&state) => {
                    gone_since = None;
                    if state != last_state {
                        progress.update(0, None, &format!("Slurm job {id} {}", state.to_lowercase()));
                        last_state = state;
                    }
                    interval = (interval.mul_f64(1.5)).min(max_interval);
                }
                Ok(_) => {
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    interval = Duration::from_millis(250);
                    if since.elapsed() >= grace {
                        return Err(StageError::failed(format!(
                            "Slurm job {id} {} without committing its artifact; its output: {}{}",
                            queue::how_it_ended(&id),
                            log.display(),
                            tail(&log, 8)
                        )));
                    }
                }
                Err(e) => {
                    // squeue can fail for a moment (slurmctld busy or
                    // restarting): warn, keep looking, but not forever.
                    tracing::warn!("{}: cannot ask the queue about job {id}: {e}", inst.name);
                    let since = *gone_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= grace.max(Duration::from_secs(300)) {
                        return Err(StageError::failed(format!("lost track of Slurm job {id}: {e}")));
                    }
                    interval = max_interval;
                }
            }
        }
    }
}

/// The job's own output (stdout and stderr), beside the instance's log.
pub fn job_log(store: &Store, recipe: &RecipeId, instance: &str) -> PathBuf {
    let log = store.log_path(recipe, instance);
    log.with_extension("slurm.log")
}

fn sleep_unless_cancelled(total: Duration, cancel: &CancelFlag) {
    let until = Instant::now() + total;
    while Instant::now() < until && !cancel.is_cancelled() {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    if last.is_empty() {
        return String::new();
    }
    let body: Vec<String> = last.iter().rev().map(|l| format!("  | {l}")).collect();
    format!("\n  its last lines:\n{}", body.join("\n"))
}
