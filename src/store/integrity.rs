//! What an artifact held when it was committed, so damage done to it later
//! (an editor, a disk error, a stray `rm`) is found instead of silently
//! reused.
//!
//! At commit, `manifest.json` gets a `files` map: every file under the
//! artifact (path relative to it → size and blake3). Two checks read it:
//! - `plan` (every run) compares sizes only — one `stat` per file, cheap
//!   enough for thousands of instances — and rebuilds an artifact whose
//!   file went missing or changed size;
//! - `babelflow verify` rehashes every file, and sets a damaged artifact
//!   aside under `damaged/` (kept, for the user to look at), so the next run
//!   rebuilds it.
//!
//! Artifacts committed before babelflow recorded `files` pass the size
//! check and are reported as unverifiable by `verify`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::file_index::content_hash;

/// Size and content hash of one file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub bytes: u64,
    pub blake3: String,
}

/// Relative path (with `/`) → record, for every file under `dir` except the
/// manifest itself.
pub fn record(dir: &Path) -> std::io::Result<BTreeMap<String, FileRecord>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, FileRecord>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(root, &path, out)?;
            continue;
        }
        let rel = relative(root, &path);
        if rel == "manifest.json" {
            continue;
        }
        out.insert(
            rel,
            FileRecord {
                bytes: std::fs::metadata(&path)?.len(),
                blake3: content_hash(&path)?,
            },
        );
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// The `files` map of an artifact's manifest; `None` when it has none (made
/// by an older babelflow) or the manifest cannot be read.
pub fn recorded(dir: &Path) -> Option<BTreeMap<String, FileRecord>> {
    let bytes = std::fs::read(dir.join("manifest.json")).ok()?;
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    serde_json::from_value(manifest.get("files")?.clone()).ok()
}

/// The first sign of damage a `stat` can see: a recorded file gone or of
/// another size, or a manifest that no longer parses.
pub fn quick_damage(dir: &Path) -> Option<String> {
    let manifest = dir.join("manifest.json");
    let bytes = match std::fs::read(&manifest) {
        Ok(b) => b,
        Err(e) => return Some(format!("manifest.json cannot be read: {e}")),
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Some("manifest.json is not JSON any more".into());
    };
    let files: BTreeMap<String, FileRecord> = value
        .get("files")
        .and_then(|f| serde_json::from_value(f.clone()).ok())
        .unwrap_or_default();
    for (rel, rec) in &files {
        match std::fs::metadata(dir.join(rel)) {
            Err(_) => return Some(format!("{rel} is missing")),
            Ok(m) if m.len() != rec.bytes => {
                return Some(format!("{rel} changed size ({} bytes, was {})", m.len(), rec.bytes))
            }
            Ok(_) => {}
        }
    }
    None
}

/// What a full check of one artifact found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact {
        files: usize,
    },
    Damaged(Vec<String>),
    /// Committed without a `files` record (before babelflow kept one).
    Unverifiable,
}

/// Rehashes every recorded file and looks for files that were added.
pub fn verify(dir: &Path) -> Verdict {
    if let Some(why) = quick_damage(dir) {
        return Verdict::Damaged(vec![why]);
    }
    let Some(expected) = recorded(dir) else {
        return Verdict::Unverifiable;
    };
    let found = match record(dir) {
        Ok(f) => f,
        Err(e) => return Verdict::Damaged(vec![format!("cannot be read: {e}")]),
    };
    let mut problems = Vec::new();
    for (rel, rec) in &expected {
        match found.get(rel) {
            None => problems.push(format!("{rel} is missing")),
            Some(now) if now.blake3 != rec.blake3 => problems.push(format!("{rel} changed content")),
            Some(_) => {}
        }
    }
    for rel in found.keys().filter(|r| !expected.contains_key(*r)) {
        problems.push(format!("{rel} was added"));
    }
    if problems.is_empty() {
        Verdict::Intact { files: expected.len() }
    } else {
        Verdict::Damaged(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("model")).unwrap();
        std::fs::write(dir.path().join("model/weights.bin"), b"0123456789").unwrap();
        std::fs::write(dir.path().join("stats.json"), b"{}").unwrap();
        let files = record(dir.path()).unwrap();
        let manifest = serde_json::json!({ "files": files });
        std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
        dir
    }

    #[test]
    fn an_untouched_artifact_is_intact() {
        let dir = artifact();
        assert_eq!(quick_damage(dir.path()), None);
        assert_eq!(verify(dir.path()), Verdict::Intact { files: 2 });
    }

    #[test]
    fn a_changed_size_is_seen_by_the_quick_check() {
        let dir = artifact();
        std::fs::write(dir.path().join("model/weights.bin"), b"01234").unwrap();
        assert_eq!(
            quick_damage(dir.path()).as_deref(),
            Some("model/weights.bin changed size (5 bytes, was 10)")
        );
    }

    #[test]
    fn same_size_new_content_needs_the_full_check() {
        let dir = artifact();
        std::fs::write(dir.path().join("model/weights.bin"), b"9876543210").unwrap();
        assert_eq!(quick_damage(dir.path()), None);
        assert_eq!(
            verify(dir.path()),
            Verdict::Damaged(vec!["model/weights.bin changed content".into()])
        );
    }

    #[test]
    fn missing_and_added_files_are_damage() {
        let dir = artifact();
        std::fs::remove_file(dir.path().join("stats.json")).unwrap();
        assert_eq!(quick_damage(dir.path()).as_deref(), Some("stats.json is missing"));
        let dir = artifact();
        std::fs::write(dir.path().join("extra.txt"), b"x").unwrap();
        assert_eq!(verify(dir.path()), Verdict::Damaged(vec!["extra.txt was added".into()]));
    }

    #[test]
    fn an_artifact_without_a_record_is_unverifiable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), b"{}").unwrap();
        assert_eq!(verify(dir.path()), Verdict::Unverifiable);
    }
}
