//! The recipe's own vocabulary: which keys a recipe, a stage and `defaults`
//! may hold, which backends exist, what a name may look like. Expansion and
//! `--set` checking both read it, so the two never disagree.

use super::yaml::Node;
use super::RecipeSource;
use crate::diagnostics::{did_you_mean, Diagnostics};

pub const RECIPE_KEYS: &[&str] = &["name", "description", "vars", "defaults", "executor", "stages"];
pub const STAGE_KEYS: &[&str] = &[
    "kind",
    "description",
    "with",
    "needs",
    "foreach",
    "matrix",
    "backend",
    "device",
    "resources",
    "retries",
    "requeue",
];
pub const DEFAULT_KEYS: &[&str] = &["backend", "device", "resources", "retries", "requeue"];
/// `executor:` at the top of a recipe: where instances run (see `crate::executor`).
pub const EXECUTOR_KEYS: &[&str] = &[
    "kind",
    "partition",
    "account",
    "qos",
    "time",
    "sbatch_flags",
    "poll_interval_s",
    "grace_s",
    "mpi",
];
pub const BACKENDS: &[&str] = &["auto", "cpu", "wgpu", "vulkan", "cuda"];

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || "-_.".contains(c))
}

pub fn check_keys(source: &RecipeSource, node: &Node, allowed: &[&str], what: &str, diags: &mut Diagnostics) {
    let Some(entries) = node.as_map() else {
        diags.push(source.diag(
            node.span,
            format!("{what} must be a mapping, found {}", node.describe()),
            None,
        ));
        return;
    };
    for (k, _) in entries {
        let key = k.as_str().unwrap_or_default();
        if !allowed.contains(&key) {
            diags.push(
                source.diag(
                    k.span,
                    format!("unknown key `{key}` in {what}"),
                    did_you_mean(key, allowed.iter().copied())
                        .or_else(|| Some(format!("allowed keys: {}", allowed.join(", ")))),
                ),
            );
        }
    }
}
