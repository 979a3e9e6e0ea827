//! `babelflow exec`: one instance, run where a cluster job landed. It reads
//! the recipe and plans it as the driver did (refusing a different
//! fingerprint: the recipe or an input changed after the driver planned),
//! builds the artifact into the shared store exactly as the local executor
//! would, and writes how it ended to its handoff folder. It takes no store
//! lock: the driver holds it, and this job writes only its own temporary
//! folder, its artifact and its result.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use babelflow::engine::execute::{execute, Job};
use babelflow::engine::progress::Progress;
use babelflow::engine::Selection;
use babelflow::executor::handoff::{self, Ended, JobReport};
use babelflow::registry::Registry;
use babelflow::store::Store;
use babelflow_stage::{CancelFlag, StageError};

use super::{load, RecipeArgs, EXIT_CANCELLED, EXIT_ERROR};

pub fn exec(
    registry: &Registry,
    args: &RecipeArgs,
    instance: &str,
    fingerprint: &str,
    handoff_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Which rank this process is (one, unless mpirun or srun started
    // several); only rank 0 answers the driver.
    let world = match babelflow::distributed::world_from_env() {
        Ok(w) => w,
        Err(e) => {
            let report = JobReport {
                ended: Ended::Failed { error: e.clone() },
                seconds: 0.0,
            };
            // The launcher's rank 0, by its variables, speaks for the rest.
            if babelflow::distributed::Launch::from_env(|k| std::env::var(k).ok()).is_ok_and(|l| l.rank == 0) {
                let _ = handoff::write_result(handoff_dir, &report);
            }
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    let root = world.is_root();
    let finish = |ended: Ended| -> anyhow::Result<ExitCode> {
        let code = match &ended {
            Ended::Built { .. } | Ended::Requeued => ExitCode::SUCCESS,
            Ended::Failed { error } => {
                eprintln!("error: {error}");
                ExitCode::from(EXIT_ERROR)
            }
            Ended::Cancelled => ExitCode::from(EXIT_CANCELLED),
        };
        if !root {
            return Ok(code);
        }
        let report = JobReport {
            ended,
            seconds: started.elapsed().as_secs_f64(),
        };
        handoff::write_result(handoff_dir, &report)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", handoff_dir.join(handoff::RESULT).display()))?;
        Ok(code)
    };
    let failed = |error: String| Ended::Failed { error };

    let pipeline = match load(registry, args) {
        Ok(p) => p,
        Err(_) => {
            return finish(failed(
                "the recipe does not load on this node (see the job's output)".into(),
            ))
        }
    };
    let Some(store_dir) = args.store.as_deref() else {
        return finish(failed("exec needs --store".into()));
    };
    let store = match Store::at(store_dir) {
        Ok(s) if s.exists() => s,
        _ => {
            return finish(failed(format!(
                "no store at {} on this node: is it on a shared filesystem?",
                store_dir.display()
            )))
        }
    };
    let context = match handoff::read_context(handoff_dir) {
        Ok(c) => c,
        Err(e) => return finish(failed(e)),
    };
    let Some(index) = pipeline.graph.instances.iter().position(|i| i.name == instance) else {
        return finish(failed(format!("the recipe has no instance `{instance}` on this node")));
    };
    let selection = Selection {
        only: vec![instance.to_string()],
        force: if context.forced {
            vec![instance.to_string()]
        } else {
            Vec::new()
        },
    };
    let planned = match pipeline.plan(&store, &selection) {
        Ok(p) => p,
        Err(e) => return finish(failed(e.to_string())),
    };
    let mut mine = planned[index].clone();
    if mine.fingerprint != fingerprint {
        return finish(failed(format!(
            "`{instance}` plans here as {}, not {fingerprint} as the driver planned it: the recipe or one of its input files changed after the run started (or differs on this node)",
            mine.fingerprint
        )));
    }
    mine.forced = context.forced;
    mine.estimate = context.estimate;

    // scancel and the end of the time limit send SIGTERM; `--signal=B:USR1`
    // warns before the limit (requeue: true). Each stops the stage at its
    // next check; training keeps its checkpoints for the next attempt.
    let cancel = CancelFlag::new();
    let warned = Arc::new(AtomicBool::new(false));
    watch_signals(&cancel, &warned)?;
    watch_launcher(&cancel);

    let job = Job {
        index,
        instance: pipeline.graph.instances[index].clone(),
        planned: mine,
        producers: context.producers,
        upstream: context.upstream,
        threads: context.threads,
        // The only instance of this process.
        alone: true,
        world: std::sync::Arc::clone(&world),
    };
    let progress = Progress::new();
    let bar = progress.start(instance);
    let result = execute(&job, &store, &pipeline.id, &pipeline.source.dir, &cancel, &bar);
    drop(bar);
    let ended = match result.outcome {
        Ok(built) => Ended::Built {
            fingerprint: built.fingerprint,
            missing: built.missing,
        },
        Err(StageError::Cancelled) if root && warned.load(Ordering::SeqCst) && requeue_self() => Ended::Requeued,
        Err(StageError::Cancelled) => Ended::Cancelled,
        Err(e) => Ended::Failed { error: e.to_string() },
    };
    let failed_here = !matches!(ended, Ended::Built { .. } | Ended::Requeued);
    let code = finish(ended)?;
    if failed_here && world.world_size() > 1 {
        // A rank that fails alone would leave the others waiting in the
        // next all-reduce: exiting non-zero makes mpirun/srun stop them all
        // (rank 0 has written the result first).
        std::process::exit(EXIT_ERROR as i32);
    }
    drop(world);
    Ok(code)
}

fn watch_signals(cancel: &CancelFlag, warned: &Arc<AtomicBool>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])?;
    let (cancel, warned) = (cancel.clone(), Arc::clone(warned));
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == SIGUSR1 {
                warned.store(true, Ordering::SeqCst);
                eprintln!("babelflow exec: Slurm's warning signal: stopping at the next checkpoint to requeue");
            } else {
                eprintln!("babelflow exec: stopped by signal {signal}");
            }
            cancel.cancel();
        }
    });
    Ok(())
}

/// Stops this process at its next step when whoever started it (mpirun,
/// srun, the batch script) is gone: an orphaned rank would otherwise train
/// on alone and race the next run for the instance's checkpoint.
fn watch_launcher(cancel: &CancelFlag) {
    let parent = std::os::unix::process::parent_id();
    let cancel = cancel.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if std::os::unix::process::parent_id() != parent {
            eprintln!("babelflow exec: the process that started this one (pid {parent}) is gone: stopping");
            cancel.cancel();
            return;
        }
    });
}

/// After Slurm's warning signal: put this job back in the queue, so the
/// next part resumes from the checkpoint this one kept.
fn requeue_self() -> bool {
    let Ok(id) = std::env::var("SLURM_JOB_ID") else {
        return false;
    };
    match std::process::Command::new("scontrol").args(["requeue", &id]).status() {
        Ok(s) if s.success() => {
            eprintln!("babelflow exec: job {id} requeued");
            true
        }
        other => {
            eprintln!("babelflow exec: cannot requeue job {id}: {other:?}");
            false
        }
    }
}
