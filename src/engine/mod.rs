//! The engine: a loaded, checked pipeline, its plan against the store, and
//! its execution. The CLI (`src/cli`) is a thin layer over this.

pub mod calibrate;
pub mod device;
pub mod estimate;
pub mod execute;
pub mod history;
pub mod plan;
pub mod progress;
pub mod scheduler;
pub mod throughput;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use babelflow_stage::CancelFlag;

use crate::diagnostics::Diagnostics;
use crate::graph::Graph;
use crate::recipe::executor::ExecutorSettings;
use crate::recipe::{expand, RecipeSource};
use crate::registry::Registry;
use crate::store::lockfile::{LockEntry, LockFile};
use crate::store::{FileIndex, RecipeId, Store, StoreError};
pub use plan::{Action, PlannedInstance, Selection};
pub use scheduler::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Recipe(#[from] Diagnostics),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("no instance or stage named `{name}` in the recipe{}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    UnknownSelection { name: String, hint: Option<String> },
}

/// A recipe loaded and validated against the registry.
pub struct Pipeline {
    pub source: RecipeSource,
    pub name: String,
    /// How the store knows this recipe (lock file, logs).
    pub id: RecipeId,
    pub graph: Graph,
    /// The recipe's `executor:` (the CLI may override it).
    pub executor: ExecutorSettings,
}

impl Pipeline {
    pub fn load(path: &Path, sets: &[String], registry: &Registry) -> Result<Pipeline, Diagnostics> {
        let source = RecipeSource::load(path, sets)?;
        let (instances, mut diags) = expand::expand(&source, registry);
        let executor = crate::recipe::executor::settings(&source, &mut diags);
        let graph = match Graph::new(&source, instances) {
            Ok(graph) => graph,
            Err(cycle) => {
                diags.0.extend(cycle.0);
                return Err(diags);
            }
        };
        if !diags.is_empty() {
            return Err(diags);
        }
        let name = source.name();
        let id = RecipeId::new(&name, &source.path);
        Ok(Pipeline {
            source,
            name,
            id,
            graph,
            executor,
        })
    }

