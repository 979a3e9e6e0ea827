//! From a recipe tree to checked instances: `foreach`/`matrix` fan-out,
//! interpolation, typed parameters, and `needs` resolved to other instances'
//! outputs or to the user's files. Every problem is collected, so one pass
//! reports all of them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use babelflow_stage::{ParamSpec, Params, StageKind};
use serde_json::{Map, Value};

use super::interpolate::Scope;
use super::overrides::set_path;
use super::yaml::{Node, NodeKind, Span};
use super::RecipeSource;
use crate::diagnostics::{did_you_mean, Diagnostics};
use crate::registry::Registry;

const RECIPE_KEYS: &[&str] = &["name", "description", "vars", "defaults", "stages"];
const STAGE_KEYS: &[&str] = &[
    "kind",
    "description",
    "with",
    "needs",
    "foreach",
    "matrix",
    "backend",
    "device",
    "resources",
];
const DEFAULT_KEYS: &[&str] = &["backend", "device", "resources"];
const BACKENDS: &[&str] = &["auto", "cpu", "wgpu", "vulkan", "cuda"];

/// What an instance may use at once; the scheduler packs instances under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpus: usize,
    /// Takes the slot of its device (one GPU-using instance per device).
    pub gpu: bool,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpus: 1, gpu: false }
    }
}

/// Where one bound input comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An output of another instance (index into the instance list).
    Artifact { instance: usize, output: String },
    /// A file of the user's (a glob match), `path` as the process can open it.
    File { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub struct InputBinding {
    pub name: String,
    pub sources: Vec<Source>,
}

/// One runnable unit: a stage, or one item of a `foreach`/`matrix` stage.
#[derive(Clone)]
pub struct Instance {
    /// `tokens@sw`, or the stage name when the stage does not fan out.
    pub name: String,
    pub stage: String,
    pub label: Option<String>,
    pub kind: Arc<dyn StageKind>,
    pub params: Params,
    pub inputs: Vec<InputBinding>,
    pub outputs: Vec<String>,
    pub backend: String,
    pub device: usize,
    pub resources: Resources,
    pub span: Span,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .field("params", &self.params)
            .field("inputs", &self.inputs)
            .finish()
    }
}

/// A `needs` reference before resolution.
struct PendingRef {
    input: String,
    text: String,
    span: Span,
}

struct Pending {
    instance: Instance,
    refs: Vec<PendingRef>,
    /// Spans of declared input names, for "unknown input" errors.
    input_spans: Vec<(String, Span)>,
    needs_span: Span,
}

/// Expands a recipe into instances, with every problem found. Instances
/// that had problems are still returned where possible, so later checks
/// (cycles) can run in the same pass.
pub fn expand(source: &RecipeSource, registry: &Registry) -> (Vec<Instance>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let root = &source.root;
    check_keys(source, root, RECIPE_KEYS, "recipe", &mut diags);
    let vars = root.get("vars");
    let defaults = root.get("defaults");
    if let Some(d) = defaults {
        check_keys(source, d, DEFAULT_KEYS, "defaults", &mut diags);
    }
    let Some(stages) = root.get("stages") else {
        diags.push(source.diag(root.span, "the recipe has no `stages`", None));
        return (Vec::new(), diags);
    };
    let Some(stage_entries) = stages.as_map() else {
        diags.push(source.diag(stages.span, "`stages` must be a mapping of stage names to stages", None));
        return (Vec::new(), diags);
    };

    let mut pending: Vec<Pending> = Vec::new();
    let mut seen_stages: HashMap<&str, Span> = HashMap::new();
    for (key, decl) in stage_entries {
        let Some(stage_name) = key.as_str() else { continue };
        if let Some(first) = seen_stages.insert(stage_name, key.span) {
            diags.push(source.diag(
                key.span,
                format!("stage `{stage_name}` is declared twice (first at line {})", first.line),
                None,
            ));
            continue;
        }
        if !valid_name(stage_name) {
            diags.push(source.diag(
                key.span,
                format!("stage name {stage_name:?} may only hold letters, digits, `-`, `_` and `.`"),
                None,
            ));
            continue;
        }
        expand_stage(
            source,
            registry,
            stage_name,
            key.span,
            decl,
            vars,
            defaults,
            &mut pending,
            &mut diags,
        );
    }

    // Duplicate instance names (a repeated foreach item, colliding matrix labels).
    let mut names: HashMap<String, Span> = HashMap::new();
    for p in &pending {
        if let Some(first) = names.insert(p.instance.name.clone(), p.instance.span) {
            diags.push(source.diag(
                p.instance.span,
                format!(
                    "instance `{}` is produced twice (also by the stage at line {}); foreach items and matrix combinations must be unique",
                    p.instance.name, first.line
                ),
                None,
            ));
        }
    }
    let declared: Vec<&str> = seen_stages.keys().copied().collect();
    resolve_refs(source, &mut pending, &declared, &mut diags);
    (pending.into_iter().map(|p| p.instance).collect(), diags)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || "-_.".contains(c))
}

