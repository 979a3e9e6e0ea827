//! The run itself: which instances the report stands on, whether each was
//! cached or ran in the run that made this report, how long it took when
//! it was made, and on what backend and device; and what is missing.

use babelflow_stage::{InputItem, MissingInput, Upstream, UpstreamOutcome};
use serde_json::Value;

use crate::table::{Cell, Table};
use crate::{manifest_in, manifest_of};

/// The backend an instance actually used (model stages note it; `auto`
/// resolves at run time), with what was asked when that differs; `None` for
/// stages that use no device.
fn backend_of(manifest: &Value) -> Option<String> {
    let used = manifest["notes"]["backend"].as_str()?;
    let asked = manifest["backend"].as_str().unwrap_or("?");
    Some(if used.starts_with(asked) {
        used.to_string()
    } else {
        format!("{used} (asked {asked})")
    })
}

fn row(instance: &str, kind: &str, this_run: Cell, manifest: Option<&Value>) -> Vec<Cell> {
    let m = manifest.unwrap_or(&Value::Null);
    let backend = backend_of(m);
    vec![
        Cell::Text(instance.to_string()),
        Cell::Text(kind.to_string()),
        this_run,
        Cell::from_json_f64(&m["estimate"]["seconds"], 2),
        Cell::from_json_f64(&m["duration_s"], 2),
        m["estimate"]["peak_bytes"]
            .as_f64()
            .map(|b| Cell::Float(b / 1e6, 0))
            .unwrap_or(Cell::Missing),
        babelflow_stage::memory::measured_peak(m)
            .map(|p| Cell::Float(p.bytes as f64 / 1e6, 0))
            .unwrap_or(Cell::Missing),
        backend.clone().map_or(Cell::Missing, Cell::Text),
        // A device index means something only on a GPU backend.
        m["device"]
            .as_u64()
            .filter(|_| backend.as_deref().is_some_and(|b| !b.starts_with("cpu")))
            .map(Cell::Int)
            .unwrap_or(Cell::Missing),
        m["fingerprint"]
            .as_str()
            .map(|f| Cell::Text(f.chars().take(12).collect()))
            .unwrap_or(Cell::Missing),
    ]
}

const HEADER: &[&str] = &[
    "instance",
    "kind",
    "in the run that made this report",
    "estimated time (s)",
    "duration when made (s)",
    "estimated peak (MB)",
    "peak memory (MB)",
    "backend",
    "device",
    "fingerprint",
];

/// One row per upstream instance of the run. Outside the engine (no run
/// record), the manifests of the bound artifacts stand in.
pub fn run_table(upstream: &[Upstream], bound: &[&InputItem]) -> Table {
    let mut t = Table::new("The run: every instance this report stands on", HEADER);
    t.note = Some(
        "Cached: its artifact was already in the store (the duration is from the run that made it). \
         Missing: it has no artifact, and the sections that need it say so. Estimated: what `plan --estimate` \
         said on this machine when the run began (time needs `babelflow calibrate`). Peak memory: where the \
         instance's work lived. On the CPU, the babelflow process's peak resident memory, the instance's own \
         when it ran alone (`--jobs 1`), else shared with the instances before and beside it; on a GPU, the \
         device's (what its allocator held), as the estimate is."
            .into(),
    );
    if upstream.is_empty() {
        for item in bound {
            let Some(m) = manifest_of(item) else { continue };
            let name = m["instance"].as_str().unwrap_or("?").to_string();
            let kind = m["kind"].as_str().unwrap_or("?").to_string();
            t.rows.push(row(&name, &kind, Cell::Missing, Some(&m)));
        }
        return t;
    }
    for u in upstream {
        let manifest = u.artifact.as_deref().and_then(manifest_in);
        let this_run = match &u.outcome {
            UpstreamOutcome::Cached => Cell::Text("cached".into()),
            UpstreamOutcome::Ran { seconds } => Cell::Text(format!("ran ({seconds:.1} s)")),
            UpstreamOutcome::Missing { why } => Cell::Text(format!("missing: {why}")),
        };
        t.rows.push(row(&u.instance, &u.kind, this_run, manifest.as_ref()));
    }
    t
}

/// What the report was made without, and why; `None` when nothing is missing.
pub fn missing_table(missing: &[MissingInput]) -> Option<Table> {
    if missing.is_empty() {
        return None;
    }
    let mut t = Table::new("Missing from this report", &["input", "from instance", "why"]);
    t.note = Some(
        "These artifacts were bound to the report but do not exist: the tables and figures that need them \
         are absent or incomplete. Fix the cause and run again; this partial report is kept apart and \
         replaced by the complete one."
            .into(),
    );
    for m in missing {
        t.rows.push(vec![
            Cell::Text(m.input.clone()),
            Cell::Text(m.instance.clone()),
            Cell::Text(m.why.clone()),
        ]);
    }
    Some(t)
}
