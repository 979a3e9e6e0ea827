//! (path, size, mtime) → content hash, so that deciding "nothing changed"
//! does not reread every input file. A file whose size or mtime moved is
//! rehashed; an edit that is undone lands on the old hash, so the old
//! artifacts are reused (content, not time, decides).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    hash: String,
}

pub struct FileIndex {
    path: PathBuf,
    entries: Mutex<(BTreeMap<String, Entry>, bool)>,
}

impl FileIndex {
    /// Loads the index; a missing or unreadable index starts empty (it is a cache).
    pub fn load(path: &Path) -> FileIndex {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        FileIndex {
            path: path.to_path_buf(),
            entries: Mutex::new((entries, false)),
        }
    }

    /// The blake3 hash of a file's content (hex).
    pub fn hash(&self, file: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(file)?;
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = std::fs::canonicalize(file)?.to_string_lossy().into_owned();
        if let Ok(guard) = self.entries.lock() {
            if let Some(e) = guard.0.get(&key) {
                if e.size == meta.len() && e.mtime_ns == mtime_ns {
                    return Ok(e.hash.clone());
                }
            }
        }
        let hash = hash_file(file)?;
        if let Ok(mut guard) = self.entries.lock() {
            guard.0.insert(
                key,
                Entry {
                    size: meta.len(),
                    mtime_ns,
                    hash: hash.clone(),
                },
            );
            guard.1 = true;
        }
        Ok(hash)
    }

    /// Writes the index back if anything was added.
    pub fn save(&self) -> std::io::Result<()> {
        let Ok(guard) = self.entries.lock() else { return Ok(()) };
        if !guard.1 {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&guard.0).map_err(std::io::Error::other)?;
        super::write_atomic(&self.path, &bytes)
    }
}

pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}
