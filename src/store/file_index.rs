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

    /// The blake3 hash of a file's content (hex); for a folder, of every
    /// file under it (relative paths and contents, in sorted order).
    pub fn hash(&self, path: &Path) -> std::io::Result<String> {
        if path.is_dir() {
            let mut files = Vec::new();
            collect_files(path, &mut files)?;
            files.sort();
            let mut h = blake3::Hasher::new();
            for f in &files {
                let rel = f.strip_prefix(path).unwrap_or(f).to_string_lossy().into_owned();
                h.update(rel.as_bytes());
                h.update(&[0]);
                h.update(self.hash_file(f)?.as_bytes());
            }
            return Ok(h.finalize().to_hex().to_string());
        }
        self.hash_file(path)
    }

    fn hash_file(&self, file: &Path) -> std::io::Result<String> {
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
        let hash = content_hash(file)?;
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

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

pub fn content_hash(path: &Path) -> std::io::Result<String> {
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
