//! A stage's `with:` checked against its kind's declared parameters, and
//! its `backend`, `device` and `resources` (its own, else `defaults:`).

use std::collections::HashMap;

use babelflow_stage::{ParamSpec, Params, StageKind};
use serde_json::{Map, Value};

use super::expand::Resources;
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

/// backend, device and resources: the stage's own, else `defaults:`.
pub fn settings(
    source: &RecipeSource,
    node: &Node,
    defaults: Option<&Node>,
    scope: &Scope,
    compiled_backends: &[&str],
    diags: &mut Diagnostics,
) -> (String, usize, Resources) {
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
        match d.to_value().as_u64() {
            Some(i) => device = i as usize,
            None => diags.push(source.diag(
                d.span,
                format!("`device` must be a device number, found {}", d.describe()),
                None,
            )),
        }
    }
    let mut resources = Resources {
        gpu: matches!(backend.as_str(), "wgpu" | "vulkan" | "cuda"),
        ..Resources::default()
    };
    if let Some(r) = pick("resources") {
        match r.as_map() {
            None => diags.push(source.diag(r.span, "`resources` must be a mapping like {cpus: 2, gpu: true}", None)),
            Some(entries) => {
                for (k, v) in entries {
                    match (k.as_str().unwrap_or_default(), v.to_value()) {
                        ("cpus", Value::Number(n)) if n.as_u64().is_some_and(|c| c >= 1) => {
                            resources.cpus = n.as_u64().unwrap_or(1) as usize
                        }
                        ("gpu", Value::Bool(b)) => resources.gpu = b,
                        (key @ ("cpus" | "gpu"), _) => diags.push(source.diag(
                            v.span,
                            format!(
                                "`resources.{key}` must be {}, found {}",
                                if key == "cpus" {
                                    "a positive integer"
                                } else {
                                    "true or false"
                                },
                                v.describe()
                            ),
                            None,
                        )),
                        (key, _) => diags.push(source.diag(
                            k.span,
                            format!("unknown resource `{key}`"),
                            did_you_mean(key, ["cpus", "gpu"]).or_else(|| Some("resources are cpus and gpu".into())),
                        )),
                    }
                }
            }
        }
    }
    (backend, device, resources)
}
