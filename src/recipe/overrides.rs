//! `--set path.to.key=value` overrides.
//!
//! `stages.X.with.k=v` changes stage X (all its instances); `stages.X@sw.with.k=v`
//! changes only instance `X@sw`, applied during expansion. Values are YAML
//! (`--set stages.mix.with.ratios='{zh: 0.9, en: 0.1}'`).
//!
//! Overridden nodes get a span with line 0 and the override's number as
//! column, so errors about them point at the `--set` rather than the file.

use super::schema::{DEFAULT_KEYS, EXECUTOR_KEYS, RECIPE_KEYS, STAGE_KEYS};
use super::yaml::{self, Node, NodeKind, Span};
use crate::diagnostics::did_you_mean;

#[derive(Debug, Clone)]
pub struct Override {
    /// 1-based position among the `--set` arguments.
    pub index: usize,
    pub text: String,
    pub path: Vec<String>,
    pub value: Node,
}

impl Override {
    pub fn parse(index: usize, text: &str) -> Result<Override, String> {
        let (path, value) = text.split_once('=').ok_or_else(|| "missing `=`".to_string())?;
        let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("`{}` is not a key path", path.join(".")));
        }
        let mut value = yaml::parse(value).map_err(|e| format!("the value is not YAML: {}", e.message))?;
        respan(&mut value, Span { line: 0, col: index });
        Ok(Override {
            index,
            text: text.to_string(),
            path,
            value,
        })
    }

    /// For `stages.X@label.rest...` overrides: (stage, label, rest).
    pub fn instance_target(&self) -> Option<(&str, &str, &[String])> {
        if self.path.len() < 3 || self.path[0] != "stages" {
            return None;
        }
        let (stage, label) = self.path[1].split_once('@')?;
        Some((stage, label, &self.path[2..]))
    }
}

/// The `--set` number a span stands for, if it came from one.
pub fn override_index(span: Span) -> Option<usize> {
    (span.line == 0 && span.col > 0).then_some(span.col)
}

fn respan(node: &mut Node, span: Span) {
    node.span = span;
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| respan(n, span)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            respan(k, span);
            respan(v, span);
        }),
    }
}

/// Why an override's path names nothing the recipe could have: a
/// misspelt variable, stage or key would otherwise be set beside the real
/// one and silently change nothing. Checked against the recipe as written,
/// before any override is applied; instance labels (`stages.X@sw`) are
/// checked during expansion, where the instances are known.
pub fn check_path(root: &Node, o: &Override) -> Result<(), (String, Option<String>)> {
    let keys_of = |node: Option<&Node>| -> Vec<String> {
        node.and_then(Node::as_map)
            .unwrap_or_default()
            .iter()
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect()
    };
    let unknown = |what: String, wrong: &str, known: &[String]| {
        let help = did_you_mean(wrong, known.iter().map(String::as_str))
            .or_else(|| (!known.is_empty()).then(|| format!("it has: {}", known.join(", "))));
        Err((what, help))
    };
    let owned = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let top = o.path[0].as_str();
    if !RECIPE_KEYS.contains(&top) {
        return unknown(
            format!("a recipe has no top-level key `{top}`"),
            top,
            &owned(RECIPE_KEYS),
        );
    }
    let second = o.path.get(1).map(String::as_str);
    match (top, second) {
        ("name" | "description", Some(_)) => Err((format!("`{top}` is a single value; write --set {top}=VALUE"), None)),
        ("vars", Some(var)) => {
            let vars = root.get("vars");
            let known = keys_of(vars);
            if !known.iter().any(|k| k == var) {
                return unknown(format!("the recipe has no variable `{var}`"), var, &known);
            }
            check_inside(vars.and_then(|v| v.get(var)), &o.path[..2], &o.path[2..])
        }
        ("defaults", Some(key)) if !DEFAULT_KEYS.contains(&key) => {
            unknown(format!("`defaults` has no key `{key}`"), key, &owned(DEFAULT_KEYS))
        }
        ("executor", Some(key)) if !EXECUTOR_KEYS.contains(&key) => {
            unknown(format!("`executor` has no key `{key}`"), key, &owned(EXECUTOR_KEYS))
        }
        ("stages", Some(target)) => {
            let stage = target.split_once('@').map_or(target, |(s, _)| s);
            let stages = root.get("stages");
            let known = keys_of(stages);
            if !known.iter().any(|k| k == stage) {
                return unknown(format!("the recipe has no stage `{stage}`"), stage, &known);
            }
            match o.path.get(2).map(String::as_str) {
                Some(key) if !STAGE_KEYS.contains(&key) => {
                    unknown(format!("a stage has no key `{key}`"), key, &owned(STAGE_KEYS))
                }
                // Parameter, input and resource names are checked against
                // the kind when the stage is expanded, at this override.
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Below an existing variable, every step must go through a mapping: a
/// list or a scalar on the way would otherwise be replaced by a mapping.
fn check_inside(node: Option<&Node>, done: &[String], rest: &[String]) -> Result<(), (String, Option<String>)> {
    let (Some(node), Some(_)) = (node, rest.first()) else {
        return Ok(());
    };
    match &node.kind {
        NodeKind::Map(_) => check_inside(node.get(&rest[0]), &[done, &rest[..1]].concat(), &rest[1..]),
        _ => Err((
            format!(
                "`{}` is {}, not a mapping: set it whole",
                done.join("."),
                node.describe()
            ),
            Some(format!("e.g. --set '{}=[a, b]'", done.join("."))),
        )),
    }
}

/// Applies every override that is not instance-specific to the recipe tree.
pub fn apply_global(root: &mut Node, overrides: &[Override]) {
    for o in overrides.iter().filter(|o| o.instance_target().is_none()) {
        set_path(root, &o.path, o.value.clone());
    }
}

/// Sets `path` inside a mapping tree, creating mappings on the way.
pub fn set_path(node: &mut Node, path: &[String], value: Node) {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return;
    };
    if !matches!(node.kind, NodeKind::Map(_)) {
        node.kind = NodeKind::Map(Vec::new());
    }
    let NodeKind::Map(entries) = &mut node.kind else {
        return;
    };
    let position = entries.iter().position(|(k, _)| k.as_str() == Some(first));
    let index = match position {
        Some(i) => i,
        None => {
            let key = Node::scalar(first.clone(), value.span);
            let empty = Node {
                kind: NodeKind::Map(Vec::new()),
                span: value.span,
            };
            entries.push((key, empty));
            entries.len() - 1
        }
    };
    set_path(&mut entries[index].1, rest, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_keys_and_keeps_the_rest() {
        let mut root = yaml::parse("stages:\n  a:\n    with: {x: 1, y: 2}\n").unwrap();
        let o = Override::parse(1, "stages.a.with.x=5").unwrap();
        apply_global(&mut root, &[o]);
        let with = root.get("stages").unwrap().get("a").unwrap().get("with").unwrap();
        assert_eq!(with.to_value(), serde_json::json!({"x": 5, "y": 2}));
        assert_eq!(override_index(with.get("x").unwrap().span), Some(1));
    }

    #[test]
    fn instance_overrides_are_recognised() {
        let o = Override::parse(2, "stages.tok@sw.with.vocab=100").unwrap();
        assert_eq!(o.instance_target().map(|t| (t.0, t.1)), Some(("tok", "sw")));
    }

    #[test]
    fn rejects_text_without_equals() {
        assert!(Override::parse(1, "stages.a.with.x").is_err());
    }
}