fn check_keys(source: &RecipeSource, node: &Node, allowed: &[&str], what: &str, diags: &mut Diagnostics) {
    let Some(entries) = node.as_map() else {
        diags.push(source.diag(
            node.span,
            format!("{what} must be a mapping, found {}", node.describe()),
            None,
        ));
        return;
    };
    for (k, _) in entries {
        let key = k.as_str().unwrap_or_default();
        if !allowed.contains(&key) {
            diags.push(
                source.diag(
                    k.span,
                    format!("unknown key `{key}` in {what}"),
                    did_you_mean(key, allowed.iter().copied())
                        .or_else(|| Some(format!("allowed keys: {}", allowed.join(", ")))),
                ),
            );
        }
    }
}

/// One `foreach`/`matrix` combination: its label and what `${...}` sees.
struct Binding {
    label: Option<String>,
    item: Option<Node>,
    matrix: BTreeMap<String, Node>,
}

#[allow(clippy::too_many_arguments)]
fn expand_stage(
    source: &RecipeSource,
    registry: &Registry,
    stage_name: &str,
    stage_span: Span,
    decl: &Node,
    vars: Option<&Node>,
    defaults: Option<&Node>,
    pending: &mut Vec<Pending>,
    diags: &mut Diagnostics,
) {
    check_keys(source, decl, STAGE_KEYS, &format!("stage `{stage_name}`"), diags);
    if decl.as_map().is_none() {
        return;
    }
    let kind = match decl.get("kind") {
        None => {
            diags.push(source.diag(stage_span, format!("stage `{stage_name}` has no `kind`"), None));
            return;
        }
        Some(node) => {
            let name = node.as_str().unwrap_or_default();
            match registry.get(name) {
                Some(kind) => kind,
                None => {
                    diags.push(source.diag(
                        node.span,
                        format!("unknown stage kind `{name}`"),
                        did_you_mean(name, registry.names()).or_else(|| {
                            Some(format!(
                                "known kinds: {}",
                                registry.names().collect::<Vec<_>>().join(", ")
                            ))
                        }),
                    ));
                    return;
                }
            }
        }
    };
    let scope_vars = Scope {
        vars,
        item: None,
        matrix: BTreeMap::new(),
    };
    let Some(bindings) = bindings(source, decl, &scope_vars, diags) else {
        return;
    };

    for binding in bindings {
        let name = match &binding.label {
            Some(label) => format!("{stage_name}@{label}"),
            None => stage_name.to_string(),
        };
        // Instance-specific overrides (`--set stages.X@label.with.k=v`).
        let mut node = decl.clone();
        for o in &source.overrides {
            if let Some((stage, label, rest)) = o.instance_target() {
                if stage == stage_name && Some(label) == binding.label.as_deref() {
                    set_path(&mut node, rest, o.value.clone());
                }
            }
        }
        let scope = Scope {
            vars,
            item: binding.item.clone(),
            matrix: binding.matrix.clone(),
        };
        let node = match scope.apply(&without_fanout(&node)) {
            Ok(n) => n,
            Err(e) => {
                diags.push(source.diag(e.span, e.message, e.help));
                continue;
            }
        };
        let params = check_params(source, kind.as_ref(), &node, stage_span, diags);
        let (backend, device, resources) = settings(source, &node, defaults, &scope_vars, diags);
        let outputs = kind.outputs(&params);
        let (refs, input_spans, needs_span) = needs(source, &node, diags);
        pending.push(Pending {
            instance: Instance {
                name,
                stage: stage_name.to_string(),
                label: binding.label,
                kind: kind.clone(),
                params,
                inputs: Vec::new(),
                outputs,
                backend,
                device,
                resources,
                span: stage_span,
            },
            refs,
            input_spans,
            needs_span: needs_span.unwrap_or(stage_span),
        });
    }
}

