//! Running a stage kind outside the engine, for stage crates' own tests.

use std::path::Path;

use serde_json::Value;

use crate::{CancelFlag, DeviceRequest, Inputs, ParamSpec, Params, ProgressSink, StageContext, StageError, StageKind};

/// Checks `params` (a JSON object) against the kind's specs and fills
/// defaults, as the engine does for a recipe's `with:`.
pub fn params_for(specs: &[ParamSpec], params: Value) -> Result<Params, String> {
    let mut map = match params {
        Value::Object(m) => m,
        Value::Null => Default::default(),
        other => return Err(format!("params must be an object, got {other}")),
    };
    for key in map.keys() {
        if !specs.iter().any(|s| s.name == key) {
            return Err(format!("unknown parameter `{key}`"));
        }
    }
    for spec in specs {
        match map.get(spec.name) {
            Some(v) => {
                let v = spec.check(v).map_err(|e| format!("parameter `{}`: {e}", spec.name))?;
                map.insert(spec.name.to_string(), v);
            }
            None => {
                if let Some(d) = spec.default {
                    map.insert(
                        spec.name.to_string(),
                        serde_json::from_str(d).map_err(|e| e.to_string())?,
                    );
                } else if spec.required {
                    return Err(format!("parameter `{}` is required", spec.name));
                }
            }
        }
    }
    Ok(Params::new(map))
}

/// Cancels the run once the stage reports `stop_at` units of progress, as
/// Ctrl-C (or a kill) would in the middle of a long stage.
struct StopAt {
    stop_at: u64,
    cancel: CancelFlag,
}

impl ProgressSink for StopAt {
    fn update(&self, done: u64, _total: Option<u64>, _message: &str) {
        if done >= self.stop_at {
            self.cancel.cancel();
        }
    }
}

/// Runs `kind` with `params` and `inputs`, writing outputs into `out_dir`
/// (its checkpoints into `out_dir/.resume`).
pub fn run_kind(kind: &dyn StageKind, params: Value, inputs: &Inputs, out_dir: &Path) -> Result<(), StageError> {
    run_kind_interrupted(kind, params, inputs, out_dir, u64::MAX)
}

/// Like `run_kind`, but cancelled once the stage reports `stop_at` units of
/// progress (steps, for training); `.resume` is kept for the next run.
pub fn run_kind_interrupted(
    kind: &dyn StageKind,
    params: Value,
    inputs: &Inputs,
    out_dir: &Path,
    stop_at: u64,
) -> Result<(), StageError> {
    let params = params_for(kind.params(), params).map_err(StageError::failed)?;
    let cancel = CancelFlag::new();
    let sink = StopAt {
        stop_at,
        cancel: cancel.clone(),
    };
    let resume = out_dir.join(".resume");
    std::fs::create_dir_all(&resume).map_err(|e| StageError::io(&resume, e))?;
    let mut ctx = StageContext::new(
        "test",
        &params,
        inputs,
        out_dir,
        &resume,
        out_dir,
        2,
        DeviceRequest::default(),
        cancel.clone(),
        &sink,
        None,
    );
    ctx.shared_cache = Some(out_dir.join(".cache"));
    kind.run(&ctx)
}

/// The kind's estimate with `params` (a JSON object, defaults filled) and
/// these existing files bound to its slots, as `plan --estimate` makes it
/// once every input exists.
pub fn estimate_kind(
    kind: &dyn StageKind,
    params: Value,
    pairs: &[(&str, &[&Path])],
) -> Result<crate::Estimate, String> {
    let params = params_for(kind.params(), params)?;
    let inputs = pairs
        .iter()
        .map(|(name, paths)| {
            let planned = paths.iter().map(|p| crate::estimate::PlannedInput {
                path: Some(p.to_path_buf()),
                facts: crate::estimate::Facts::default(),
            });
            (name.to_string(), planned.collect())
        })
        .collect();
    let ctx = crate::EstimateContext {
        instance: "test",
        params: &params,
        inputs,
        processes: 1,
        on_gpu: false,
    };
    Ok(kind.estimate(&ctx))
}

/// Inputs from (slot, paths) pairs.
pub fn inputs(pairs: &[(&str, &[&Path])]) -> Inputs {
    pairs
        .iter()
        .map(|(name, paths)| {
            (
                name.to_string(),
                paths
                    .iter()
                    .map(|p| crate::InputItem {
                        path: p.to_path_buf(),
                        instance: None,
                        label: None,
                    })
                    .collect(),
            )
        })
        .collect()
}

/// The package folder of the test or benchmark being run. Read at run time
/// (cargo sets `CARGO_MANIFEST_DIR` for `cargo test`/`bench`), not compile
/// time: a test binary built in another checkout that shares the target
/// folder must still find this checkout's files.
pub fn package_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".".into())
}
