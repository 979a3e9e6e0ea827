//! Commands as the user asked for them; the engine does the work.

mod calibrate;
mod estimate;
mod exec;
mod inspect;
mod new;
mod run;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use babelflow::engine::{EngineError, Pipeline};
use babelflow::registry::Registry;

/// A stage failed, a file could not be read, a name was wrong.
pub const EXIT_ERROR: u8 = 1;
/// The recipe is invalid; nothing ran.
pub const EXIT_INVALID: u8 = 2;
/// Cancelled with Ctrl-C.
pub const EXIT_CANCELLED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "babelflow",
    version,
    about = "Adapt an English-trained LLaMA-family model to other languages as a cached, repeatable pipeline",
    long_about = "babelflow runs a transfer recipe (YAML) as a DAG of stage instances. Every instance's \
output is stored under a fingerprint of its kind, parameters and inputs, so a second run executes \
only what a change touches. Start with `babelflow plan RECIPE` to see what would run and why."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every recipe command takes.
#[derive(clap::Args, Clone)]
pub struct RecipeArgs {
    /// The recipe file (YAML).
    pub recipe: PathBuf,

    /// Override a recipe value: `stages.train.with.lr=1e-4`, `vars.langs=[sw, vi]`,
    /// or one instance: `stages.sft@sw.with.epochs=2`. Values are YAML. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub sets: Vec<String>,

