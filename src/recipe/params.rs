//! A stage's `with:` checked against its kind's declared parameters, and
//! its `backend`, `device` and `resources` (its own, else `defaults:`).

use std::collections::HashMap;

use babelflow_stage::{ParamSpec, Params, StageKind};
use serde_json::{Map, Value};

use super::expand::{Resources, RunPolicy};
use super::interpolate::Scope;
use super::schema::BACKENDS;
use super::yaml::{Node, Span};
use super::RecipeSource;
use crate::diagnostics::{did_you_mean, Diagnostics};

/// Checks `with:` against the kind's declared parameters and fills defaults.
pub fn check_params(
    source: &RecipeSource,
    kind: &dyn StageKind,
    node: &Node,
    stage_span: Span,
    diags: &mut Diagnostics,
) -> Params {
    let specs = kind.params();
    let mut values = Map::new();
    let mut spans: HashMap<String, Span> = HashMap::new();
    // Given but refused: reported once, as given, not again as missing.
    let mut rejected: Vec<String> = Vec::new();
    let with = node.get("with");
    if let Some(with) = with {
        match with.as_map() {
            None => diags.push(source.diag(
                with.span,
                format!("`with` must be a mapping, found {}", with.describe()),
                None,
            )),
            Some(entries) => {
                for (k, v) in entries {
                    let key = k.as_str().unwrap_or_default();
                    let Some(spec) = specs.iter().find(|s| s.name == key) else {
                        diags.push(source.diag(
                            k.span,
                            format!("unknown parameter `{key}` for kind `{}`", kind.name()),
                            did_you_mean(key, specs.iter().map(|s| s.name)).or_else(|| {
                                Some(format!(
                                    "`{}` takes: {}",
                                    kind.name(),
                                    specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                                ))
                            }),
                        ));
                        continue;
                    };
                    match spec.check(&v.to_value()) {
                        Ok(value) => {
                            values.insert(key.to_string(), value);
                            spans.insert(key.to_string(), v.span);
                        }
                        Err(message) => {
                            rejected.push(key.to_string());
                            diags.push(source.diag(
                                v.span,
                                format!("parameter `{key}` of kind `{}`: {message}", kind.name()),
                                Some(spec.doc.to_string()),
                            ))
                        }
                    }
                }
            }
        }
    }
    for spec in specs {
        if values.contains_key(spec.name) || rejected.iter().any(|r| r == spec.name) {
            continue;
        }
        if let Some(default) = default_value(spec) {
            values.insert(spec.name.to_string(), default);
        } else if spec.required {
            diags.push(source.diag(
                with.map(|w| w.span).unwrap_or(stage_span),
                format!("kind `{}` needs parameter `{}` ({})", kind.name(), spec.name, spec.doc),
                None,
            ));
        }
    }
    let params = Params::new(values);
    for (field, message) in kind.check(&params) {
        if rejected.contains(&field) {
            continue;
        }
        let span = spans
            .get(&field)
            .copied()
            .or(with.map(|w| w.span))
            .unwrap_or(stage_span);
        diags.push(source.diag(span, format!("parameter `{field}`: {message}"), None));
    }
    params
}

fn default_value(spec: &ParamSpec) -> Option<Value> {
    spec.default.and_then(|text| serde_json::from_str(text).ok())
}

/// backend, device, resources, retries and requeue: the stage's own, else `defaults:`.
pub fn settings(
    source: &RecipeSource,
    node: &Node,
    defaults: Option<&Node>,
    scope: &Scope,
    compiled_backends: &[&str],
    diags: &mut Diagnostics,
) -> (String, usize, Resources, RunPolicy) {
    let pick = |key: &str| -> Option<Node> {
        node.get(key)
            .cloned()
            .or_else(|| defaults.and_then(|d| d.get(key)).and_then(|n| scope.apply(n).ok()))
    };
    let mut backend = "auto".to_string();
    if let Some(b) = pick("backend") {
        match b.as_str() {
            // Said now, not when the stage starts after hours of upstream work.
            Some(s) if s != "auto" && BACKENDS.contains(&s) && !compiled_backends.contains(&s) => {
                diags.push(source.diag(
                    b.span,
                    format!("this babelflow was built without the `{s}` backend"),
                    Some(format!(
                        "this build has: {}; rebuild with `--features {s}` or write backend: auto",
                        compiled_backends.join(", ")
                    )),
                ))
            }
            Some(s) if BACKENDS.contains(&s) => backend = s.to_string(),
            _ => diags.push(source.diag(
                b.span,
                format!(
                    "`backend` must be one of {}, found {}",
                    BACKENDS.join(", "),
                    b.describe()
                ),
                b.as_str().and_then(|s| did_you_mean(s, BACKENDS.iter().copied())),
            )),
        }
    }
    let mut device = 0;
    if let Some(d) = pick("device") {
        match (d.to_value().as_u64(), d.as_str()) {
            (Some(i), _) => device = i as usize,
            (None, Some("local")) => device = LOCAL_RANK_DEVICE,
            _ => diags.push(source.diag(
                d.span,
                format!(
                    "`device` must be a device number or `local` (the local rank's), found {}",
                    d.describe()
                ),
                None,
            )),
        }
    }
    let mut resources = Resources {
        gpu: matches!(backend.as_str(), "wgpu" | "vulkan" | "cuda"),
        ..Resources::default()
    };
    if let Some(r) = pick("resources") {
        resources_of(source, &r, &mut resources, diags);
    }
    let mut policy = RunPolicy::default();
    if let Some(n) = pick("retries") {
        match n.to_value().as_u64() {
            Some(k) if k <= 100 => policy.retries = Some(k as u32),
            _ => diags.push(source.diag(
                n.span,
                format!("`retries` must be a whole number from 0 to 100, found {}", n.describe()),
                None,
            )),
        }
    }
    if let Some(b) = pick("requeue") {
        match b.to_value() {
            Value::Bool(v) => policy.requeue = v,
            _ => diags.push(source.diag(
                b.span,
                format!("`requeue` must be true or false, found {}", b.describe()),
                None,
            )),
        }
    }
    (backend, device, resources, policy)
}

