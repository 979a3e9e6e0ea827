//! `babelflow run` and `babelflow plan`.

use std::process::ExitCode;
use std::sync::Arc;

use babelflow::engine::device::Device;
use babelflow::engine::progress::Progress;
use babelflow::engine::scheduler::SchedulerOptions;
use babelflow::engine::{Action, Outcome, PlannedInstance, Selection};
use babelflow::registry::Registry;
use babelflow::store::Store;
use babelflow_stage::CancelFlag;

use babelflow::engine::Pipeline;
use babelflow::executor::mpirun::{self, Mpirun};
use babelflow::executor::slurm::{Invocation, Slurm};
use babelflow::executor::Executor;

use super::{load, report, ClusterArgs, RecipeArgs, EXIT_CANCELLED, EXIT_ERROR, EXIT_INVALID};

/// The recipe's `executor:` with the command line's flags over it.
fn executor_for(pipeline: &Pipeline, cli: &ClusterArgs, args: &RecipeArgs, store: &Store) -> Result<Executor, String> {
    let mut settings = pipeline.executor.clone();
    if let Some(kind) = &cli.executor {
        settings.kind = kind.clone();
    }
    for (value, slot) in [
        (&cli.partition, &mut settings.partition),
        (&cli.account, &mut settings.account),
        (&cli.qos, &mut settings.qos),
    ] {
        if value.is_some() {
            *slot = value.clone();
        }
    }
    if let Some(t) = &cli.time {
        if !babelflow::recipe::valid_time(t) {
            return Err(format!("--time {t}: not a Slurm time limit (90, 2:00:00, 1-12:00:00)"));
        }
        settings.time = Some(t.clone());
    }
    settings.sbatch_flags.extend(cli.sbatch_flags.iter().cloned());
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let invocation = Invocation {
        binary: std::env::current_exe().map_err(|e| format!("cannot find this babelflow binary: {e}"))?,
        recipe: absolute(&args.recipe),
        sets: args.sets.clone(),
        store: absolute(store.root()),
        workdir: std::env::current_dir().map_err(|e| format!("no current folder: {e}"))?,
    };
    let multi = pipeline.graph.instances.iter().find(|i| i.resources.processes() > 1);
    if let Some(inst) = multi {
        if !babelflow::distributed::MPI_BUILT {
            return Err(format!(
                "`{}` is to train on {} processes, but this babelflow was built without MPI: rebuild with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev), or drop --processes / resources.tasks_per_node",
                inst.name,
                inst.resources.processes()
            ));
        }
    }
    if settings.kind != "slurm" {
        if let Some(inst) = pipeline.graph.instances.iter().find(|i| i.resources.nodes > 1) {
            return Err(format!(
                "`{}` asks for {} nodes, and this run is on this machine alone: run it with `--executor slurm`, or set `resources.nodes` to 1 (and `--processes N` for N processes here)",
                inst.name, inst.resources.nodes
            ));
        }
        let mpirun = Mpirun::new(invocation);
        if multi.is_some() && !mpirun::launcher_available(&mpirun.program) {
            return Err(format!(
                "`{}` is not there to start the data-parallel processes: install OpenMPI (apt install openmpi-bin) or point BABELFLOW_MPIRUN at your launcher",
                mpirun.program
            ));
        }
        return Ok(Executor::Local(Some(Box::new(mpirun))));
    }
    Ok(Executor::Slurm(Box::new(Slurm::new(settings, invocation))))
}

