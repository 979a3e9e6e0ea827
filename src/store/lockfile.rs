//! The per-recipe lock file (like `dvc.lock`): for each instance, what it
//! last ran with and how that went. `plan` diffs against it to say *why*
//! an instance will run; `status` reads it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One bound input as it was fingerprinted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The producer's fingerprint, or the file's content hash.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    pub kind: String,
    pub code_version: String,
    pub fingerprint: String,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, Vec<LockInput>>,
    /// `ok`, `partial` (made without some inputs), `failed` or `cancelled`.
    pub status: String,
    /// Where a `partial` run's artifact is (its own fingerprint); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub duration_s: f64,
    /// Seconds since the Unix epoch when it finished.
    #[serde(default)]
    pub finished_at: u64,
    #[serde(default)]
    pub backend: String,
    /// The cluster job that made it (`slurm 1234`), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockFile {
    pub recipe: String,
    pub instances: BTreeMap<String, LockEntry>,
}

impl LockFile {
    /// Reads a lock file; a missing one is empty. A corrupt one is treated as
    /// empty too (it only explains reruns; the store decides what is cached).
    pub fn load(path: &Path) -> LockFile {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_yaml::from_str(&text).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_yaml::to_string(self).map_err(std::io::Error::other)?;
        super::write_atomic(path, text.as_bytes())
    }
}