    /// The store folder [default: $BABELFLOW_STORE, else .babelflow/ beside the recipe].
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

/// `plan --estimate`: what the run would cost, and on what.
#[derive(clap::Args, Clone)]
pub struct EstimateArgs {
    /// Estimate tokens, FLOPs, peak memory and time of each instance that
    /// would run, and flag what does not fit the device's memory.
    #[arg(long)]
    pub estimate: bool,
    /// Price on a documented accelerator instead of this machine
    /// (a100-40gb, a100-80gb, h100-80gb, h200, l4, rtx-4090).
    #[arg(long, value_name = "NAME", requires = "estimate")]
    pub device: Option<String>,
    /// The share of the device's documented peak a run achieves.
    #[arg(long, default_value_t = 0.4, requires = "device")]
    pub utilisation: f64,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a recipe: execute every instance whose output is not in the store.
    Run {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Run only these instances or stages (and what they need). Repeatable.
        #[arg(long, value_name = "INSTANCE")]
        only: Vec<String>,
        /// Rerun these instances or stages even if cached. Repeatable.
        #[arg(long, value_name = "INSTANCE")]
        force: Vec<String>,
        /// Instances to run at once (CPU slots) [default: number of CPUs].
        #[arg(short, long)]
        jobs: Option<usize>,
        /// After a failure, go on with branches that do not depend on it.
        #[arg(long)]
        keep_going: bool,
        /// Fail at once instead of waiting when another run holds the store.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show what `run` would do for each instance, and why.
    Plan {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[arg(long, value_name = "INSTANCE")]
        only: Vec<String>,
        #[arg(long, value_name = "INSTANCE")]
        force: Vec<String>,
        /// Machine-readable output (schema in ARCHITECTURE.md, "plan --json").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        estimate: EstimateArgs,
    },
    /// Measure this machine's training and evaluation speed (about a minute)
    /// and store it, so `plan --estimate` can say how long a run takes here.
    Calibrate {
        /// The store to keep the result in [default: $BABELFLOW_STORE, else .babelflow/].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// The backend to measure (cpu, or a GPU backend this build has).
        #[arg(long, default_value = "cpu")]
        backend: String,
    },
    /// Write a commented transfer recipe for one target language (checked by
    /// planning it), e.g. `babelflow new recipes/sw.yaml --lang sw --base /models/llama-2-7b`.
    New(new::NewRecipe),
    /// Draw the instance graph.
    Graph {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Last result, duration and artifact path of each instance.
    Status {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Print where the recipe's reports are (the `report` instances' outputs).
    Report {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Also copy report.md and report.html into this folder.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Delete artifacts no recipe's lock file refers to.
    Gc {
        /// Store folder [default: $BABELFLOW_STORE, else ./.babelflow].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Recheck every artifact in the store against the file hashes recorded
    /// when it was made; damaged ones are moved to `damaged/` and rebuilt by
    /// the next run. (`plan` and `run` check sizes on every run.)
    Verify {
        /// Store folder [default: $BABELFLOW_STORE, else ./.babelflow].
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        /// Only report; leave damaged artifacts where they are.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the stage kinds this build knows, with their parameters.
    Kinds {
        /// Show one kind in full.
        kind: Option<String>,
    },
    /// Run one planned instance into the store (what a cluster job runs;
    /// the driver writes its handoff folder).
    #[command(hide = true)]
    Exec {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[arg(long)]
        instance: String,
        /// The fingerprint the driver planned; the job refuses to build another.
        #[arg(long)]
        fingerprint: String,
        #[arg(long, value_name = "DIR")]
        handoff: PathBuf,
    },
}

/// Where instances run; each flag overrides the recipe's `executor:`.
#[derive(clap::Args, Clone, Default)]
pub struct ClusterArgs {
    /// Where instances run: `local` (threads here, the default) or `slurm`
    /// (one `sbatch` job per ready instance; the store must be on a
    /// filesystem every node sees).
    #[arg(long, value_name = "KIND", value_parser = ["local", "slurm"])]
    pub executor: Option<String>,
    /// Slurm partition of every job.
    #[arg(long, value_name = "NAME")]
    pub partition: Option<String>,
    /// Slurm account of every job.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// Slurm QOS of every job.
    #[arg(long, value_name = "NAME")]
    pub qos: Option<String>,
    /// Default time limit of a job (a stage's `resources.time` wins): 90, 2:00:00, 1-12:00:00.
    #[arg(long, value_name = "LIMIT")]
    pub time: Option<String>,
    /// A further sbatch flag for every job (`--sbatch-flag=--exclusive`). Repeatable.
    #[arg(long = "sbatch-flag", value_name = "FLAG", allow_hyphen_values = true)]
    pub sbatch_flags: Vec<String>,
    /// Train data-parallel on this many processes per machine (the training
    /// stages' `resources.tasks_per_node`): `mpirun -np N` here, `srun` on
    /// Slurm. The global batch, and so the result, stays the same. Needs a
    /// babelflow built with `--features mpi`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: Option<u16>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let registry = Registry::builtin();
    match cli.command {
        Command::Run {
            recipe,
            only,
            force,
            jobs,
            keep_going,
            no_wait,
            cluster,
        } => run::run(&registry, &recipe, only, force, jobs, keep_going, !no_wait, &cluster),
        Command::Plan {
            recipe,
            only,
            force,
            json,
            estimate,
        } => run::plan(&registry, &recipe, only, force, json, &estimate),
        Command::New(recipe) => new::new(&registry, recipe),
        Command::Calibrate { store, backend } => calibrate::calibrate(&registry, store, &backend),
        Command::Graph { recipe, format } => inspect::graph(&registry, &recipe, format),
        Command::Status { recipe, json } => inspect::status(&registry, &recipe, json),
        Command::Report { recipe, out } => inspect::report(&registry, &recipe, out),
        Command::Gc { store, dry_run } => inspect::gc(store, dry_run),
        Command::Verify { store, dry_run } => verify::verify(store, dry_run),
        Command::Kinds { kind } => inspect::kinds(&registry, kind.as_deref()),
        Command::Exec {
            recipe,
            instance,
            fingerprint,
            handoff,
        } => exec::exec(&registry, &recipe, &instance, &fingerprint, &handoff),
    }
}

/// Loads a recipe; an invalid one is printed with every diagnostic.
pub fn load(registry: &Registry, args: &RecipeArgs) -> Result<Pipeline, ExitCode> {
    Pipeline::load(&args.recipe, &args.sets, registry).map_err(|diags| {
        eprintln!("{diags}");
        ExitCode::from(EXIT_INVALID)
    })
}

/// Prints an engine error and picks the exit code.
pub fn report(e: EngineError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        EngineError::Recipe(_) => ExitCode::from(EXIT_INVALID),
        _ => ExitCode::from(EXIT_ERROR),
    }
}
