//! The content-addressed store (default `.babelflow/` beside the recipe).
//!
//! ```text
//! artifacts/<fingerprint>/   finished outputs + manifest.json + log.txt
//! tmp/                       outputs being built; renamed into artifacts/ when complete
//! resume/<fingerprint>/      checkpoints of unfinished instances (survive kill -9)
//! logs/<recipe key>/<instance>.log   the latest attempt's log
//! recipes/<recipe key>.lock.yaml what each instance last ran with (like dvc.lock)
//! index/files.json           (path, size, mtime) → content hash
//! cache/<kind>/              results a kind reuses by content across runs (judge replies)
//! lock                       held by the run that writes the store
//! ```
//!
//! An artifact directory exists only once complete, because it appears by a
//! single rename; a crash leaves at worst a folder in `tmp/`, which the next
//! run (holding the lock) deletes.

mod file_index;
pub mod integrity;
pub mod lockfile;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use file_index::FileIndex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another babelflow run is using the store {} (lock file {}); wait for it to finish, or use another --store", root.display(), lock.display())]
    Busy { root: PathBuf, lock: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Store {
    root: PathBuf,
}

/// A recipe as the store knows it. Lock files and logs are keyed by the
/// recipe's name *and* its file's path: two recipes that share a `name:`
/// in one store keep apart, so `gc` never mistakes one's artifacts for
/// the other's leftovers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeId {
    pub name: String,
    /// The recipe file, canonical (absolute, links resolved).
    pub path: PathBuf,
    /// `<name>-<8 hex digits of blake3(path)>`, file-system safe.
    pub key: String,
}

impl RecipeId {
    pub fn new(name: &str, path: &Path) -> RecipeId {
        let path = fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf());
        let hash = blake3::hash(path.to_string_lossy().as_bytes()).to_hex();
        RecipeId {
            name: name.to_string(),
            key: format!("{}-{}", sanitize(name), &hash[..8]),
            path,
        }
    }
}