/// `--processes N`: every data-parallel instance runs on N ranks per machine.
fn apply_processes(pipeline: &mut Pipeline, cli: &ClusterArgs) {
    if let Some(n) = cli.processes {
        for inst in &mut pipeline.graph.instances {
            if inst.kind.data_parallel() {
                inst.resources.tasks_per_node = n as usize;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // one per `run` flag group, as clap gives them
pub fn run(
    registry: &Registry,
    args: &RecipeArgs,
    only: Vec<String>,
    force: Vec<String>,
    jobs: Option<usize>,
    keep_going: bool,
    wait_for_lock: bool,
    cluster: &ClusterArgs,
) -> anyhow::Result<ExitCode> {
    let mut pipeline = match load(registry, args) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    apply_processes(&mut pipeline, cluster);
    let store = match Store::open(&pipeline.default_store(args.store.as_deref())) {
        Ok(s) => Arc::new(s),
        Err(e) => return Ok(report(e.into())),
    };
    let executor = match executor_for(&pipeline, cluster, args, &store) {
        Ok(e) => e,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let cancel = CancelFlag::new();
    {
        let cancel = cancel.clone();
        // A second Ctrl-C while stages wind down exits at once.
        let _ = ctrlc::set_handler(move || {
            if cancel.is_cancelled() {
                std::process::exit(EXIT_CANCELLED as i32);
            }
            eprintln!("\ncancelling: running instances are being stopped (Ctrl-C again to exit now)");
            cancel.cancel();
        });
    }
    let jobs = jobs.unwrap_or_else(|| match executor {
        // Jobs in the queue at once; the cluster decides how many run.
        Executor::Slurm(_) => 64,
        Executor::Local(_) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    let options = SchedulerOptions {
        jobs,
        keep_going,
        executor: Arc::new(executor),
    };
    let selection = Selection { only, force };
    let progress = Arc::new(Progress::new());
    let started = std::time::Instant::now();
    let (planned, outcomes) = match pipeline.run(store, &selection, &options, &cancel, progress, wait_for_lock) {
        Ok(r) => r,
        Err(e) => return Ok(report(e)),
    };
    print_summary(&planned, &outcomes, started.elapsed().as_secs_f64());
    if cancel.is_cancelled() {
        return Ok(ExitCode::from(EXIT_CANCELLED));
    }
    let failed = outcomes
        .iter()
        .any(|o| matches!(o, Outcome::Failed { .. } | Outcome::Cancelled));
    let skipped_needed = planned
        .iter()
        .zip(&outcomes)
        .any(|(p, o)| p.action == Action::Run && matches!(o, Outcome::Skipped { .. }));
    Ok(if failed || skipped_needed {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(planned: &[PlannedInstance], outcomes: &[Outcome], total: f64) {
    let width = planned.iter().map(|p| p.name.len()).max().unwrap_or(8).max(8);
    println!("{:width$}  {:9}  {:>8}", "instance", "result", "time");
    let (mut ran, mut cached, mut failed, mut skipped) = (0, 0, 0, 0);
    for (p, o) in planned.iter().zip(outcomes) {
        let (result, time) = match o {
            Outcome::Cached => {
                cached += 1;
                ("cached", String::new())
            }
            Outcome::Ran { seconds } => {
                ran += 1;
                ("ran", format!("{seconds:.1}s"))
            }
            Outcome::Partial { seconds, .. } => {
                ran += 1;
                ("partial", format!("{seconds:.1}s"))
            }
            Outcome::Failed { seconds, .. } => {
                failed += 1;
                ("FAILED", format!("{seconds:.1}s"))
            }
            Outcome::Cancelled => {
                failed += 1;
                ("cancelled", String::new())
            }
            Outcome::Skipped { .. } => {
                skipped += 1;
                ("skipped", String::new())
            }
        };
        println!("{:width$}  {result:9}  {time:>8}", p.name);
    }
    println!("{ran} ran, {cached} cached, {failed} failed, {skipped} skipped in {total:.1}s");
    for (p, o) in planned.iter().zip(outcomes) {
        match o {
            Outcome::Skipped { why } if p.action == Action::Run => println!("  {} skipped: {why}", p.name),
            Outcome::Partial { missing, .. } => {
                println!("  {} made without {} (it says so inside)", p.name, missing.join(", "))
            }
            _ => {}
        }
    }
}

pub fn plan(
    registry: &Registry,
    args: &RecipeArgs,
    only: Vec<String>,
    force: Vec<String>,
    json: bool,
    estimate: &super::EstimateArgs,
) -> anyhow::Result<ExitCode> {
    let pipeline = match load(registry, args) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let store_dir = pipeline.default_store(args.store.as_deref());
    let store = match Store::at(&store_dir) {
        Ok(s) => s,
        Err(e) => return Ok(report(e.into())),
    };
    let planned = match pipeline.plan(&store, &Selection { only, force }) {
        Ok(p) => p,
        Err(e) => return Ok(report(e)),
    };
    let count = |a: Action| planned.iter().filter(|p| p.action == a).count();
    let cost = if estimate.estimate {
        let device = match &estimate.device {
            Some(name) => match Device::named(name, estimate.utilisation) {
                Ok(device) => device,
                Err(message) => {
                    eprintln!("error: {message}");
                    return Ok(ExitCode::from(super::EXIT_INVALID));
                }
            },
            None => Device::this_machine(&pipeline.backend(), &store_dir),
        };
        Some(babelflow::engine::estimate::estimate(
            &pipeline.graph,
            &planned,
            &store,
            &device,
        ))
    } else {
        None
    };
    if json {
        let mut doc = serde_json::json!({
            "recipe": pipeline.name,
            "recipe_path": pipeline.source.path,
            "store": store_dir,
            "instances": planned,
            "summary": {"run": count(Action::Run), "cached": count(Action::Cached), "skip": count(Action::Skip)},
        });
        if let Some(cost) = &cost {
            doc["estimate"] = serde_json::to_value(cost)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = planned.iter().map(|p| p.name.len()).max().unwrap_or(8);
    println!(
        "plan for {} ({}), store {}",
        pipeline.name,
        pipeline.source.path.display(),
        store_dir.display()
    );
    for p in &planned {
        let action = match p.action {
            Action::Cached => "cached",
            Action::Run => "run",
            Action::Skip => "skip",
        };
        println!("  {action:6}  {:width$}  {}", p.name, p.reasons.join("; "));
    }
    println!(
        "{} to run, {} cached, {} skipped",
        count(Action::Run),
        count(Action::Cached),
        count(Action::Skip)
    );
    if let Some(cost) = &cost {
        super::estimate::print(cost);
    }
    Ok(ExitCode::SUCCESS)
}
