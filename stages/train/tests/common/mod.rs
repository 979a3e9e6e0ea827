//! Running the kinds a training test needs, each into its own folder.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use serde_json::Value;

pub fn kind(name: &str) -> std::sync::Arc<dyn StageKind> {
    babelflow_corpus::kinds()
        .into_iter()
        .chain(babelflow_tokens::kinds())
        .chain(babelflow_model::kinds())
        .chain(babelflow_train::kinds())
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("no kind `{name}`"))
}

/// `dir/name`, created.
pub fn out(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Runs kind `k` into `dir/name`; the error as text.
pub fn try_run(dir: &Path, name: &str, k: &str, params: Value, ins: &[(&str, &[&Path])]) -> Result<PathBuf, String> {
    let o = out(dir, name);
    run_kind(kind(k).as_ref(), params, &inputs(ins), &o).map_err(|e| e.to_string())?;
    Ok(o)
}

/// Runs kind `k` into `dir/name`, which must succeed.
pub fn run(dir: &Path, name: &str, k: &str, params: Value, ins: &[(&str, &[&Path])]) -> PathBuf {
    try_run(dir, name, k, params, ins).unwrap_or_else(|e| panic!("{k}: {e}"))
}
