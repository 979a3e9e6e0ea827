//! A YAML tree that remembers where every node came from.
//!
//! serde_yaml resolves anchors and types well but forgets positions once a
//! document is parsed, and recipe errors must name file:line:column for each
//! offending key. So recipes are read from yaml-rust2's event stream into
//! this spanned tree (anchors, aliases and `<<` merge keys resolved here);
//! values are then handed to stages as `serde_json::Value`.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column in the recipe file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub line: usize,
    pub col: usize,
}

impl Span {
    fn from_marker(m: Marker) -> Self {
        Span {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// Scalar text; `quoted` scalars are always strings, plain ones are typed.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

impl Node {
    pub fn scalar(text: impl Into<String>, span: Span) -> Self {
        Node {
            kind: NodeKind::Scalar {
                text: text.into(),
                quoted: true,
            },
            span,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Looks up a key in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short description for error messages ("a list", "the string \"x\"").
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { text, .. } => format!("{text:?}"),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }

    /// Converts to JSON, typing plain scalars as YAML 1.2's core schema does.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            NodeKind::Scalar { text, quoted: true } => Value::String(text.clone()),
            NodeKind::Scalar { text, quoted: false } => plain_scalar(text),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// Types a plain (unquoted) scalar: null, booleans, integers, floats, else string.
pub fn plain_scalar(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    let looks_numeric =
        text.chars().all(|c| c.is_ascii_digit() || "+-.eE_".contains(c)) && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.replace('_', "").parse::<f64>() {
            if let Some(n) = serde_json::Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(text.to_string())
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub span: Span,
    pub message: String,
}

/// Parses one YAML document into a spanned tree.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, false).map_err(|e| {
        let span = Span::from_marker(*e.marker());
        let message = e.info().to_string();
        if message.contains("tab") {
            // yaml-rust2 marks where the token it was reading began (for a
            // plain scalar, the line above) or just past the tab: point at
            // the tab itself.
            return SyntaxError {
                span: locate_tab(source, span).unwrap_or(span),
                message: format!("a tab, where YAML indents with spaces only ({message})"),
            };
        }
        SyntaxError { span, message }
    })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Map(Vec::new()),
        span: Span { line: 1, col: 1 },
    }))
}

/// The first tab on `near`'s line, else on a later line.
fn locate_tab(source: &str, near: Span) -> Option<Span> {
    source
        .lines()
        .enumerate()
        .skip(near.line.saturating_sub(1))
        .find_map(|(i, line)| {
            let col = line.chars().position(|c| c == '\t')?;
            Some(Span {
                line: i + 1,
                col: col + 1,
            })
        })
}

enum Frame {
    Seq {
        anchor: usize,
        span: Span,
        items: Vec<Node>,
    },
    Map {
        anchor: usize,
        span: Span,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        /// Keys a `<<` merge brought in: a key the mapping itself sets
        /// replaces them, wherever it stands.
        merged: Vec<String>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                merged,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if key.as_str() == Some("<<") {
                        merge_into(entries, merged, node);
                    } else {
                        // A key set after the merge overrides the merged one
                        // (YAML's merge rule), so nothing reads the stale value.
                        if let Some(name) = key.as_str().filter(|k| merged.iter().any(|m| m == k)) {
                            let name = name.to_string();
                            entries.retain(|(k, _)| k.as_str() != Some(name.as_str()));
                            merged.retain(|m| *m != name);
                        }
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

/// Applies a `<<: *anchor` merge: keys the mapping already has win, and
/// each key brought in is listed in `merged` for a later key to replace.
fn merge_into(entries: &mut Vec<(Node, Node)>, merged: &mut Vec<String>, source: Node) {
    let sources = match source.kind {
        NodeKind::Seq(items) => items,
        _ => vec![source],
    };
    for src in sources {
        if let NodeKind::Map(src_entries) = src.kind {
            for (k, v) in src_entries {
                if !entries.iter().any(|(existing, _)| existing.as_str() == k.as_str()) {
                    merged.extend(k.as_str().map(str::to_string));
                    entries.push((k, v));
                }
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let span = Span::from_marker(mark);
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                self.push_node(
                    Node {
                        kind: NodeKind::Scalar { text, quoted },
                        span,
                    },
                    anchor,
                );
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                anchor,
                span,
                items: Vec::new(),
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                anchor,
                span,
                entries: Vec::new(),
                pending_key: None,
                merged: Vec::new(),
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { anchor, span, items }) => (
                        Node {
                            kind: NodeKind::Seq(items),
                            span,
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        anchor, span, entries, ..
                    }) => (
                        Node {
                            kind: NodeKind::Map(entries),
                            span,
                        },
                        anchor,
                    ),
                    None => return,
                };
                self.push_node(node, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    // Errors inside an alias point at the alias, where the user looks.
                    node.span = span;
                    self.push_node(node, 0);
                }
                None => {
                    self.error = Some(SyntaxError {
                        span,
                        message: "alias to an unknown anchor".into(),
                    })
                }
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_keys_and_values() {
        let root = parse("a: 1\nb:\n  c: [x, 'y']\n").unwrap();
        let b = root.get("b").unwrap();
        let c = b.get("c").unwrap();
        assert_eq!(c.span, Span { line: 3, col: 6 });
        assert_eq!(c.to_value(), serde_json::json!(["x", "y"]));
        assert_eq!(root.get("a").unwrap().to_value(), serde_json::json!(1));
    }

    #[test]
    fn anchors_aliases_and_merge_keys_resolve() {
        let src = "base: &b {lr: 0.1, steps: 10}\nrun:\n  <<: *b\n  steps: 20\ncopy: *b\n";
        let root = parse(src).unwrap();
        assert_eq!(
            root.get("run").unwrap().to_value(),
            serde_json::json!({"lr": 0.1, "steps": 20})
        );
        assert_eq!(
            root.get("copy").unwrap().to_value(),
            serde_json::json!({"lr": 0.1, "steps": 10})
        );
        // A key after the merge replaces the merged one for every reader, not only `to_value`.
        let run = root.get("run").unwrap();
        assert_eq!(run.get("steps").unwrap().to_value(), serde_json::json!(20));
        assert_eq!(run.as_map().unwrap().len(), 2, "no stale merged `steps` left beside it");
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let root = parse("a: '1'\nb: 1e-4\nc: yes\n").unwrap();
        assert_eq!(root.get("a").unwrap().to_value(), serde_json::json!("1"));
        assert_eq!(root.get("b").unwrap().to_value(), serde_json::json!(1e-4));
        assert_eq!(root.get("c").unwrap().to_value(), serde_json::json!("yes"));
    }

    #[test]
    fn tab_errors_point_at_the_tab() {
        // (text, line:col of the tab)
        let cases = [
            ("a:\n  b: c\n\td: e\n", "3:1"),
            ("a:\n\tb: c\n", "2:1"),
            ("a:\n  b:\n  \t c: d\n", "3:3"),
        ];
        for (text, at) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.span.to_string(), at, "{text:?}: {}", err.message);
            assert!(err.message.starts_with("a tab, where YAML"), "{}", err.message);
        }
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.span.line >= 1, "{err:?}");
    }
}
