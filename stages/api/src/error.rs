use std::path::PathBuf;

/// Why a stage failed. Variants carry the place (parameter, file, line) so
/// the user can find what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("parameter `{name}` {message}")]
    Param { name: String, message: String },

    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input {
        path: PathBuf,
        line: Option<u64>,
        message: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cancelled")]
    Cancelled,

    #[error("{0}")]
    Failed(String),
}

impl StageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn input(path: impl Into<PathBuf>, line: Option<u64>, message: impl Into<String>) -> Self {
        StageError::Input {
            path: path.into(),
            line,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        StageError::Failed(message.into())
    }
}
