//! Running one instance: build its outputs in a temporary folder, check that
//! every declared output exists, write the manifest, then rename the folder
//! into the store. Nothing partial ever carries a fingerprint's name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use babelflow_stage::{CancelFlag, DeviceRequest, InputItem, ProgressSink, StageContext, StageError};
use serde_json::json;

use super::plan::PlannedInstance;
use crate::recipe::expand::Source;
use crate::recipe::Instance;
use crate::store::Store;

/// Everything a worker needs to run one instance, owned so it can cross threads.
pub struct Job {
    pub index: usize,
    pub instance: Instance,
    pub planned: PlannedInstance,
    /// Fingerprints of every instance, to find producers' artifacts.
    pub producer_dirs: BTreeMap<usize, PathBuf>,
    pub threads: usize,
}

pub struct JobResult {
    pub index: usize,
    pub seconds: f64,
    pub outcome: Result<PathBuf, StageError>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn execute(
    job: &Job,
    store: &Store,
    recipe: &str,
    base_dir: &std::path::Path,
    cancel: &CancelFlag,
    progress: &dyn ProgressSink,
) -> JobResult {
    let started = Instant::now();
    let outcome = build(job, store, recipe, base_dir, cancel, progress, started);
    JobResult {
        index: job.index,
        seconds: started.elapsed().as_secs_f64(),
        outcome,
    }
}

fn build(
    job: &Job,
    store: &Store,
    recipe: &str,
    base_dir: &std::path::Path,
    cancel: &CancelFlag,
    progress: &dyn ProgressSink,
    started: Instant,
) -> Result<PathBuf, StageError> {
    let inst = &job.instance;
    let fp = &job.planned.fingerprint;
    let store_err = |e: crate::store::StoreError| StageError::failed(e.to_string());
    let temp = store.new_temp(fp).map_err(store_err)?;
    let result = (|| {
        let resume = store.resume_dir(fp);
        std::fs::create_dir_all(&resume).map_err(|e| StageError::io(&resume, e))?;
        let log_path = store.log_path(recipe, &inst.name);
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        let log = std::fs::File::create(&log_path).map_err(|e| StageError::io(&log_path, e))?;

        let mut inputs = BTreeMap::new();
        for binding in &inst.inputs {
            let items: Vec<InputItem> = binding
                .sources
                .iter()
                .map(|s| match s {
                    Source::Artifact { instance, output } => InputItem {
                        path: job.producer_dirs[instance].join(output),
                        instance: None,
                        label: None,
                    },
                    Source::File { path } => InputItem {
                        path: path.clone(),
                        instance: None,
                        label: None,
                    },
                })
                .collect();
            inputs.insert(binding.name.clone(), items);
        }
        // Name the producing instances (the planner kept them in the lock records).
        for (name, records) in &job.planned.inputs {
            if let Some(items) = inputs.get_mut(name) {
                for (item, record) in items.iter_mut().zip(records) {
                    item.instance = record.instance.clone();
                    item.label = record
                        .instance
                        .as_deref()
                        .and_then(|n| n.split_once('@'))
                        .map(|(_, l)| l.to_string());
                }
            }
        }

        let mut ctx = StageContext::new(
            &inst.name,
            &inst.params,
            &inputs,
            &temp,
            &resume,
            base_dir,
            job.threads,
            DeviceRequest {
                backend: inst.backend.clone(),
                index: inst.device,
            },
            cancel.clone(),
            progress,
            Some(log),
        );
        ctx.shared_cache = Some(store.cache_dir(inst.kind.name()));
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inst.kind.run(&ctx))).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(StageError::failed(format!("the stage panicked: {message}")))
            });
        if let Err(e) = &ran {
            ctx.log_file_only(&format!("error: {e}"));
        }
        ran?;
        for output in &inst.outputs {
            if !temp.join(output).exists() {
                return Err(StageError::failed(format!(
                    "the stage finished without writing its declared output `{output}`"
                )));
            }
        }
        let manifest = json!({
            "babelflow_version": env!("CARGO_PKG_VERSION"),
            "recipe": recipe,
            "instance": inst.name,
            "kind": inst.kind.name(),
            "code_version": inst.kind.code_version(),
            "fingerprint": fp,
            "params": inst.params.as_map(),
            "inputs": job.planned.inputs,
            "outputs": inst.outputs,
            "backend": inst.backend,
            "device": inst.device,
            "threads": job.threads,
            "finished_at": now_unix(),
            "duration_s": started.elapsed().as_secs_f64(),
            "notes": ctx.take_notes(),
        });
        drop(ctx);
        std::fs::copy(&log_path, temp.join("log.txt")).map_err(|e| StageError::io(&log_path, e))?;
        let manifest_path = temp.join("manifest.json");
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| StageError::failed(e.to_string()))?;
        std::fs::write(&manifest_path, text).map_err(|e| StageError::io(&manifest_path, e))?;
        let dir = store.commit(&temp, fp).map_err(store_err)?;
        let _ = std::fs::remove_dir_all(&resume);
        Ok(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}
