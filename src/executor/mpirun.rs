//! A data-parallel instance on this machine: `mpirun -np M babelflow exec`,
//! M ranks of the same instance over the same store. It speaks the same
//! handoff as a Slurm job (`jobs/<fingerprint>/context.json` in,
//! `result.json` out, written by rank 0) and trusts the same thing: the
//! committed artifact. Ctrl-C is SIGTERM to `mpirun`, which passes it to
//! every rank; each stops at its next step, together.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use babelflow_stage::{CancelFlag, ProgressSink, StageError};

use super::handoff::{self, Ended};
use super::slurm::script::{exec_command, Invocation};
use crate::engine::execute::{Built, Job, JobResult};
use crate::store::{RecipeId, Store};

pub struct Mpirun {
    pub invocation: Invocation,
    /// The launcher (`mpirun`, or a path to one); `BABELFLOW_MPIRUN` overrides.
    pub program: String,
}

impl Mpirun {
    pub fn new(invocation: Invocation) -> Mpirun {
        Mpirun {
            invocation,
            program: std::env::var("BABELFLOW_MPIRUN").unwrap_or_else(|_| "mpirun".into()),
        }
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
        let outcome = self.launch_and_wait(job, store, recipe, cancel, progress);
        JobResult {
            index: job.index,
            seconds: started.elapsed().as_secs_f64(),
            outcome,
            job: Some(format!("mpirun -np {}", job.instance.resources.processes())),
        }
    }

    fn launch_and_wait(
        &self,
        job: &Job,
        store: &Store,
        recipe: &RecipeId,
        cancel: &CancelFlag,
        progress: &dyn ProgressSink,
    ) -> Result<Built, StageError> {
        let inst = &job.instance;
        let fp = &job.planned.fingerprint;
        let ranks = inst.resources.processes();
        let dir = handoff::job_dir(store, fp);
        handoff::begin(&dir, job)?;
        let log = store.log_path(recipe, &inst.name).with_extension("mpi.log");
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StageError::io(parent, e))?;
        }
        let out = std::fs::File::create(&log).map_err(|e| StageError::io(&log, e))?;
        let err = out.try_clone().map_err(|e| StageError::io(&log, e))?;
        let exec = exec_command(&self.invocation, &inst.name, fp, &dir);
        let mut cmd = Command::new(&self.program);
        cmd.args(["-np", &ranks.to_string()])
            // The ranks are this machine's processes, not one core each:
            // each sets its own thread count (`threads`).
            .args(["--bind-to", "none", "--oversubscribe"])
            .args(&exec)
            .current_dir(&self.invocation.workdir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // OpenMPI refuses root without these (containers, CI); MPICH ignores them.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
        // Each rank's compute pool (rayon) would take every core of the
        // machine; hold it to the instance's `cpus` unless the user chose.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", job.threads.to_string());
        }
        // Its own process group: a terminal's Ctrl-C reaches only the driver,
        // which stops mpirun with SIGTERM and waits for it. (mpirun, hit by
        // SIGINT itself, exits at once and leaves its ranks running.)
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        tracing::debug!("{} {:?}", self.program, cmd.get_args().collect::<Vec<_>>());
        let mut child = cmd.spawn().map_err(|e| {
            StageError::failed(format!(
                "cannot start `{}` for {ranks} processes: {e} (install OpenMPI: apt install openmpi-bin, or set BABELFLOW_MPIRUN)",
                self.program
            ))
        })?;
        progress.update(0, None, &format!("{ranks} processes (mpirun)"));
        let status = wait(&mut child, cancel);
        let ended = handoff::read_result(&dir).map(|r| r.ended);
        match ended {
            Some(Ended::Built { fingerprint, missing }) if store.has_artifact(&fingerprint) => Ok(Built {
                dir: store.artifact_dir(&fingerprint),
                fingerprint,
                missing,
            }),
            _ if cancel.is_cancelled() => Err(StageError::Cancelled),
            Some(Ended::Failed { error }) => Err(StageError::failed(format!(
                "{error}\n(its ranks' output: {})",
                log.display()
            ))),
            _ => Err(StageError::failed(format!(
                "mpirun -np {ranks} ended ({}) without committing the artifact; its output: {}{}",
                status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                log.display(),
                super::slurm::tail(&log, 12)
            ))),
        }
    }
}

/// Waits for `mpirun`; on cancel, SIGTERM (which it forwards to every
/// rank), then SIGKILL if it lingers.
fn wait(child: &mut Child, cancel: &CancelFlag) -> std::io::Result<std::process::ExitStatus> {
    let mut signalled: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if cancel.is_cancelled() {
            match signalled {
                None => {
                    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                    signalled = Some(Instant::now());
                }
                Some(at) if at.elapsed() > Duration::from_secs(30) => {
                    let _ = child.kill();
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when `program` can be started (`mpirun --version`).
pub fn launcher_available(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