fn without_fanout(node: &Node) -> Node {
    let mut out = node.clone();
    if let NodeKind::Map(entries) = &mut out.kind {
        entries.retain(|(k, _)| !matches!(k.as_str(), Some("foreach" | "matrix")));
    }
    out
}

/// The stage's `foreach`/`matrix` combinations (one unlabeled binding if neither).
fn bindings(source: &RecipeSource, decl: &Node, scope: &Scope, diags: &mut Diagnostics) -> Option<Vec<Binding>> {
    let foreach = decl.get("foreach");
    let matrix = decl.get("matrix");
    if let (Some(_), Some(m)) = (foreach, matrix) {
        diags.push(source.diag(m.span, "a stage takes `foreach` or `matrix`, not both", None));
        return None;
    }
    let list_of = |node: &Node, what: &str, diags: &mut Diagnostics| -> Option<Vec<Node>> {
        let resolved = match scope.apply(node) {
            Ok(n) => n,
            Err(e) => {
                diags.push(source.diag(e.span, e.message, e.help));
                return None;
            }
        };
        let Some(items) = resolved.as_seq() else {
            diags.push(source.diag(
                node.span,
                format!("{what} must be a list, found {}", resolved.describe()),
                None,
            ));
            return None;
        };
        let mut ok = true;
        let mut seen = std::collections::HashSet::new();
        for item in items {
            match item.as_str() {
                Some(s) if !seen.insert(s.to_string()) => {
                    diags.push(source.diag(
                        item.span,
                        format!("{what} lists `{s}` twice; each item makes an instance and names must be unique"),
                        None,
                    ));
                    ok = false;
                }
                Some(s) if valid_name(s) => {}
                _ => {
                    diags.push(source.diag(
                        item.span,
                        format!(
                            "{what} item {} must be a plain name (letters, digits, `-`, `_`, `.`)",
                            item.describe()
                        ),
                        None,
                    ));
                    ok = false;
                }
            }
        }
        ok.then(|| items.to_vec())
    };
    if let Some(f) = foreach {
        let items = list_of(f, "`foreach`", diags)?;
        return Some(
            items
                .into_iter()
                .map(|item| Binding {
                    label: item.as_str().map(str::to_string),
                    item: Some(item),
                    matrix: BTreeMap::new(),
                })
                .collect(),
        );
    }
    if let Some(m) = matrix {
        let Some(axes) = m.as_map() else {
            diags.push(source.diag(
                m.span,
                format!("`matrix` must map axis names to lists, found {}", m.describe()),
                None,
            ));
            return None;
        };
        let mut combos: Vec<Vec<(String, Node)>> = vec![Vec::new()];
        for (axis, values) in axes {
            let axis = axis.as_str().unwrap_or_default().to_string();
            let items = list_of(values, &format!("matrix axis `{axis}`"), diags)?;
            let mut next_combos = Vec::with_capacity(combos.len() * items.len());
            for combo in &combos {
                for item in &items {
                    let mut next = combo.clone();
                    next.push((axis.clone(), item.clone()));
                    next_combos.push(next);
                }
            }
            combos = next_combos;
        }
        return Some(
            combos
                .into_iter()
                .map(|combo| {
                    let label = combo
                        .iter()
                        .filter_map(|(_, n)| n.as_str())
                        .collect::<Vec<_>>()
                        .join("-");
                    Binding {
                        item: Some(Node::scalar(label.clone(), m.span)),
                        label: Some(label),
                        matrix: combo.into_iter().collect(),
                    }
                })
                .collect(),
        );
    }
    Some(vec![Binding {
        label: None,
        item: None,
        matrix: BTreeMap::new(),
    }])
}

