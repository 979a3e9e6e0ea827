//! Executors: where a ready instance runs. The scheduler
//! (`engine::scheduler`) keeps the DAG, the plan and the cache decisions
//! and picks what is ready; an executor runs one instance and says how it
//! ended. `Local` builds it in a worker thread of this process (or, for a
//! data-parallel instance on several processes, under `mpirun`); `Slurm`
//! submits it as a job that runs `babelflow exec` on a node (under `srun`
//! for several processes) and watches the shared store for its committed
//! artifact.
//!
//! Invariant, whichever executor: an instance is done when its artifact
//! folder was committed by atomic rename into the store. Nothing else (a
//! job's state, an exit code) makes it done.

pub mod handoff;
pub mod mpirun;
pub mod slurm;

use std::path::Path;

use babelflow_stage::{CancelFlag, ProgressSink};

use crate::engine::execute::{execute, Job, JobResult};
use crate::store::{RecipeId, Store};

pub enum Executor {
    /// In this process; a data-parallel instance on several processes goes
    /// through the launcher (`None` in embeddings that never start one).
    Local(Option<Box<mpirun::Mpirun>>),
    Slurm(Box<slurm::Slurm>),
}

impl Executor {
    /// The local executor without a launcher (one process per instance).
    pub fn local() -> Executor {
        Executor::Local(None)
    }

    /// Attempts after the first when a stage says nothing (`retries:`):
    /// none locally (a failure there is the stage's), one on a cluster
    /// (where a node or a preemption fails jobs too).
    pub fn default_retries(&self) -> u32 {
        match self {
            Executor::Local(_) => 0,
            Executor::Slurm(_) => 1,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Executor::Local(_) => "local",
            Executor::Slurm(_) => "slurm",
        }
    }

    /// Runs one instance to its end: committed, failed or cancelled.
    pub fn run(
        &self,
        job: &Job,
        store: &Store,
        recipe: &RecipeId,
        base_dir: &Path,
        cancel: &CancelFlag,
        progress: &dyn ProgressSink,
    ) -> JobResult {
        match self {
            Executor::Local(Some(mpirun)) if job.instance.resources.processes() > 1 => {
                mpirun.run(job, store, recipe, cancel, progress)
            }
            Executor::Local(_) => execute(job, store, recipe, base_dir, cancel, progress),
            Executor::Slurm(slurm) => slurm.run(job, store, recipe, cancel, progress),
        }
    }
}
