//! Fingerprints and the plan: for every instance, cached or run, and why.
//!
//! fingerprint = blake3 of (kind, the kind's code version, canonical params,
//! each input's producer fingerprint or file content hash). Fingerprints are
//! computed from definitions, upstream first, so a whole plan is known before
//! anything runs. Backend, device and resources are not part of it: they say
//! how to compute, not what.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::graph::Graph;
use crate::recipe::expand::Source;
use crate::store::lockfile::{LockEntry, LockFile, LockInput};
use crate::store::{integrity, FileIndex, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Cached,
    Run,
    /// Not selected by `--only`.
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedInstance {
    pub name: String,
    pub stage: String,
    pub kind: String,
    pub fingerprint: String,
    pub action: Action,
    pub reasons: Vec<String>,
    pub needs: Vec<String>,
    #[serde(skip)]
    pub inputs: BTreeMap<String, Vec<LockInput>>,
    /// `--force`d: runs from scratch (an earlier attempt's checkpoint is dropped).
    #[serde(skip)]
    pub forced: bool,
    /// What `plan --estimate` says of it on this machine, set by `run`
    /// before anything executes; the manifest keeps it beside what happened.
    #[serde(skip)]
    pub estimate: Option<super::estimate::Recorded>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read input file {path} of {instance}: {source}")]
    InputFile {
        instance: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Which instances the user singled out.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// `--only`: these (instance or stage names) and what they need.
    pub only: Vec<String>,
    /// `--force`: rerun these even if cached.
    pub force: Vec<String>,
}

fn matches(graph: &Graph, i: usize, names: &[String]) -> bool {
    let inst = &graph.instances[i];
    names.iter().any(|n| *n == inst.name || *n == inst.stage)
}

pub fn plan(
    graph: &Graph,
    store: &Store,
    files: &FileIndex,
    lock: &LockFile,
    base_dir: &std::path::Path,
    selection: &Selection,
) -> Result<Vec<PlannedInstance>, PlanError> {
    let n = graph.instances.len();
    let mut fingerprints: Vec<String> = vec![String::new(); n];
    let mut planned: Vec<Option<PlannedInstance>> = vec![None; n];

    let selected: Vec<bool> = if selection.only.is_empty() {
        vec![true; n]
    } else {
        let mut sel = vec![false; n];
        for i in 0..n {
            if matches(graph, i, &selection.only) {
                for (j, up) in graph.upstream(i).into_iter().enumerate() {
                    sel[j] |= up;
                }
            }
        }
        sel
    };

    for &i in &graph.order {
        let inst = &graph.instances[i];
        let mut inputs: BTreeMap<String, Vec<LockInput>> = BTreeMap::new();
        for binding in &inst.inputs {
            let mut records = Vec::new();
            for source in &binding.sources {
                records.push(match source {
                    Source::Artifact { instance, output } => LockInput {
                        instance: Some(graph.instances[*instance].name.clone()),
                        output: Some(output.clone()),
                        file: None,
                        hash: fingerprints[*instance].clone(),
                    },
                    Source::File { path } => {
                        let shown = path
                            .strip_prefix(base_dir)
                            .unwrap_or(path)
                            .to_string_lossy()
                            .into_owned();
                        let hash = files.hash(path).map_err(|source| PlanError::InputFile {
                            instance: inst.name.clone(),
                            path: path.display().to_string(),
                            source,
                        })?;
                        LockInput {
                            instance: None,
                            output: None,
                            file: Some(shown),
                            hash,
                        }
                    }
                });
            }
            inputs.insert(binding.name.clone(), records);
        }
        let fingerprint = fingerprint(
            inst.kind.name(),
            inst.kind.code_version(),
            &inst.params.canonical_json(),
            &inputs,
        );
        fingerprints[i] = fingerprint.clone();

        let forced = matches(graph, i, &selection.force);
        let resumable = || inst.kind.resume_point(&store.resume_dir(&fingerprint));
        let damage = || {
            store
                .has_artifact(&fingerprint)
                .then(|| integrity::quick_damage(&store.artifact_dir(&fingerprint)))
                .flatten()
        };
        let (action, reasons) = if !selected[i] {
            (Action::Skip, vec!["not selected by --only".to_string()])
        } else if forced {
            let mut reasons = vec!["forced".to_string()];
            reasons.extend(resumable().map(|r| format!("from scratch: {r} is dropped")));
            (Action::Run, reasons)
        } else if let Some(why) = damage() {
            (Action::Run, vec![format!("artifact damaged ({why}); rebuilding")])
        } else if store.has_artifact(&fingerprint) {
            (Action::Cached, Vec::new())
        } else {
            let previous = lock.instances.get(&inst.name);
            let mut reasons = why(
                previous,
                inst.kind.code_version(),
                inst.params.as_map(),
                &inputs,
                &fingerprint,
            );
            if let Some(point) = resumable() {
                // "no earlier run" is wrong when one left a checkpoint.
                reasons.retain(|r| !r.starts_with("output missing"));
                reasons.push(format!("resumes from {point}"));
            }
            (Action::Run, reasons)
        };
        planned[i] = Some(PlannedInstance {
            name: inst.name.clone(),
            stage: inst.stage.clone(),
            kind: inst.kind.name().to_string(),
            fingerprint,
            action,
            reasons,
            needs: graph.deps[i].iter().map(|&d| graph.instances[d].name.clone()).collect(),
            inputs,
            forced: forced && selected[i],
            estimate: None,
        });
    }
    Ok(planned.into_iter().flatten().collect())
}

/// 32 hex digits of blake3 over a canonical encoding.
pub fn fingerprint(
    kind: &str,
    code_version: &str,
    params_json: &str,
    inputs: &BTreeMap<String, Vec<LockInput>>,
) -> String {
    let mut h = blake3::Hasher::new();
    let mut field = |label: &str, value: &str| {
        h.update(label.as_bytes());
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value.as_bytes());
    };
    field("babelflow-fingerprint", "1");
    field("kind", kind);
    field("code", code_version);
    field("params", params_json);
    for (name, items) in inputs {
        field("input", name);
        for item in items {
            field("output", item.output.as_deref().unwrap_or(""));
            field("file", item.file.as_deref().unwrap_or(""));
            field("hash", &item.hash);
        }
    }
    h.finalize().to_hex()[..32].to_string()
}

/// Explains why an instance that is not in the store must run.
fn why(
    previous: Option<&LockEntry>,
    code_version: &str,
    params: &serde_json::Map<String, Value>,
    inputs: &BTreeMap<String, Vec<LockInput>>,
    fingerprint: &str,
) -> Vec<String> {
    let Some(prev) = previous else {
        return vec!["output missing (no earlier run)".to_string()];
    };
    let mut reasons = Vec::new();
    if prev.code_version != code_version {
        reasons.push(format!("code version changed: {} → {code_version}", prev.code_version));
    }
    let mut changed = Vec::new();
    diff_values("with", &prev.params, &Value::Object(params.clone()), &mut changed);
    if !changed.is_empty() {
        reasons.push(format!("params changed: {}", changed.join(", ")));
    }
    let mut upstream = Vec::new();
    let mut files = Vec::new();
    let mut bindings = Vec::new();
    for (name, items) in inputs {
        match prev.inputs.get(name) {
            Some(old) if old.len() == items.len() => {
                for (o, n) in old.iter().zip(items) {
                    if o.instance != n.instance || o.file != n.file || o.output != n.output {
                        bindings.push(format!("needs.{name}"));
                    } else if o.hash != n.hash {
                        match (&n.instance, &n.file) {
                            (Some(inst), _) => upstream.push(inst.clone()),
                            (_, Some(file)) => files.push(file.clone()),
                            _ => {}
                        }
                    }
                }
            }
            _ => bindings.push(format!("needs.{name}")),
        }
    }
    for name in prev.inputs.keys() {
        if !inputs.contains_key(name) {
            bindings.push(format!("needs.{name}"));
        }
    }
    bindings.dedup();
    if !upstream.is_empty() {
        reasons.push(format!("upstream changed: {}", upstream.join(", ")));
    }
    if !files.is_empty() {
        reasons.push(format!("input file changed: {}", files.join(", ")));
    }
    if !bindings.is_empty() {
        reasons.push(format!("inputs changed: {}", bindings.join(", ")));
    }
    if reasons.is_empty() {
        if prev.fingerprint == fingerprint && prev.status != "ok" {
            reasons.push(format!("last run {}", prev.status));
        } else if prev.fingerprint == fingerprint {
            reasons.push("output missing".to_string());
        } else if prev.kind.is_empty() {
            reasons.push("no earlier run".to_string());
        } else {
            reasons.push("definition changed".to_string());
        }
    }
    reasons
}

/// Lists `path old → new` for every differing leaf.
fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let null = Value::Null;
                diff_values(
                    &format!("{path}.{k}"),
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path} {} → {}", short(a), short(b))),
        _ => {}
    }
}

