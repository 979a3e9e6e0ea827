//! Recipes: reading the YAML, applying `--set` overrides, and expanding
//! `foreach`/`matrix` stages into checked instances (see [`expand`]).

pub mod executor;
pub mod expand;
mod fanout;
mod interpolate;
mod needs;
mod overrides;
pub(crate) mod params;
pub mod schema;
pub mod yaml;

use std::path::{Path, PathBuf};

use crate::diagnostics::{Diagnostic, Diagnostics, Location};
pub use expand::{InputBinding, Instance, Resources, RunPolicy};
pub use overrides::Override;
pub use params::{valid_memory, valid_time, LOCAL_RANK_DEVICE};
use yaml::{Node, Span};

/// The recipe's text: UTF-8, with a leading byte-order mark dropped (some
/// Windows editors write one; it is not part of the first key). Invalid
/// UTF-8 is reported at its line, column and byte offset.
fn decode(bytes: &[u8]) -> Result<String, (Span, String)> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let offset = e.valid_up_to();
            let before = &bytes[..offset];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            // Valid up to `offset`, so the line so far decodes.
            let col = std::str::from_utf8(&before[line_start..]).map_or(1, |s| s.chars().count() + 1);
            Err((
                Span { line, col },
                format!(
                    "the recipe is not UTF-8: byte 0x{:02X} at byte offset {offset} cannot start a character (save the file as UTF-8)",
                    bytes[offset]
                ),
            ))
        }
    }
}

/// A recipe file read into a spanned tree, overrides applied.
#[derive(Debug, Clone)]
pub struct RecipeSource {
    pub path: PathBuf,
    /// The folder relative paths in the recipe resolve against.
    pub dir: PathBuf,
    pub text: String,
    pub root: Node,
    pub overrides: Vec<Override>,
}

impl RecipeSource {
    /// Reads and parses a recipe. I/O and YAML syntax errors come back as
    /// diagnostics, like every other recipe problem.
    pub fn load(path: &Path, sets: &[String]) -> Result<RecipeSource, Diagnostics> {
        let at = |span: Span, message: String| {
            Diagnostics(vec![Diagnostic {
                location: Location::File {
                    path: path.to_path_buf(),
                    span,
                },
                message,
                help: None,
                source_line: None,
            }])
        };
        let bytes =
            std::fs::read(path).map_err(|e| at(Span { line: 1, col: 1 }, format!("cannot read the recipe: {e}")))?;
        let text = decode(&bytes).map_err(|(span, message)| at(span, message))?;
        Self::from_text(path, text, sets)
    }

    pub fn from_text(path: &Path, text: String, sets: &[String]) -> Result<RecipeSource, Diagnostics> {
        let text = match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_string(),
            None => text,
        };
        let dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let mut source = RecipeSource {
            path: path.to_path_buf(),
            dir,
            text,
            root: Node::scalar("", Span::default()),
            overrides: Vec::new(),
        };
        let mut diags = Diagnostics::default();
        match yaml::parse(&source.text) {
            Ok(root) => source.root = root,
            Err(e) => {
                diags.push(source.diag(e.span, format!("malformed YAML: {}", e.message), None));
                return Err(diags);
            }
        }
        if source.root.as_map().is_none() {
            let span = source.root.span;
            diags.push(source.diag(span, "a recipe must be a mapping with `name` and `stages`", None));
            return Err(diags);
        }
        for (i, text) in sets.iter().enumerate() {
            let parsed = Override::parse(i + 1, text)
                .map_err(|message| (message, None))
                .and_then(|o| overrides::check_path(&source.root, &o).map(|()| o));
            match parsed {
                Ok(o) => source.overrides.push(o),
                Err((message, help)) => diags.push(Diagnostic {
                    location: Location::Override {
                        index: i + 1,
                        text: text.clone(),
                    },
                    message,
                    help: help
                        .or_else(|| Some("write --set path.to.key=value, e.g. --set stages.train.with.lr=1e-4".into())),
                    source_line: None,
                }),
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        overrides::apply_global(&mut source.root, &source.overrides);
        Ok(source)
    }

    /// A diagnostic at a span of this recipe (or of a `--set`, see [`overrides`]).
    pub fn diag(&self, span: Span, message: impl Into<String>, help: Option<String>) -> Diagnostic {
        if let Some(index) = overrides::override_index(span) {
            let text = self
                .overrides
                .iter()
                .find(|o| o.index == index)
                .map(|o| o.text.clone())
                .unwrap_or_default();
            return Diagnostic {
                location: Location::Override { index, text },
                message: message.into(),
                help,
                source_line: None,
            };
        }
        Diagnostic {
            location: Location::File {
                path: self.path.clone(),
                span,
            },
            message: message.into(),
            help,
            source_line: self.text.lines().nth(span.line.saturating_sub(1)).map(str::to_string),
        }
    }

    /// The recipe's `name`, or the file stem when absent.
    pub fn name(&self) -> String {
        self.root
            .get("name")
            .and_then(Node::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                self.path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "recipe".into())
            })
    }
}
