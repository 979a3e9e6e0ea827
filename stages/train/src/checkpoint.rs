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
    pub last_loss: f64,
    /// Seconds spent training before this checkpoint (for tokens/s).
    pub seconds: f64,
    pub initial_validation: Vec<(String, f64)>,
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

    /// The step of the latest checkpoint, if one was written.
    pub fn saved_step(&self) -> Option<usize> {
        let bytes = std::fs::read(self.latest()?.join("position.json")).ok()?;
        serde_json::from_slice::<Restored>(&bytes).ok().map(|r| r.position.step)
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
            .map_err(|e| record_error(&model_path, format!("{e:?}")))?;
        let optim_path = tmp.join("optimizer.bpk");
        optim
            .save(&optim_path)
            .map_err(|e| record_error(&optim_path, format!("{e:?}")))?;
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
    /// run that wrote it prepared its own, and into a fresh optimizer.
    pub fn load(&self, model: Llama, optim: ModuleOptimizer) -> Result<Option<Resumed>, StageError> {
        let Some(dir) = self.latest() else {
            return Ok(None);
        };
        let pos_path = dir.join("position.json");
        let bytes = std::fs::read(&pos_path).map_err(|e| StageError::io(&pos_path, e))?;
        let restored: Restored = serde_json::from_slice(&bytes).map_err(|e| record_error(&pos_path, e))?;
        let model_path = dir.join("model.bpk");
        let record = ModuleRecord::load(&model_path).map_err(|e| record_error(&model_path, format!("{e:?}")))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| record_error(&model_path, format!("{e:?}")))?;
        let optim_path = dir.join("optimizer.bpk");
        let optim = optim
            .load(&optim_path)
            .map_err(|e| record_error(&optim_path, format!("{e:?}")))?;
        Ok(Some(Resumed {
            model,
            optim,
            position: restored.position,
            metrics: restored.metrics,
        }))
    }
}
