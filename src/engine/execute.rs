//! Running one instance: build its outputs in a temporary folder, check that
//! every declared output exists, write the manifest, then rename the folder
//! into the store. Nothing partial ever carries a fingerprint's name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use babelflow_stage::{
    CancelFlag, Collective, DeviceRequest, InputItem, MissingInput, ProgressSink, StageContext, StageError, Upstream,
};
use serde_json::json;

use super::plan::PlannedInstance;
use crate::recipe::expand::Source;
use crate::recipe::{Instance, LOCAL_RANK_DEVICE};
use crate::store::{RecipeId, Store};

/// Everything a worker needs to run one instance, owned so it can cross threads.
pub struct Job {
    pub index: usize,
    pub instance: Instance,
    pub planned: PlannedInstance,
    /// The instances this one reads from, by graph index.
    pub producers: BTreeMap<usize, Producer>,
    /// Everything upstream and how it fared (for the report's run table).
    pub upstream: Vec<Upstream>,
    pub threads: usize,
    /// Nothing else runs in this process meanwhile (`--jobs 1`): the peak
    /// memory is started over, so the manifest's is this instance's own.
    pub alone: bool,
    /// The processes running this instance together: one, except in a
    /// data-parallel `babelflow exec` started by `mpirun` or `srun`.
    pub world: Arc<dyn Collective>,
}

/// A producing instance: its artifact folder, or why it has none.
#[derive(Debug, Clone)]
pub struct Producer {
    pub name: String,
    pub dir: Option<PathBuf>,
    pub why_missing: Option<String>,
}

pub struct JobResult {
    pub index: usize,
    pub seconds: f64,
    pub outcome: Result<Built, StageError>,
    /// The cluster job that ran it (`slurm 1234`); `None` when it ran here.
    pub job: Option<String>,
}

/// A committed artifact.
pub struct Built {
    pub dir: PathBuf,
    /// The planned fingerprint, or for a partial artifact its own.
    pub fingerprint: String,
    /// Producers it was made without (empty for a complete artifact).
    pub missing: Vec<String>,
}

