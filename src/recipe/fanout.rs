//! `foreach` and `matrix`: a stage's declaration → one binding per instance.

use std::collections::BTreeMap;

use super::interpolate::Scope;
use super::schema::valid_name;
use super::yaml::{Node, NodeKind};
use super::RecipeSource;
use crate::diagnostics::Diagnostics;

/// One `foreach`/`matrix` combination: its label and what `${...}` sees.
pub struct Binding {
    pub label: Option<String>,
    pub item: Option<Node>,
    pub matrix: BTreeMap<String, Node>,
}

pub fn without_fanout(node: &Node) -> Node {
    let mut out = node.clone();
    if let NodeKind::Map(entries) = &mut out.kind {
        entries.retain(|(k, _)| !matches!(k.as_str(), Some("foreach" | "matrix")));
    }
    out
}

/// The stage's `foreach`/`matrix` combinations (one unlabeled binding if neither).
pub fn bindings(source: &RecipeSource, decl: &Node, scope: &Scope, diags: &mut Diagnostics) -> Option<Vec<Binding>> {
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