/// Checks `with:` against the kind's declared parameters and fills defaults.
fn check_params(
    source: &RecipeSource,
    kind: &dyn StageKind,
    node: &Node,
    stage_span: Span,
    diags: &mut Diagnostics,
) -> Params {
    let specs = kind.params();
    let mut values = Map::new();
    let mut spans: HashMap<String, Span> = HashMap::new();
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
                    match spec.ty.coerce(&v.to_value()) {
                        Ok(value) => {
                            values.insert(key.to_string(), value);
                            spans.insert(key.to_string(), v.span);
                        }
                        Err(message) => diags.push(source.diag(
                            v.span,
                            format!("parameter `{key}` of kind `{}`: {message}", kind.name()),
                            Some(spec.doc.to_string()),
                        )),
                    }
                }
            }
        }
    }
    for spec in specs {
        if values.contains_key(spec.name) {
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
fn settings(
    source: &RecipeSource,
    node: &Node,
    defaults: Option<&Node>,
    scope: &Scope,
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

/// Reads `needs:` into unresolved references.
fn needs(
    source: &RecipeSource,
    node: &Node,
    diags: &mut Diagnostics,
) -> (Vec<PendingRef>, Vec<(String, Span)>, Option<Span>) {
    let mut refs = Vec::new();
    let mut names = Vec::new();
    let Some(needs) = node.get("needs") else {
        return (refs, names, None);
    };
    let Some(entries) = needs.as_map() else {
        diags.push(source.diag(
            needs.span,
            format!("`needs` must map input names to references, found {}", needs.describe()),
            Some("e.g. needs: { corpus: corpus@sw, tokenizer: data/tokenizer.json }".into()),
        ));
        return (refs, names, Some(needs.span));
    };
    for (k, v) in entries {
        let input = k.as_str().unwrap_or_default().to_string();
        names.push((input.clone(), k.span));
        let items: Vec<&Node> = match &v.kind {
            NodeKind::Seq(items) => items.iter().collect(),
            _ => vec![v],
        };
        for item in items {
            match item.as_str() {
                Some(text) if !text.is_empty() => refs.push(PendingRef {
                    input: input.clone(),
                    text: text.to_string(),
                    span: item.span,
                }),
                _ => diags.push(source.diag(
                    item.span,
                    format!(
                        "input `{input}`: expected an instance reference or a file path, found {}",
                        item.describe()
                    ),
                    None,
                )),
            }
        }
    }
    (refs, names, Some(needs.span))
}

/// A reference names an instance unless it looks like a path.
fn is_path(text: &str) -> bool {
    text.contains('/') || text.starts_with('.') || text.contains(['*', '?', '['])
}

fn resolve_refs(source: &RecipeSource, pending: &mut [Pending], declared: &[&str], diags: &mut Diagnostics) {
    let by_name: HashMap<String, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, p)| (p.instance.name.clone(), i))
        .collect();
    let mut by_stage: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        by_stage.entry(p.instance.stage.clone()).or_default().push(i);
    }
    let outputs: Vec<Vec<String>> = pending.iter().map(|p| p.instance.outputs.clone()).collect();
    let instance_names: Vec<String> = pending.iter().map(|p| p.instance.name.clone()).collect();

    for p in pending.iter_mut() {
        let kind = p.instance.kind.clone();
        let mut bindings: Vec<InputBinding> = Vec::new();
        for r in &p.refs {
            let sources = if is_path(&r.text) {
                resolve_files(source, r, diags)
            } else {
                resolve_instance(
                    source,
                    r,
                    &by_name,
                    &by_stage,
                    &outputs,
                    &instance_names,
                    declared,
                    diags,
                )
            };
            match bindings.iter_mut().find(|b| b.name == r.input) {
                Some(b) => b.sources.extend(sources),
                None => bindings.push(InputBinding {
                    name: r.input.clone(),
                    sources,
                }),
            }
        }
        // Input names and arity against the kind's declaration.
        if !kind.open_inputs() {
            let specs = kind.inputs();
            for (name, span) in &p.input_spans {
                if !specs.iter().any(|s| s.name == name) {
                    diags.push(source.diag(
                        *span,
                        format!("kind `{}` has no input `{name}`", kind.name()),
                        did_you_mean(name, specs.iter().map(|s| s.name)).or_else(|| {
                            Some(format!(
                                "its inputs are: {}",
                                specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                            ))
                        }),
                    ));
                }
            }
            for spec in specs {
                let bound = bindings.iter().find(|b| b.name == spec.name).map(|b| b.sources.len());
                if spec.required && !p.input_spans.iter().any(|(n, _)| n == spec.name) {
                    diags.push(source.diag(
                        p.needs_span,
                        format!("`{}` needs input `{}` ({})", p.instance.name, spec.name, spec.doc),
                        None,
                    ));
                }
                if let Some(n) = bound {
                    if n > 1 && !spec.many {
                        let span = p
                            .input_spans
                            .iter()
                            .find(|(name, _)| name == spec.name)
                            .map(|(_, s)| *s);
                        diags.push(source.diag(
                            span.unwrap_or(p.needs_span),
                            format!(
                                "input `{}` of kind `{}` takes one artifact, {n} are bound",
                                spec.name,
                                kind.name()
                            ),
                            Some("name one instance (`stage@item`) instead of the whole stage".into()),
                        ));
                    }
                }
            }
        }
        p.instance.inputs = bindings;
    }
}

