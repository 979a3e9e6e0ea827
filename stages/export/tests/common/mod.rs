//! Helpers shared by the export crate's tests: the repository root, stage
//! kinds by name, and one stage run into a folder of its own.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use babelflow_stage::testing::{inputs, run_kind};

pub fn root() -> PathBuf {
    babelflow_stage::testing::package_dir().join("../..")
}

/// The HF folder transformers wrote for the SmolLM2 layout.
pub fn smollm2_fixture() -> PathBuf {
    root().join("stages/model/tests/fixtures/hf-smollm2")
}

/// Any stage kind of the crates a GGUF round trip passes through.
pub fn kind(name: &str) -> std::sync::Arc<dyn babelflow_stage::StageKind> {
    babelflow_corpus::kinds()
        .into_iter()
        .chain(babelflow_tokens::kinds())
        .chain(babelflow_model::kinds())
        .chain(babelflow_vocab::kinds())
        .chain(babelflow_export::kinds())
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("no stage kind `{name}`"))
}

/// Runs `kind_name` with `params` and `bound` inputs into `dir/name`, or
/// says why not; the folder is returned either way.
pub fn try_stage(
    dir: &Path,
    name: &str,
    kind_name: &str,
    params: serde_json::Value,
    bound: &[(&str, &[&Path])],
) -> (PathBuf, Result<(), babelflow_stage::StageError>) {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let result = run_kind(kind(kind_name).as_ref(), params, &inputs(bound), &out);
    (out, result)
}

/// Like `try_stage`, and the stage must succeed.
pub fn stage(
    dir: &Path,
    name: &str,
    kind_name: &str,
    params: serde_json::Value,
    bound: &[(&str, &[&Path])],
) -> PathBuf {
    let (out, result) = try_stage(dir, name, kind_name, params, bound);
    if let Err(e) = result {
        panic!("{kind_name} into {name}: {e}");
    }
    out
}
