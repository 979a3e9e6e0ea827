//! Recipe errors that point at the place to fix: file:line:column, the
//! source line with a caret under the column, and a hint where we have one.

use std::fmt;
use std::path::PathBuf;

use crate::recipe::yaml::Span;

/// Where a problem is: a place in a recipe file, or a `--set` argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    File {
        path: PathBuf,
        span: Span,
    },
    /// The n-th (1-based) `--set` override.
    Override {
        index: usize,
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub location: Location,
    pub message: String,
    pub help: Option<String>,
    /// The source line the span points into, for the caret display.
    pub source_line: Option<String>,
}

impl Diagnostic {
    pub fn line_col(&self) -> Option<(usize, usize)> {
        match &self.location {
            Location::File { span, .. } => Some((span.line, span.col)),
            Location::Override { .. } => None,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::File { path, span } => {
                writeln!(
                    f,
                    "{}:{}:{}: error: {}",
                    path.display(),
                    span.line,
                    span.col,
                    self.message
                )?;
                if let Some(line) = &self.source_line {
                    let gutter = span.line.to_string();
                    writeln!(f, "{} |", " ".repeat(gutter.len()))?;
                    writeln!(f, "{gutter} | {line}")?;
                    let pad: String = line
                        .chars()
                        .take(span.col.saturating_sub(1))
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    writeln!(f, "{} | {pad}^", " ".repeat(gutter.len()))?;
                }
            }
            Location::Override { index, text } => {
                writeln!(f, "--set #{index} ({text}): error: {}", self.message)?;
            }
        }
        if let Some(help) = &self.help {
            writeln!(f, "  = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one validation pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds a diagnostic unless an identical one is already there (a `foreach`
    /// stage would otherwise repeat one mistake for every instance).
    pub fn push(&mut self, d: Diagnostic) {
        if !self.0.contains(&d) {
            self.0.push(d);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "the recipe has {n} error{}; nothing was run",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// "did you mean `x`?" for the closest candidate, if any is close enough.
pub fn did_you_mean<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(wrong, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}
