//! From a recipe tree to checked instances: `foreach`/`matrix` fan-out,
//! interpolation, typed parameters, and `needs` resolved to other instances'
//! outputs or to the user's files. Every problem is collected, so one pass
//! reports all of them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use babelflow_stage::{Params, StageKind};

use super::fanout::{bindings, without_fanout};
use super::interpolate::Scope;
use super::needs::{needs, resolve_refs, Pending};
use super::overrides::set_path;
use super::params::{check_params, settings};
use super::schema::{check_keys, valid_name, DEFAULT_KEYS, RECIPE_KEYS, STAGE_KEYS};
use super::yaml::{Node, Span};
use super::RecipeSource;
use crate::diagnostics::{did_you_mean, Diagnostic, Diagnostics, Location};
use crate::registry::Registry;

/// What an instance may use at once; the scheduler packs instances under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub cpus: usize,
    /// Takes the slot of its device (one GPU-using instance per device).
    pub gpu: bool,
    /// GPUs a cluster job asks for (`gpu: true` is one).
    pub gpus: usize,
    /// A cluster job's memory (`--mem`), as written.
    pub memory: Option<String>,
    /// A cluster job's time limit (`--time`), as written.
    pub time: Option<String>,
    /// Machines a data-parallel stage spans (`srun --nodes`).
    pub nodes: usize,
    /// Processes (ranks) per machine: `mpirun -np` locally, `--ntasks-per-node` on Slurm.
    pub tasks_per_node: usize,
}

impl Resources {
    /// Ranks in all: more than one only for a data-parallel stage.
    pub fn processes(&self) -> usize {
        self.nodes * self.tasks_per_node
    }
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 1,
            gpu: false,
            gpus: 0,
            memory: None,
            time: None,
            nodes: 1,
            tasks_per_node: 1,
        }
    }
}

/// What to do when an instance fails or its job is preempted. Not part of
/// the fingerprint: it changes how an artifact is made, never what it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPolicy {
    /// Attempts after the first; `None`: the executor's default (0 locally, 1 on Slurm).
    pub retries: Option<u32>,
    /// On Slurm: `--requeue --signal=B:USR1@120`; the job checkpoints on the signal and requeues itself.
    pub requeue: bool,
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
    pub policy: RunPolicy,
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
    check_instance_overrides(source, &pending, &mut diags);
    let declared: Vec<&str> = seen_stages.keys().copied().collect();
    resolve_refs(source, &mut pending, &declared, &mut diags);
    (pending.into_iter().map(|p| p.instance).collect(), diags)
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
        let (backend, device, mut resources, policy) =
            settings(source, &node, defaults, &scope_vars, registry.backends(), diags);
        if resources.processes() > 1 && !kind.data_parallel() && node.get("resources").is_none() {
            // `defaults: resources: {tasks_per_node: 4}` is meant for the
            // training stages; the others keep running in one process.
            (resources.nodes, resources.tasks_per_node) = (1, 1);
        }
        if resources.processes() > 1 && !kind.data_parallel() {
            diags.push(source.diag(
                node.get("resources").map_or(stage_span, |r| r.span),
                format!(
                    "`{}` runs in one process: `resources.nodes` and `resources.tasks_per_node` are for the data-parallel kinds (pretrain, sft)",
                    kind.name()
                ),
                None,
            ));
        }
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
                policy,
                span: stage_span,
            },
            refs,
            input_spans,
            needs_span: needs_span.unwrap_or(stage_span),
        });
    }
}

/// `--set stages.X@label...` must name an instance stage X produces; one
/// that matches none would otherwise change nothing, silently.
fn check_instance_overrides(source: &RecipeSource, pending: &[Pending], diags: &mut Diagnostics) {
    for o in &source.overrides {
        let Some((stage, label, _)) = o.instance_target() else {
            continue;
        };
        let instances: Vec<&str> = pending
            .iter()
            .filter(|p| p.instance.stage == stage)
            .map(|p| p.instance.name.as_str())
            .collect();
        let wanted = format!("{stage}@{label}");
        // A stage that failed to expand has its own errors already.
        if instances.is_empty() || instances.contains(&wanted.as_str()) {
            continue;
        }
        let help = if instances == [stage] {
            Some(format!(
                "`{stage}` has no foreach or matrix: write --set stages.{stage}.…"
            ))
        } else {
            did_you_mean(&wanted, instances.iter().copied())
                .or_else(|| Some(format!("its instances: {}", instances.join(", "))))
        };
        diags.push(Diagnostic {
            location: Location::Override {
                index: o.index,
                text: o.text.clone(),
            },
            message: format!("stage `{stage}` has no instance `{wanted}`"),
            help,
            source_line: None,
        });
    }
}
