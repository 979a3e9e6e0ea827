//! `needs:`: references to other instances' outputs or to the user's
//! files, resolved and checked against each kind's declared inputs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::expand::{InputBinding, Instance, Source};
use super::yaml::{Node, NodeKind, Span};
use super::RecipeSource;
use crate::diagnostics::{did_you_mean, Diagnostics};

/// A `needs` reference before resolution.
pub struct PendingRef {
    pub input: String,
    pub text: String,
    pub span: Span,
}

pub struct Pending {
    pub instance: Instance,
    pub refs: Vec<PendingRef>,
    /// Spans of declared input names, for "unknown input" errors.
    pub input_spans: Vec<(String, Span)>,
    pub needs_span: Span,
}

/// Reads `needs:` into unresolved references.
pub fn needs(
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

pub fn resolve_refs(source: &RecipeSource, pending: &mut [Pending], declared: &[&str], diags: &mut Diagnostics) {
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
            for (name, why) in kind.inputs_required_by(&p.instance.params) {
                if !p.input_spans.iter().any(|(n, _)| n == name) {
                    diags.push(source.diag(
                        p.needs_span,
                        format!("`{}` needs input `{name}`: {why}", p.instance.name),
                        None,
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
