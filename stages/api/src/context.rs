//! What a running stage sees: its parameters, bound inputs, the directory to
//! write outputs into, and hooks for progress, cancellation and logging.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Params, StageError};

/// Shared cancellation flag: set by the engine on Ctrl-C (or when a sibling
/// fails without `--keep-going`); long-running stages poll it.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Receives progress of one running instance (the engine draws bars from it).
pub trait ProgressSink: Send + Sync {
    /// `total` is `None` when the amount of work is unknown.
    fn update(&self, done: u64, total: Option<u64>, message: &str);
}

/// One artifact or file bound to an input slot.
#[derive(Debug, Clone, PartialEq)]
pub struct InputItem {
    /// Where to read it: an output inside another instance's artifact, or an
    /// external file of the user's.
    pub path: PathBuf,
    /// The producing instance (`tokens@sw`), `None` for external files.
    pub instance: Option<String>,
    /// The producing instance's `foreach`/`matrix` label (`sw`, `sw-ext`).
    pub label: Option<String>,
}

/// Input slot name → bound items, in recipe order.
pub type Inputs = BTreeMap<String, Vec<InputItem>>;

/// How an instance upstream of this one fared in the current run.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamOutcome {
    /// Its artifact was already in the store.
    Cached,
    /// It ran in this run.
    Ran { seconds: f64 },
    /// It has no artifact: failed, skipped or cancelled, and why.
    Missing { why: String },
}

/// An instance this one depends on, directly or through others.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub instance: String,
    pub kind: String,
    /// Its artifact folder (with `manifest.json`), when it has one.
    pub artifact: Option<PathBuf>,
    pub outcome: UpstreamOutcome,
}

/// An input binding left out because its producer has no artifact; only a
/// kind that [`runs with missing inputs`](crate::StageKind::runs_with_missing_inputs) sees these.
#[derive(Debug, Clone, PartialEq)]
pub struct MissingInput {
    /// The input slot (`evaluation`).
    pub input: String,
    /// The producing instance (`judge@sw`).
    pub instance: String,
    pub why: String,
}

/// The backend/device the recipe asked for (`backend: auto|cpu|wgpu|vulkan|cuda`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRequest {
    pub backend: String,
    pub index: usize,
}

impl Default for DeviceRequest {
    fn default() -> Self {
        DeviceRequest {
            backend: "auto".into(),
            index: 0,
        }
    }
}

pub struct StageContext<'a> {
    /// The instance's name, e.g. `tokens@sw`.
    pub instance: &'a str,
    pub params: &'a Params,
    pub inputs: &'a Inputs,
    /// Write every declared output as `out_dir/<output name>` (file or folder).
    /// This is a temporary folder: the engine moves it into the store only
    /// when `run` returns `Ok`, so partial writes are never mistaken for results.
    pub out_dir: &'a Path,
    /// Survives a killed run (until the instance succeeds): checkpoints live here.
    pub resume_dir: &'a Path,
    /// A folder this kind keeps across runs and instances for results it can
    /// reuse by content (judge replies); `None` outside a store.
    pub shared_cache: Option<PathBuf>,
    /// The folder relative paths in parameters are resolved against (the recipe's).
    pub base_dir: &'a Path,
    /// CPU threads this instance may use.
    pub threads: usize,
    /// Every instance upstream of this one, in run order, and how it fared
    /// in this run (empty outside the engine).
    pub upstream: Vec<Upstream>,
    /// Bindings left out because their producer failed or was skipped.
    pub missing: Vec<MissingInput>,
    pub device: DeviceRequest,
    pub cancel: CancelFlag,
    /// The processes running this instance together (one, unless a
    /// data-parallel stage was launched on several ranks).
    pub world: Arc<dyn crate::Collective>,
    progress: &'a dyn ProgressSink,
    log: Mutex<Option<File>>,
    notes: Mutex<serde_json::Map<String, serde_json::Value>>,
    secrets: Mutex<Vec<String>>,
}

/// What a secret is replaced with wherever babelflow writes text.
pub const REDACTED: &str = "[REDACTED]";