const RESOURCE_KEYS: [&str; 7] = ["cpus", "gpu", "gpus", "memory", "time", "nodes", "tasks_per_node"];

/// `device: local`: each rank of a data-parallel run takes the device of
/// its local rank (`LOCAL_RANK`, `SLURM_LOCALID`); one process takes 0.
pub const LOCAL_RANK_DEVICE: usize = usize::MAX;

/// `resources: {cpus, gpu | gpus, memory, time, nodes, tasks_per_node}`:
/// what the local scheduler packs by (cpus, gpu, processes) and what a
/// cluster job asks for (all of them). `cpus` and `gpus` are per process.
fn resources_of(source: &RecipeSource, r: &Node, resources: &mut Resources, diags: &mut Diagnostics) {
    let Some(entries) = r.as_map() else {
        diags.push(source.diag(r.span, "`resources` must be a mapping like {cpus: 2, gpu: true}", None));
        return;
    };
    for (k, v) in entries {
        let key = k.as_str().unwrap_or_default();
        let value = v.to_value();
        let wrong = |expected: &str| {
            source.diag(
                v.span,
                format!("`resources.{key}` must be {expected}, found {}", v.describe()),
                None,
            )
        };
        match key {
            "cpus" => match value.as_u64() {
                Some(c) if c >= 1 => resources.cpus = c as usize,
                _ => diags.push(wrong("a positive integer")),
            },
            "gpu" => match value {
                Value::Bool(b) => {
                    resources.gpu = b;
                    resources.gpus = usize::from(b);
                }
                _ => diags.push(wrong("true or false")),
            },
            "gpus" => match value.as_u64() {
                Some(n) => {
                    resources.gpus = n as usize;
                    resources.gpu = n > 0;
                }
                None => diags.push(wrong("a whole number of GPUs")),
            },
            "nodes" => match value.as_u64() {
                Some(n) if n >= 1 => resources.nodes = n as usize,
                _ => diags.push(wrong("a positive number of machines")),
            },
            "tasks_per_node" => match value.as_u64() {
                Some(n) if n >= 1 => resources.tasks_per_node = n as usize,
                _ => diags.push(wrong("a positive number of processes per machine")),
            },
            "memory" => match value_text(&value).filter(|t| valid_memory(t)) {
                Some(t) => resources.memory = Some(t),
                None => diags.push(wrong("an amount like 8G, 512M or 16000 (megabytes)")),
            },
            "time" => match value_text(&value).filter(|t| valid_time(t)) {
                Some(t) => resources.time = Some(t),
                None => diags.push(wrong("a Slurm time limit like 90 (minutes), 2:00:00 or 1-12:00:00")),
            },
            _ => diags.push(
                source.diag(
                    k.span,
                    format!("unknown resource `{key}`"),
                    did_you_mean(key, RESOURCE_KEYS)
                        .or_else(|| Some(format!("resources are {}", RESOURCE_KEYS.join(", ")))),
                ),
            ),
        }
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}

/// Slurm's `--mem`: a number, optionally K, M, G or T.
pub fn valid_memory(text: &str) -> bool {
    let digits = text
        .strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't'])
        .unwrap_or(text);
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// Slurm's `--time`: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
pub fn valid_time(text: &str) -> bool {
    let numbers = |part: &str, most: usize| {
        let fields: Vec<&str> = part.split(':').collect();
        fields.len() <= most
            && fields
                .iter()
                .all(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_digit()))
    };
    match text.split_once('-') {
        Some((days, rest)) => numbers(days, 1) && numbers(rest, 3),
        None => numbers(text, 3),
    }
}
