//! `${vars.x}`, `${item}` and `${matrix.axis}` in recipe values.
//!
//! A scalar that is exactly one `${...}` takes the referenced node whole (a
//! list stays a list, a number stays a number); inside longer text the
//! reference must be a scalar and is spliced in as text.

use std::collections::BTreeMap;

use super::yaml::{Node, NodeKind, Span};

/// What `${...}` can refer to for one instance.
pub struct Scope<'a> {
    pub vars: Option<&'a Node>,
    pub item: Option<Node>,
    pub matrix: BTreeMap<String, Node>,
}

/// A failed reference: where, and what went wrong.
#[derive(Debug)]
pub struct InterpError {
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

impl Scope<'_> {
    fn lookup(&self, expr: &str, span: Span) -> Result<Node, InterpError> {
        let expr = expr.trim();
        let fail = |message: String, help: Option<String>| InterpError { span, message, help };
        if expr == "item" {
            return self.item.clone().ok_or_else(|| {
                fail(
                    "`${item}` is only defined in a stage with `foreach` or `matrix`".into(),
                    None,
                )
            });
        }
        if let Some(axis) = expr.strip_prefix("matrix.") {
            return self.matrix.get(axis).cloned().ok_or_else(|| {
                let axes: Vec<&str> = self.matrix.keys().map(String::as_str).collect();
                fail(
                    format!("`${{{expr}}}`: this stage has no matrix axis `{axis}`"),
                    crate::diagnostics::did_you_mean(axis, axes),
                )
            });
        }
        if let Some(path) = expr.strip_prefix("vars.") {
            let mut node = self
                .vars
                .ok_or_else(|| fail(format!("`${{{expr}}}`: the recipe has no `vars`"), None))?;
            for key in path.split('.') {
                node = match node.get(key) {
                    Some(n) => n,
                    None => {
                        let keys: Vec<&str> = node
                            .as_map()
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|(k, _)| k.as_str())
                            .collect();
                        return Err(fail(
                            format!("`${{{expr}}}`: no variable `{key}`"),
                            crate::diagnostics::did_you_mean(key, keys),
                        ));
                    }
                };
            }
            return Ok(node.clone());
        }
        Err(fail(
            format!("`${{{expr}}}` is not something a recipe can refer to"),
            Some("use ${vars.NAME}, ${item} or ${matrix.AXIS}".into()),
        ))
    }

    /// Returns `node` with every reference replaced.
    pub fn apply(&self, node: &Node) -> Result<Node, InterpError> {
        match &node.kind {
            NodeKind::Scalar { text, quoted } => {
                if !text.contains("${") {
                    return Ok(node.clone());
                }
                if let Some(expr) = whole_reference(text) {
                    let mut resolved = self.lookup(expr, node.span)?;
                    set_span(&mut resolved, node.span);
                    return Ok(resolved);
                }
                let spliced = self.splice(text, node.span)?;
                Ok(Node {
                    kind: NodeKind::Scalar {
                        text: spliced,
                        quoted: *quoted,
                    },
                    span: node.span,
                })
            }
            NodeKind::Seq(items) => Ok(Node {
                kind: NodeKind::Seq(items.iter().map(|n| self.apply(n)).collect::<Result<_, _>>()?),
                span: node.span,
            }),
            NodeKind::Map(entries) => Ok(Node {
                kind: NodeKind::Map(
                    entries
                        .iter()
                        .map(|(k, v)| Ok((self.apply(k)?, self.apply(v)?)))
                        .collect::<Result<_, InterpError>>()?,
                ),
                span: node.span,
            }),
        }
    }

    fn splice(&self, text: &str, span: Span) -> Result<String, InterpError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| InterpError {
                span,
                message: format!("unclosed `${{` in {text:?}"),
                help: None,
            })?;
            let expr = &after[..end];
            let resolved = self.lookup(expr, span)?;
            match resolved.as_str() {
                Some(s) => out.push_str(s),
                None => {
                    return Err(InterpError {
                        span,
                        message: format!(
                            "`${{{expr}}}` is {} and cannot be part of a longer string",
                            resolved.describe()
                        ),
                        help: Some("use it as the whole value instead".into()),
                    })
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// `Some(expr)` when `text` is exactly `${expr}`.
fn whole_reference(text: &str) -> Option<&str> {
    let inner = text.strip_prefix("${")?.strip_suffix('}')?;
    (!inner.contains('}') && !inner.contains("${")).then_some(inner)
}

fn set_span(node: &mut Node, span: Span) {
    node.span = span;
    match &mut node.kind {
        NodeKind::Scalar { .. } => {}
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| set_span(n, span)),
        NodeKind::Map(entries) => entries.iter_mut().for_each(|(_, v)| set_span(v, span)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::yaml::parse;

    #[test]
    fn whole_references_keep_structure_and_splices_make_text() {
        let vars = parse("langs: [sw, vi]\nlr: 0.5\n").unwrap();
        let scope = Scope {
            vars: Some(&vars),
            item: Some(Node::scalar("sw", Span::default())),
            matrix: BTreeMap::new(),
        };
        let node = parse("a: ${vars.langs}\nb: data/${item}/*.txt\nc: ${vars.lr}\n").unwrap();
        let out = scope.apply(&node).unwrap().to_value();
        assert_eq!(
            out,
            serde_json::json!({"a": ["sw", "vi"], "b": "data/sw/*.txt", "c": 0.5})
        );
    }

    #[test]
    fn unknown_variables_are_named_with_a_suggestion() {
        let vars = parse("langs: [sw]\n").unwrap();
        let scope = Scope {
            vars: Some(&vars),
            item: None,
            matrix: BTreeMap::new(),
        };
        let node = parse("a: ${vars.lang}\n").unwrap();
        let err = scope.apply(&node).err().unwrap();
        assert!(err.message.contains("no variable `lang`"));
        assert_eq!(err.help.as_deref(), Some("did you mean `langs`?"));
    }
}
