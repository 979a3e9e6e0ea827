//! The recipe's `executor:` block: where its instances run. The local
//! executor (threads in this process) is the default; `kind: slurm` submits
//! each ready instance as a Slurm job. `babelflow run --executor ...` and
//! the `--partition`-style flags override what the recipe says.

use serde_json::Value;

use super::schema::{check_keys, EXECUTOR_KEYS};
use super::RecipeSource;
use crate::diagnostics::{did_you_mean, Diagnostics};

pub const EXECUTOR_KINDS: &[&str] = &["local", "slurm"];
/// What `srun --mpi=` takes on the clusters babelflow knows of.
pub const MPI_PLUGINS: &[&str] = &["pmix", "pmi2", "pmix_v4", "pmix_v5", "cray_shasta"];

#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorSettings {
    /// `local` or `slurm`.
    pub kind: String,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// The default time limit of a job (a stage's `resources.time` wins).
    pub time: Option<String>,
    /// Further `sbatch` flags, as written (`--constraint=a100`).
    pub sbatch_flags: Vec<String>,
    /// The longest wait between two looks at the queue (it starts shorter and backs off).
    pub poll_interval_s: f64,
    /// How long a job that left the queue may take to show its committed
    /// artifact (a shared filesystem's attribute cache) before it is failed.
    pub grace_s: f64,
    /// `srun --mpi=` for data-parallel stages: the PMI plugin the cluster's
    /// MPI was built for (`pmix` for Debian's OpenMPI, `pmi2` for MPICH).
    pub mpi: String,
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            kind: "local".into(),
            partition: None,
            account: None,
            qos: None,
            time: None,
            sbatch_flags: Vec::new(),
            poll_interval_s: 10.0,
            grace_s: 30.0,
            mpi: "pmix".into(),
        }
    }
}

/// Reads `executor:`; every problem becomes a diagnostic at its line.
pub fn settings(source: &RecipeSource, diags: &mut Diagnostics) -> ExecutorSettings {
    let mut out = ExecutorSettings::default();
    let Some(node) = source.root.get("executor") else {
        return out;
    };
    check_keys(source, node, EXECUTOR_KEYS, "executor", diags);
    let Some(entries) = node.as_map() else {
        return out;
    };
    for (k, v) in entries {
        let key = k.as_str().unwrap_or_default();
        let text = || match v.to_value() {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        // A value from a closed list, or a diagnostic with the nearest one.
        let mut one_of = |allowed: &[&str]| match v.as_str() {
            Some(s) if allowed.contains(&s) => Some(s.to_string()),
            other => {
                diags.push(source.diag(
                    v.span,
                    format!(
                        "`executor.{key}` must be one of {}, found {}",
                        allowed.join(", "),
                        v.describe()
                    ),
                    other.and_then(|s| did_you_mean(s, allowed.iter().copied())),
                ));
                None
            }
        };
        let wrong = |expected: &str| {
            source.diag(
                v.span,
                format!("`executor.{key}` must be {expected}, found {}", v.describe()),
                None,
            )
        };
        match key {
            "kind" => {
                if let Some(kind) = one_of(EXECUTOR_KINDS) {
                    out.kind = kind;
                }
            }
            "partition" | "account" | "qos" => match text() {
                Some(t) => match key {
                    "partition" => out.partition = Some(t),
                    "account" => out.account = Some(t),
                    _ => out.qos = Some(t),
                },
                None => diags.push(wrong("a name")),
            },
            "time" => match text().filter(|t| super::params::valid_time(t)) {
                Some(t) => out.time = Some(t),
                None => diags.push(wrong("a Slurm time limit like 90 (minutes), 2:00:00 or 1-12:00:00")),
            },
            "sbatch_flags" => match v.as_seq() {
                Some(items) => {
                    for item in items {
                        match item.as_str() {
                            Some(flag) if flag.starts_with('-') => out.sbatch_flags.push(flag.to_string()),
                            _ => diags.push(source.diag(
                                item.span,
                                format!("an sbatch flag starts with `-`, found {}", item.describe()),
                                Some("for example: sbatch_flags: [\"--constraint=a100\", \"--exclusive\"]".into()),
                            )),
                        }
                    }
                }
                None => diags.push(wrong("a list of flags")),
            },
            "poll_interval_s" | "grace_s" => match v.to_value().as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => {
                    if key == "grace_s" {
                        out.grace_s = x
                    } else {
                        out.poll_interval_s = x
                    }
                }
                _ => diags.push(wrong("a positive number of seconds")),
            },
            "mpi" => {
                if let Some(plugin) = one_of(MPI_PLUGINS) {
                    out.mpi = plugin;
                }
            }
            _ => {} // check_keys said so
        }
    }
    out
}