    /// The backend most instances run on (`cpu` unless the recipe says otherwise).
    pub fn backend(&self) -> String {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for inst in &self.graph.instances {
            *counts.entry(inst.backend.as_str()).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or_else(|| "cpu".to_string(), |(b, _)| b.to_string())
    }

    /// The store folder: `--store`, else `BABELFLOW_STORE`, else `.babelflow/` beside the recipe.
    pub fn default_store(&self, explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os("BABELFLOW_STORE") {
            return PathBuf::from(p);
        }
        self.source.dir.join(".babelflow")
    }

    fn check_selection(&self, names: &[String]) -> Result<(), EngineError> {
        for name in names {
            let known = self.graph.instances.iter().any(|i| i.name == *name || i.stage == *name);
            if !known {
                let candidates = self.graph.instances.iter().map(|i| i.name.as_str());
                return Err(EngineError::UnknownSelection {
                    name: name.clone(),
                    hint: crate::diagnostics::did_you_mean(name, candidates),
                });
            }
        }
        Ok(())
    }

    pub fn plan(&self, store: &Store, selection: &Selection) -> Result<Vec<PlannedInstance>, EngineError> {
        self.check_selection(&selection.only)?;
        self.check_selection(&selection.force)?;
        let files = FileIndex::load(&store.file_index_path());
        let lock = LockFile::load(&store.lockfile_path(&self.id));
        let planned = plan::plan(&self.graph, store, &files, &lock, &self.source.dir, selection)?;
        // The index is only a cache: failing to save it costs speed, not
        // correctness. A store that does not exist yet is not made by looking.
        if store.exists() {
            let _ = files.save();
        }
        Ok(planned)
    }

    /// Adds to the manifest of each instance that ran the work it did, by
    /// the estimate made now that every input exists (before the run a
    /// text's size may have been a guess, a tokenizer's vocabulary an upper
    /// bound): later estimates of the same shape, which see the store as
    /// this one does, find it by its shape and scale its time by its FLOPs.
    /// A manifest that cannot be updated only loses that hint.
    fn record_work_done(
        &self,
        store: &Store,
        selection: &Selection,
        planned: &[PlannedInstance],
        outcomes: &[Outcome],
    ) {
        let Ok(now) = self.plan(store, selection) else {
            return;
        };
        // Everything that ran is cached now: the estimate reads no history for it.
        let device = device::Device::this_machine(&self.backend(), store.root());
        let ran: Vec<bool> = outcomes.iter().map(|o| matches!(o, Outcome::Ran { .. })).collect();
        let cost = estimate::estimate_these(&self.graph, &now, store, &device, &ran);
        for ((p, outcome), c) in planned.iter().zip(outcomes).zip(&cost.instances) {
            let (Outcome::Ran { .. }, Some(work)) = (outcome, &c.work) else {
                continue;
            };
            let path = store.artifact_dir(&p.fingerprint).join("manifest.json");
            let Some(mut manifest) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            else {
                continue;
            };
            manifest["work_done"] = history::work_done(&p.kind, work, c.processes);
            if let Ok(bytes) = serde_json::to_vec_pretty(&manifest) {
                if let Err(e) = crate::store::write_atomic(&path, &bytes) {
                    tracing::warn!("cannot record the work done in {}: {e}", path.display());
                }
            }
            if let Err(e) = store.log_run(&history::run_line(&manifest)) {
                tracing::warn!("cannot log the run in {}: {e}", store.runs_log_path().display());
            }
        }
    }

    /// Plans and executes; returns the plan and each instance's outcome.
    pub fn run(
        &self,
        store: Arc<Store>,
        selection: &Selection,
        options: &scheduler::SchedulerOptions,
        cancel: &CancelFlag,
        progress: Arc<progress::Progress>,
        wait_for_lock: bool,
    ) -> Result<(Vec<PlannedInstance>, Vec<Outcome>), EngineError> {
        let _lock = store.lock(wait_for_lock, || {
            progress.line("another babelflow run holds the store lock; waiting for it to finish…")
        })?;
        store.clean_temp()?;
        let mut planned = self.plan(&store, selection)?;
        // What the estimate says now, for the manifests to keep beside what
        // happens (not worth reading inputs for when nothing runs).
        if planned.iter().any(|p| p.action == Action::Run) {
            let device = device::Device::this_machine(&self.backend(), store.root());
            let running: Vec<bool> = planned.iter().map(|p| p.action == Action::Run).collect();
            let cost = estimate::estimate_these(&self.graph, &planned, &store, &device, &running);
            for (p, recorded) in planned.iter_mut().zip(cost.recorded()) {
                p.estimate = recorded;
            }
        }
        let lock_path = store.lockfile_path(&self.id);
        let lockfile = Mutex::new(LockFile::load(&lock_path));
        if let Ok(mut l) = lockfile.lock() {
            l.recipe = self.id.path.display().to_string();
        }
        let mut on_done = |i: usize, p: &PlannedInstance, outcome: &Outcome, job: Option<&str>| {
            let inst = &self.graph.instances[i];
            let (status, error, seconds, artifact) = match outcome {
                Outcome::Ran { seconds } => ("ok", None, *seconds, None),
                Outcome::Partial {
                    seconds,
                    missing,
                    artifact,
                } => (
                    "partial",
                    Some(format!("made without {}", missing.join(", "))),
                    *seconds,
                    Some(artifact.clone()),
                ),
                Outcome::Failed { seconds, error } => ("failed", Some(error.clone()), *seconds, None),
                Outcome::Cancelled => ("cancelled", None, 0.0, None),
                _ => return,
            };
            if let Ok(mut l) = lockfile.lock() {
                l.instances.insert(
                    inst.name.clone(),
                    LockEntry {
                        kind: inst.kind.name().to_string(),
                        code_version: inst.kind.code_version().to_string(),
                        fingerprint: p.fingerprint.clone(),
                        params: serde_json::Value::Object(inst.params.as_map().clone()),
                        inputs: p.inputs.clone(),
                        status: status.to_string(),
                        artifact,
                        error,
                        duration_s: seconds,
                        finished_at: execute::now_unix(),
                        backend: inst.backend.clone(),
                        job: job.map(str::to_string),
                    },
                );
                // Saved after every instance so a killed run keeps what finished.
                if let Err(e) = l.save(&lock_path) {
                    tracing::warn!(
                        "cannot save the lock file {}: {e}; the results in the store are safe, but the next \
                         `plan` may explain less well why instances run",
                        lock_path.display()
                    );
                }
            }
        };
        let outcomes = scheduler::run(
            &self.graph,
            &planned,
            &store,
            &self.id,
            &self.source.dir,
            options,
            cancel,
            &progress,
            &mut on_done,
        );
        if outcomes.iter().any(|o| matches!(o, Outcome::Ran { .. })) {
            self.record_work_done(&store, selection, &planned, &outcomes);
        }
        // Cached instances are recorded too, so `status` knows their artifacts.
        if let Ok(mut l) = lockfile.lock() {
            for (i, p) in planned.iter().enumerate() {
                if p.action == Action::Cached && l.instances.get(&p.name).is_none_or(|e| e.fingerprint != p.fingerprint)
                {
                    let inst = &self.graph.instances[i];
                    l.instances.insert(
                        p.name.clone(),
                        LockEntry {
                            kind: p.kind.clone(),
                            code_version: inst.kind.code_version().to_string(),
                            fingerprint: p.fingerprint.clone(),
                            params: serde_json::Value::Object(inst.params.as_map().clone()),
                            inputs: p.inputs.clone(),
                            status: "ok".into(),
                            artifact: None,
                            error: None,
                            duration_s: 0.0,
                            finished_at: execute::now_unix(),
                            backend: inst.backend.clone(),
                            job: None,
                        },
                    );
                }
            }
            let names: std::collections::BTreeSet<&str> = planned.iter().map(|p| p.name.as_str()).collect();
            l.instances.retain(|k, _| names.contains(k.as_str()));
            let _ = l.save(&lock_path);
        }
        Ok((planned, outcomes))
    }
}