/// Held while a run may write; dropping it releases the lock.
pub struct StoreLock {
    _file: File,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating if needed) a store at `root`, for a command that writes.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store::at(root)?;
        let root = &store.root;
        for sub in ["artifacts", "tmp", "resume", "logs", "recipes", "index", "cache"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // A store is never source: git skips a folder whose .gitignore says
        // `*` (as Python's venv does), backup tools one with CACHEDIR.TAG.
        for (name, text) in [
            (".gitignore", "# written by babelflow: a store is not source\n*\n"),
            (
                "CACHEDIR.TAG",
                "Signature: 8a477f597d28d172789f06886806bc55\n# a babelflow store: https://bford.info/cachedir/\n",
            ),
        ] {
            let p = root.join(name);
            if !p.exists() {
                write_atomic(&p, text.as_bytes()).map_err(io_err(&p))?;
            }
        }
        Ok(store)
    }

    /// The store at `root` as it is, creating nothing: for the commands that
    /// only look (`plan`, `status`, `report`). A missing store reads as empty.
    pub fn at(root: &Path) -> Result<Store, StoreError> {
        let root = std::path::absolute(root).map_err(io_err(root))?;
        Ok(Store { root })
    }

    /// True when the folder exists (something has run here).
    pub fn exists(&self) -> bool {
        self.root.join("artifacts").is_dir()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store's write lock. If another run holds it, either waits
    /// (announcing so through `on_wait`) or fails with [`StoreError::Busy`].
    pub fn lock(&self, wait: bool, on_wait: impl FnOnce()) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                if !wait {
                    return Err(StoreError::Busy {
                        root: self.root.clone(),
                        lock: path,
                    });
                }
                on_wait();
                file.lock().map_err(io_err(&path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        Ok(StoreLock { _file: file })
    }

    /// Deletes half-built outputs of runs that died. Call with the lock held.
    pub fn clean_temp(&self) -> Result<usize, StoreError> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_err(&tmp))? {
            let path = entry.map_err(io_err(&tmp))?.path();
            let result = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(io_err(&path))?;
            removed += 1;
        }
        Ok(removed)
    }

    pub fn artifact_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join("artifacts").join(fingerprint)
    }

    /// True when a finished artifact with this fingerprint is in the store.
    pub fn has_artifact(&self, fingerprint: &str) -> bool {
        self.artifact_dir(fingerprint).join("manifest.json").is_file()
    }

    /// Where `verify` sets damaged artifacts aside (kept, never deleted).
    pub fn damaged_dir(&self) -> PathBuf {
        self.root.join("damaged")
    }

    /// Moves a damaged artifact out of `artifacts/`, so the next run
    /// rebuilds it; returns where it went.
    pub fn set_aside(&self, fingerprint: &str) -> Result<PathBuf, StoreError> {
        let from = self.artifact_dir(fingerprint);
        let dir = self.damaged_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let to = dir.join(format!("{fingerprint}.{}", now_secs()));
        fs::rename(&from, &to).map_err(io_err(&from))?;
        Ok(to)
    }

    /// A fresh folder to build an artifact in.
    pub fn new_temp(&self, fingerprint: &str) -> Result<PathBuf, StoreError> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = self
            .root
            .join("tmp")
            .join(format!("{fingerprint}.{}.{n}", std::process::id()));
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        Ok(path)
    }

    /// Moves a finished build into place under its fingerprint, replacing an
    /// older artifact of the same fingerprint (a `--force` rerun).
    pub fn commit(&self, temp: &Path, fingerprint: &str) -> Result<PathBuf, StoreError> {
        let target = self.artifact_dir(fingerprint);
        if target.exists() {
            // Move the old one aside first so the target name never holds a partial tree.
            let aside = self.root.join("tmp").join(format!(
                "{fingerprint}.replaced.{}.{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)
            ));
            fs::rename(&target, &aside).map_err(io_err(&target))?;
            let _ = fs::remove_dir_all(&aside);
        }
        fs::rename(temp, &target).map_err(io_err(&target))?;
        Ok(target)
    }

    /// Kept across runs and instances: what a kind may reuse by content
    /// (judge replies), one folder per kind.
    pub fn cache_dir(&self, kind: &str) -> PathBuf {
        self.root.join("cache").join(kind)
    }

    pub fn resume_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join("resume").join(fingerprint)
    }

    pub fn log_path(&self, recipe: &RecipeId, instance: &str) -> PathBuf {
        self.root
            .join("logs")
            .join(&recipe.key)
            .join(format!("{}.log", sanitize(instance)))
    }

    pub fn lockfile_path(&self, recipe: &RecipeId) -> PathBuf {
        self.root.join("recipes").join(format!("{}.lock.yaml", recipe.key))
    }

    pub fn file_index_path(&self) -> PathBuf {
        self.root.join("index").join("files.json")
    }

    /// Every run's measured cost, one JSON object a line (`runs.jsonl`):
    /// what estimates learn from, kept when an artifact is run again with
    /// `--force` or deleted by `gc`, unlike its manifest.
    pub fn runs_log_path(&self) -> PathBuf {
        self.root.join("runs.jsonl")
    }

    /// Appends one run to the log (one write of one line: runs finishing
    /// together do not interleave).
    pub fn log_run(&self, run: &serde_json::Value) -> io::Result<()> {
        use std::io::Write;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.runs_log_path())?;
        file.write_all(format!("{run}\n").as_bytes())
    }

    /// Fingerprints of every artifact present.
    pub fn artifacts(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("artifacts");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Deletes an artifact; returns the bytes freed.
    pub fn remove_artifact(&self, fingerprint: &str) -> Result<u64, StoreError> {
        let dir = self.artifact_dir(fingerprint);
        let size = dir_size(&dir);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(size)
    }
}

/// What an artifact was made for, from its `manifest.json`: recipe,
/// instance, kind and when it finished (Unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct MadeFor {
    pub recipe: String,
    pub instance: String,
    pub kind: String,
    pub finished_at: Option<u64>,
}

impl MadeFor {
    pub fn read(artifact_dir: &Path) -> Option<MadeFor> {
        let bytes = std::fs::read(artifact_dir.join("manifest.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let text = |k: &str| v[k].as_str().unwrap_or("?").to_string();
        Some(MadeFor {
            recipe: text("recipe"),
            instance: v["instance"].as_str()?.to_string(),
            kind: text("kind"),
            finished_at: v["finished_at"].as_f64().map(|t| t as u64),
        })
    }
}

pub fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| entries.filter_map(Result::ok).map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// File-system-safe form of an instance or recipe name.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes a file atomically: to a sibling temp file, then renamed over. On
/// failure (a full disk) the temp file is removed and the old file stays.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let written = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}