fn resolve_files(source: &RecipeSource, r: &PendingRef, diags: &mut Diagnostics) -> Vec<Source> {
    let pattern = if std::path::Path::new(&r.text).is_absolute() {
        r.text.clone()
    } else {
        source.dir.join(&r.text).to_string_lossy().into_owned()
    };
    match glob::glob(&pattern) {
        Err(e) => {
            diags.push(source.diag(
                r.span,
                format!("input `{}`: bad file pattern {:?}: {e}", r.input, r.text),
                None,
            ));
            Vec::new()
        }
        Ok(paths) => {
            let mut files: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
            files.sort();
            if files.is_empty() {
                diags.push(source.diag(
                    r.span,
                    format!(
                        "input `{}`: no file matches {:?} (looked in {})",
                        r.input,
                        r.text,
                        source.dir.display()
                    ),
                    Some("paths are relative to the recipe's folder".into()),
                ));
            }
            files.into_iter().map(|path| Source::File { path }).collect()
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn resolve_instance(
    source: &RecipeSource,
    r: &PendingRef,
    by_name: &HashMap<String, usize>,
    by_stage: &BTreeMap<String, Vec<usize>>,
    outputs: &[Vec<String>],
    instance_names: &[String],
    declared: &[&str],
    diags: &mut Diagnostics,
) -> Vec<Source> {
    let (target, output) = match r.text.split_once(':') {
        Some((t, o)) => (t, Some(o)),
        None => (r.text.as_str(), None),
    };
    let (stage, label) = match target.split_once('@') {
        Some((s, l)) => (s, Some(l)),
        None => (target, None),
    };
    let Some(stage_instances) = by_stage.get(stage) else {
        if declared.contains(&stage) {
            // The stage exists but has errors of its own, already reported.
            return Vec::new();
        }
        diags.push(
            source.diag(
                r.span,
                format!(
                    "input `{}` refers to stage `{stage}`, which the recipe does not have",
                    r.input
                ),
                did_you_mean(stage, by_stage.keys().map(String::as_str))
                    .or_else(|| Some("file paths must contain `/` (write ./file for the recipe's folder)".into())),
            ),
        );
        return Vec::new();
    };
    let targets: Vec<usize> = match label {
        None | Some("*") => stage_instances.clone(),
        Some(_) => match by_name.get(target) {
            Some(&i) => vec![i],
            None => {
                diags.push(source.diag(
                    r.span,
                    format!(
                        "input `{}` refers to instance `{target}`, which stage `{stage}` does not produce",
                        r.input
                    ),
                    did_you_mean(target, stage_instances.iter().map(|&i| instance_names[i].as_str())).or_else(|| {
                        Some(format!(
                            "its instances: {}",
                            stage_instances
                                .iter()
                                .map(|&i| instance_names[i].as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    }),
                ));
                return Vec::new();
            }
        },
    };
    let mut sources = Vec::new();
    for i in targets {
        let output = match output {
            Some(o) => {
                if !outputs[i].iter().any(|x| x == o) {
                    diags.push(
                        source.diag(
                            r.span,
                            format!(
                                "input `{}`: instance `{}` has no output `{o}`",
                                r.input, instance_names[i]
                            ),
                            did_you_mean(o, outputs[i].iter().map(String::as_str))
                                .or_else(|| Some(format!("its outputs: {}", outputs[i].join(", ")))),
                        ),
                    );
                    continue;
                }
                o.to_string()
            }
            None => match outputs[i].first() {
                Some(o) => o.clone(),
                None => continue,
            },
        };
        sources.push(Source::Artifact { instance: i, output });
    }
    sources
}