fn short(v: &Value) -> String {
    let text = match v {
        Value::Null => "(unset)".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(39).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_diffs_name_the_key_and_both_values() {
        let mut out = Vec::new();
        diff_values(
            "with",
            &serde_json::json!({"lr": 3e-4, "steps": 10}),
            &serde_json::json!({"lr": 1e-4, "steps": 10}),
            &mut out,
        );
        assert_eq!(out, vec!["with.lr 0.0003 → 0.0001"]);
    }

    #[test]
    fn fingerprints_depend_on_every_part() {
        let inputs = BTreeMap::new();
        let base = fingerprint("k", "1", "{}", &inputs);
        assert_ne!(base, fingerprint("k", "2", "{}", &inputs));
        assert_ne!(base, fingerprint("j", "1", "{}", &inputs));
        assert_ne!(base, fingerprint("k", "1", "{\"a\":1}", &inputs));
        let mut with_input = BTreeMap::new();
        with_input.insert(
            "x".to_string(),
            vec![LockInput {
                instance: None,
                output: None,
                file: Some("a.txt".into()),
                hash: "00".into(),
            }],
        );
        assert_ne!(base, fingerprint("k", "1", "{}", &with_input));
        assert_eq!(base, fingerprint("k", "1", "{}", &inputs));
    }
}
