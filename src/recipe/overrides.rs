//! `--set path.to.key=value` overrides.
//!
//! `stages.X.with.k=v` changes stage X (all its instances); `stages.X@sw.with.k=v`
//! changes only instance `X@sw`, applied during expansion. Values are YAML
//! (`--set stages.mix.with.ratios='{zh: 0.9, en: 0.1}'`).
//!
//! Overridden nodes get a span with line 0 and the override's number as
//! column, so errors about them point at the `--set` rather than the file.

use super::yaml::{self, Node, NodeKind, Span};

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
