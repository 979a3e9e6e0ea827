//! The contract between the babelflow engine and its stage kinds.
//!
//! A stage kind is a type implementing [`StageKind`]: it declares its typed
//! parameters, its named inputs and outputs, and a `run` that reads inputs and
//! writes outputs into a directory the engine gives it. The engine knows kinds
//! only through this trait, so stage crates depend on this crate and nothing
//! else of the engine.

mod context;
pub mod distributed;
mod error;
pub mod estimate;
pub mod memory;
mod params;
pub mod rng;
pub mod spm;
pub mod testing;

pub use context::{
    CancelFlag, DeviceRequest, InputItem, Inputs, MissingInput, ProgressSink, StageContext, Upstream, UpstreamOutcome,
    REDACTED,
};
pub use distributed::Collective;
pub use error::StageError;
pub use estimate::{Estimate, EstimateContext};
pub use params::{ParamSpec, ParamType, Params, Range};

/// A named input slot of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct InputSpec {
    pub name: &'static str,
    /// The recipe must bind this input.
    pub required: bool,
    /// More than one artifact or file may be bound (a fan-in, e.g. `mix`).
    pub many: bool,
    pub doc: &'static str,
}

/// One kind of stage (`ingest`, `tokenize`, `command`, ...).
pub trait StageKind: Send + Sync {
    /// The name recipes use in `kind:`.
    fn name(&self) -> &'static str;

    /// Bumped whenever the kind's outputs for the same inputs change; part of
    /// every fingerprint, so a new version reruns the instances of this kind.
    fn code_version(&self) -> &'static str;

    /// One line for `--help`-style listings.
    fn summary(&self) -> &'static str;

    fn params(&self) -> &'static [ParamSpec];

    fn inputs(&self) -> &'static [InputSpec];

    /// True when the kind takes any input names the recipe chooses (the
    /// `command` kind); `inputs()` is then only documentation.
    fn open_inputs(&self) -> bool {
        false
    }

    /// True when the kind is still worth running after some of its producers
    /// failed or were skipped (the report, which then says what is missing).
    /// The engine leaves those bindings out, lists them in `ctx.missing`, and
    /// stores the result under a fingerprint of its own, so it never stands
    /// in for the complete artifact on a later run.
    fn runs_with_missing_inputs(&self) -> bool {
        false
    }

    /// Names of the outputs this instance writes. The first is the default one
    /// that a bare reference (`tokens@sw`) points to.
    fn outputs(&self, params: &Params) -> Vec<String>;

    /// Extra, kind-specific checks of the parameters (beyond their types),
    /// run before anything executes. Messages name the offending field.
    fn check(&self, _params: &Params) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Optional inputs these parameters make necessary, each with why
    /// (`resize-vocab` with `init: focus` reads `corpus`): `plan` refuses
    /// the recipe when one is unbound, before anything runs.
    fn inputs_required_by(&self, _params: &Params) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// What a run would resume from, if this kind left something resumable
    /// in `resume_dir` ("the checkpoint at step 40"): `plan` says so instead
    /// of "no earlier run". Read only; never fails.
    fn resume_point(&self, _resume_dir: &std::path::Path) -> Option<String> {
        None
    }

    /// True when several processes can run one instance together
    /// (`resources: {nodes, tasks_per_node}`, `run --processes`), agreeing
    /// through `ctx.world`: each rank computes its share, rank 0 writes the
    /// outputs. The training kinds; everything else runs in one process.
    fn data_parallel(&self) -> bool {
        false
    }

    /// What this instance will cost and what its outputs will be, before
    /// anything runs (`plan --estimate`): from the parameters, the facts
    /// the upstream estimates gave, and whatever inputs exist already.
    /// Read only; quick (no model is loaded); never fails: what cannot be
    /// known stays `None`. The default knows nothing.
    fn estimate(&self, _ctx: &EstimateContext) -> Estimate {
        Estimate::default()
    }

    /// Reads `ctx.inputs`, writes each declared output under `ctx.out_dir`.
    fn run(&self, ctx: &StageContext) -> Result<(), StageError>;
}