/// A partial artifact's fingerprint: the planned one and what was missing,
/// so it never satisfies the complete plan, and a later partial run with
/// the same gaps finds it again.
pub fn partial_fingerprint(planned: &str, missing: &[String]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(planned.as_bytes());
    for m in missing {
        hasher.update(b"\0missing:");
        hasher.update(m.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// A stage's error in the user's terms: a path into another instance's
/// artifact becomes `instance:output/...` (the recipe's own reference
/// syntax) and one into this instance's temporary folder `instance:...`,
/// so no message makes the user decode a fingerprint.
fn readable(message: &str, job: &Job, temp: &std::path::Path, store: &Store) -> String {
    let mut text = message.to_string();
    let mut named: Vec<(String, String)> = job
        .producers
        .values()
        .filter_map(|p| Some((p.dir.as_ref()?.display().to_string(), p.name.clone())))
        .collect();
    named.push((temp.display().to_string(), job.instance.name.clone()));
    named.push((
        store.resume_dir(&job.planned.fingerprint).display().to_string(),
        format!("{} (resume folder)", job.instance.name),
    ));
    for (dir, name) in named {
        text = text.replace(&format!("{dir}/"), &format!("{name}:"));
        text = text.replace(&dir, &name);
    }
    text
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
    recipe: &RecipeId,
    base_dir: &std::path::Path,
    cancel: &CancelFlag,
    progress: &dyn ProgressSink,
) -> JobResult {
    if job.alone {
        // The peak from here is this instance's: not what the plan or an
        // earlier instance freed and the allocator kept for reuse.
        babelflow_stage::memory::release_freed();
        babelflow_stage::memory::reset_peak();
    }
    let started = Instant::now();
    let outcome = build(job, store, recipe, base_dir, cancel, progress, started);
    JobResult {
        index: job.index,
        seconds: started.elapsed().as_secs_f64(),
        outcome,
        job: None,
    }
}

fn build(
    job: &Job,
    store: &Store,
    recipe: &RecipeId,
    base_dir: &std::path::Path,
    cancel: &CancelFlag,
    progress: &dyn ProgressSink,
    started: Instant,
) -> Result<Built, StageError> {
    let inst = &job.instance;
    let world = &job.world;
    let store_err = |e: crate::store::StoreError| StageError::failed(e.to_string());
    let planned_fp = &job.planned.fingerprint;
    let temp = store.new_temp(planned_fp).map_err(store_err)?;
    let result = (|| {
        let resume = store.resume_dir(planned_fp);
        // Of several ranks, rank 0 owns the resume folder, the log, the
        // outputs and the commit; the others only read the checkpoint, after
        // rank 0 has set the folder up (the barrier).
        if world.is_root() {
            if job.planned.forced && resume.exists() {
                // `--force` means from scratch: a checkpoint of an earlier
                // attempt (even a broken one) must not be resumed.
                std::fs::remove_dir_all(&resume).map_err(|e| StageError::io(&resume, e))?;
            }
            std::fs::create_dir_all(&resume).map_err(|e| StageError::io(&resume, e))?;
        }
        world.barrier();
        let mut log_path = store.log_path(recipe, &inst.name);
        if !world.is_root() {
            log_path = log_path.with_extension(format!("rank{}.log", world.rank()));
        }
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        let log = std::fs::File::create(&log_path).map_err(|e| StageError::io(&log_path, e))?;

        let mut inputs = BTreeMap::new();
        let mut missing = Vec::new();
        for binding in &inst.inputs {
            let mut items = Vec::new();
            for source in &binding.sources {
                match source {
                    Source::Artifact { instance, output } => {
                        let producer = &job.producers[instance];
                        let Some(dir) = &producer.dir else {
                            missing.push(MissingInput {
                                input: binding.name.clone(),
                                instance: producer.name.clone(),
                                why: producer.why_missing.clone().unwrap_or_default(),
                            });
                            continue;
                        };
                        items.push(InputItem {
                            path: dir.join(output),
                            instance: Some(producer.name.clone()),
                            label: producer.name.split_once('@').map(|(_, l)| l.to_string()),
                        });
                    }
                    Source::File { path } => items.push(InputItem {
                        path: path.clone(),
                        instance: None,
                        label: None,
                    }),
                }
            }
            inputs.insert(binding.name.clone(), items);
        }
        let mut missing_names: Vec<String> = missing.iter().map(|m| m.instance.clone()).collect();
        missing_names.sort();
        missing_names.dedup();
        let fp = &if missing_names.is_empty() {
            planned_fp.clone()
        } else {
            partial_fingerprint(planned_fp, &missing_names)
        };

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
                index: if inst.device == LOCAL_RANK_DEVICE {
                    world.local_rank()
                } else {
                    inst.device
                },
            },
            cancel.clone(),
            progress,
            Some(log),
        );
        ctx.shared_cache = Some(store.cache_dir(inst.kind.name()));
        ctx.upstream = job.upstream.clone();
        ctx.missing = missing.clone();
        ctx.world = Arc::clone(world);
        if world.world_size() > 1 {
            if !inst.kind.data_parallel() {
                return Err(StageError::failed(format!(
                    "`{}` runs in one process, but this one is {}",
                    inst.kind.name(),
                    world.describe()
                )));
            }
            ctx.log(&format!("data-parallel: {}", world.describe()));
            ctx.note("world_size", world.world_size());
        }
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inst.kind.run(&ctx))).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(StageError::failed(format!("the stage panicked: {message}")))
            });
        // The error as it leaves the stage, for the terminal, the lock file
        // and the report: secrets redacted, store paths named by instance.
        let ran = ran.map_err(|e| match e {
            StageError::Cancelled => StageError::Cancelled,
            other => StageError::Failed(readable(&ctx.redact(&other.to_string()), job, &temp, store)),
        });
        if let Err(e) = &ran {
            ctx.log_file_only(&format!("error: {e}"));
        }
        ran?;
        if !world.is_root() {
            // Rank 0 writes and commits the artifact; this rank's share is done.
            return Ok(Built {
                dir: store.artifact_dir(fp),
                fingerprint: fp.clone(),
                missing: missing_names,
            });
        }
        for output in &inst.outputs {
            if !temp.join(output).exists() {
                return Err(StageError::failed(format!(
                    "the stage finished without writing its declared output `{output}`"
                )));
            }
        }
        let notes = ctx.take_notes();
        drop(ctx);
        std::fs::copy(&log_path, temp.join("log.txt")).map_err(|e| StageError::io(&log_path, e))?;
        let files = crate::store::integrity::record(&temp).map_err(|e| StageError::io(&temp, e))?;
        let manifest = json!({
            "babelflow_version": env!("CARGO_PKG_VERSION"),
            "recipe": recipe.name,
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
            // This instance's own peak when it ran alone (`--jobs 1`: the
            // peak was started over), else the process's peak so far.
            "peak_rss_bytes": babelflow_stage::memory::peak_rss_bytes(),
            "peak_rss_own": job.alone,
            // What `plan --estimate` said before the run (time, peak), to set beside the above.
            "estimate": job.planned.estimate,
            "notes": notes,
            "files": files,
            "partial": (!missing.is_empty()).then(|| json!({
                "planned_fingerprint": job.planned.fingerprint,
                "missing": missing.iter().map(|m| json!({"input": m.input, "instance": m.instance, "why": m.why})).collect::<Vec<_>>(),
            })),
        });
        let manifest_path = temp.join("manifest.json");
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| StageError::failed(e.to_string()))?;
        std::fs::write(&manifest_path, text).map_err(|e| StageError::io(&manifest_path, e))?;
        let dir = store.commit(&temp, fp).map_err(store_err)?;
        let _ = std::fs::remove_dir_all(&resume);
        Ok(Built {
            dir,
            fingerprint: fp.clone(),
            missing: missing_names,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}
