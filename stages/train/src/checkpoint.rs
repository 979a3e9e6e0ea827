//! Resumable training state in the instance's resume folder: the model and
//! the optimizer as burn records (burnpack, parameter ids preserved, so the
//! AdamW moments find their weights again), and the loop's own position as
//! JSON. Written to `checkpoint.tmp/` and swapped in by renames, so a kill at
//! any moment leaves the previous checkpoint or the new one, never half of one.

use std::path::{Path, PathBuf};

use babelflow_model::Llama;
use babelflow_stage::StageError;
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};

use crate::metrics::Row;

/// Where the loop was: enough to continue as if never stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// Optimizer steps done.
    pub step: usize,
    /// Training examples (windows) consumed, the data order's cursor.
    pub cursor: usize,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// JSON has no NaN (serde_json writes `null`), so it reads back as NaN.
    #[serde(deserialize_with = "nan_if_null")]
    pub last_loss: f64,
    /// Seconds spent training before this checkpoint (for tokens/s).
    pub seconds: f64,
    /// Of those, the seconds of the optimizer's updates (0 in checkpoints
    /// written before it was counted).
    #[serde(default)]
    pub optimizer_seconds: f64,
    #[serde(deserialize_with = "pairs_nan_if_null")]
    pub initial_validation: Vec<(String, f64)>,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn pairs_nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
    let pairs = Vec::<(String, Option<f64>)>::deserialize(d)?;
    Ok(pairs.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
}

fn rows_nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Row>, D::Error> {
    let rows = Vec::<(u64, u64, String, String, Option<f64>)>::deserialize(d)?;
    Ok(rows
        .into_iter()
        .map(|(step, tokens, metric, lang, v)| (step, tokens, metric, lang, v.unwrap_or(f64::NAN)))
        .collect())
}

/// position.json: where the loop was, and every metric row logged so far
/// (so the finished run's metrics.parquet covers the steps before the kill).
#[derive(Serialize)]
struct Saved<'a> {
    position: &'a Position,
    metrics: &'a [Row],
}

#[derive(Deserialize)]
struct Restored {
    position: Position,
    #[serde(deserialize_with = "rows_nan_if_null")]
    metrics: Vec<Row>,
}

/// What a checkpoint gives back.
pub struct Resumed {
    pub model: Llama,
    pub optim: ModuleOptimizer,
    pub position: Position,
    pub metrics: Vec<Row>,
}

pub struct Checkpoints {
    dir: PathBuf,
}

fn record_error(path: &Path, e: impl std::fmt::Display) -> StageError {
    StageError::failed(format!("checkpoint {}: {e}", path.display()))
}

impl Checkpoints {
    pub fn new(resume_dir: &Path) -> Self {
        Checkpoints {
            dir: resume_dir.to_path_buf(),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    /// The newest complete checkpoint folder, if any (`checkpoint.old` is
    /// the previous one, still whole when a kill fell between the renames).
    fn latest(&self) -> Option<PathBuf> {
        [self.current(), self.dir.join("checkpoint.old")]
            .into_iter()
            .find(|d| d.join("position.json").is_file())
    }

    /// The step of the latest checkpoint, if one was written and reads.
    pub fn saved_step(&self) -> Option<usize> {
        let bytes = std::fs::read(self.latest()?.join("position.json")).ok()?;
        serde_json::from_slice::<Restored>(&bytes).ok().map(|r| r.position.step)
    }

    /// Moves an unreadable checkpoint to `checkpoint.corrupt.<n>` beside it
    /// (kept for a look, never resumed) and says where it went.
    fn set_aside(&self, dir: &Path) -> String {
        let aside = (1..)
            .map(|n| self.dir.join(format!("checkpoint.corrupt.{n}")))
            .find(|p| !p.exists())
            .unwrap_or_else(|| self.dir.join("checkpoint.corrupt"));
        match std::fs::rename(dir, &aside) {
            Ok(()) => format!("moved to {}", aside.display()),
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                format!("deleted (could not be moved aside: {e})")
            }
        }
    }

    pub fn save(
        &self,
        model: &Llama,
        optim: &ModuleOptimizer,
        position: &Position,
        metrics: &[Row],
    ) -> Result<(), StageError> {
        let tmp = self.dir.join("checkpoint.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
        let model_path = tmp.join("model.bpk");
        model
            .clone()
            .into_record()
            .save(&model_path)
            .map_err(|e| record_error(&model_path, e))?;
        let optim_path = tmp.join("optimizer.bpk");
        optim.save(&optim_path).map_err(|e| record_error(&optim_path, e))?;
        let json = serde_json::to_vec(&Saved { position, metrics }).map_err(|e| record_error(&tmp, e))?;
        let pos_path = tmp.join("position.json");
        std::fs::write(&pos_path, json).map_err(|e| StageError::io(&pos_path, e))?;

        let (current, old) = (self.current(), self.dir.join("checkpoint.old"));
        let _ = std::fs::remove_dir_all(&old);
        if current.exists() {
            std::fs::rename(&current, &old).map_err(|e| StageError::io(&current, e))?;
        }
        std::fs::rename(&tmp, &current).map_err(|e| StageError::io(&tmp, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Restores the latest checkpoint into a model prepared exactly as the
    /// run that wrote it prepared its own, and into a fresh optimizer. A
    /// checkpoint that does not load (truncated, hand-edited, from another
    /// model) is set aside with a warning through `warn` and the next older
    /// one is tried; with none left the run starts from step 0. A broken
    /// checkpoint never wedges the instance.
    pub fn load(
        &self,
        model: Llama,
        optim: ModuleOptimizer,
        warn: &dyn Fn(&str),
    ) -> Result<Option<Resumed>, StageError> {
        while let Some(dir) = self.latest() {
            match Self::read(&dir, model.clone(), optim.clone()) {
                Ok(resumed) => return Ok(Some(resumed)),
                Err(e) => {
                    let moved = self.set_aside(&dir);
                    warn(&format!("the checkpoint does not load ({e}); it was {moved}"));
                }
            }
        }
        Ok(None)
    }

    fn read(dir: &Path, model: Llama, optim: ModuleOptimizer) -> Result<Resumed, StageError> {
        let pos_path = dir.join("position.json");
        let bytes = std::fs::read(&pos_path).map_err(|e| StageError::io(&pos_path, e))?;
        let restored: Restored = serde_json::from_slice(&bytes).map_err(|e| record_error(&pos_path, e))?;
        let model_path = dir.join("model.bpk");
        let record = ModuleRecord::load(&model_path).map_err(|e| record_error(&model_path, e))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| record_error(&model_path, e))?;
        let optim_path = dir.join("optimizer.bpk");
        let optim = optim.load(&optim_path).map_err(|e| record_error(&optim_path, e))?;
        Ok(Resumed {
            model,
            optim,
            position: restored.position,
            metrics: restored.metrics,
        })
    }
}

/// For `plan`: "the checkpoint at step N" when `resume_dir` holds one that reads.
pub fn resume_point(resume_dir: &Path) -> Option<String> {
    Checkpoints::new(resume_dir)
        .saved_step()
        .map(|step| format!("the checkpoint at step {step}"))
}