impl<'a> StageContext<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance: &'a str,
        params: &'a Params,
        inputs: &'a Inputs,
        out_dir: &'a Path,
        resume_dir: &'a Path,
        base_dir: &'a Path,
        threads: usize,
        device: DeviceRequest,
        cancel: CancelFlag,
        progress: &'a dyn ProgressSink,
        log: Option<File>,
    ) -> Self {
        StageContext {
            instance,
            params,
            inputs,
            out_dir,
            resume_dir,
            shared_cache: None,
            base_dir,
            threads,
            upstream: Vec::new(),
            missing: Vec::new(),
            device,
            cancel,
            world: crate::distributed::single_process(),
            progress,
            log: Mutex::new(log),
            notes: Mutex::new(Default::default()),
            secrets: Mutex::new(Vec::new()),
        }
    }

    /// Declares a value (an API key) that must never be written: from now on
    /// it is replaced by `[REDACTED]` in this instance's log, progress and
    /// notes, and the engine does the same to its error before the error
    /// reaches the terminal, the lock file or a report. Whatever a server
    /// echoes back, the key does not land in the store.
    pub fn add_secret(&self, value: &str) {
        // Too short to be a key, and replacing it would garble every line.
        if value.len() < 4 {
            return;
        }
        if let Ok(mut secrets) = self.secrets.lock() {
            let escaped = serde_json::to_string(value).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_string();
            for form in [value.to_string(), escaped] {
                if !secrets.contains(&form) {
                    secrets.push(form);
                }
            }
            // Longest first, so a key that contains another is replaced whole.
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every declared secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let Ok(secrets) = self.secrets.lock() else {
            return text.to_string();
        };
        secrets
            .iter()
            .fold(text.to_string(), |t, s| t.replace(s.as_str(), REDACTED))
    }

    /// Path of a declared output inside the temporary output folder.
    pub fn output(&self, name: &str) -> PathBuf {
        self.out_dir.join(name)
    }

    /// Writes `value` as pretty JSON to the declared output `name`.
    pub fn write_json(&self, name: &str, value: &impl serde::Serialize) -> Result<(), StageError> {
        let path = self.output(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StageError::failed(format!("{name}: {e}")))?;
        std::fs::write(&path, bytes).map_err(|e| StageError::io(&path, e))
    }

    /// Resolves a path from a parameter against the recipe's folder.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The items bound to an input slot (empty when unbound).
    pub fn input(&self, name: &str) -> &[InputItem] {
        self.inputs.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The single item bound to a required input slot.
    pub fn single_input(&self, name: &str) -> Result<&InputItem, StageError> {
        match self.input(name) {
            [one] => Ok(one),
            [] => Err(StageError::failed(format!(
                "input `{name}` is not bound (add it under `needs:`)"
            ))),
            many => Err(StageError::failed(format!(
                "input `{name}` takes one artifact, {} were bound",
                many.len()
            ))),
        }
    }

    /// Returns `Err(Cancelled)` once the run was cancelled; call it between
    /// units of work.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.cancel.is_cancelled() {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn progress(&self, done: u64, total: Option<u64>, message: &str) {
        self.progress.update(done, total, &self.redact(message));
    }

    /// Writes a line to this instance's log file in the store and to `tracing`.
    pub fn log(&self, message: &str) {
        let message = self.redact(message);
        tracing::info!(instance = self.instance, "{message}");
        self.log_file_only(&message);
    }

    /// Writes a warning the user sees on the terminal (and in the log).
    pub fn warn(&self, message: &str) {
        let message = self.redact(message);
        tracing::warn!(instance = self.instance, "{message}");
        self.log_file_only(&format!("warning: {message}"));
    }

    /// Writes raw text (a child's output, say) to the instance log only.
    pub fn log_file_only(&self, message: &str) {
        let message = self.redact(message);
        if let Ok(mut guard) = self.log.lock() {
            if let Some(file) = guard.as_mut() {
                let _ = writeln!(file, "{message}");
            }
        }
    }

    /// Records a fact about this run (rows written, device used) in the
    /// artifact's manifest, for `status` and the report.
    pub fn note(&self, key: &str, value: impl Into<serde_json::Value>) {
        let value = match value.into() {
            serde_json::Value::String(s) => serde_json::Value::String(self.redact(&s)),
            other => other,
        };
        if let Ok(mut notes) = self.notes.lock() {
            notes.insert(key.to_string(), value);
        }
    }

    pub fn take_notes(&self) -> serde_json::Map<String, serde_json::Value> {
        self.notes
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }
}
