//! What the driver hands a job that runs one instance elsewhere (`babelflow
//! exec`), and what the job hands back, as two JSON files in the instance's
//! folder under the store's `jobs/`. The job re-reads the recipe and
//! re-plans to get its instance; the handoff carries only what the driver
//! alone knows: how upstream instances fared in this run (for a report made
//! without a failed one) and whether `--force` was given.
//!
//! The driver is the only writer of `context.json` and of lock files; the
//! job writes only `result.json`, its temporary folder and, at the end, its
//! own artifact. The driver's estimate travels too: the job re-plans, but
//! only the driver estimated, and the manifest keeps the estimate beside
//! what happened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use babelflow_stage::{StageError, Upstream, UpstreamOutcome};
use serde_json::{json, Value};

use crate::engine::estimate::Recorded;
use crate::engine::execute::{Job, Producer};
use crate::store::{write_atomic, Store};

pub const CONTEXT: &str = "context.json";
pub const RESULT: &str = "result.json";

#[derive(Debug)]
pub struct Context {
    pub fingerprint: String,
    pub forced: bool,
    pub threads: usize,
    pub producers: BTreeMap<usize, Producer>,
    pub upstream: Vec<Upstream>,
    /// What the driver estimated the instance would cost.
    pub estimate: Option<Recorded>,
}

pub fn write_context(dir: &Path, c: &Context) -> std::io::Result<()> {
    let producers: Vec<Value> = c
        .producers
        .iter()
        .map(|(i, p)| json!({"index": i, "name": p.name, "dir": p.dir, "why_missing": p.why_missing}))
        .collect();
    let upstream: Vec<Value> = c
        .upstream
        .iter()
        .map(|u| {
            let (outcome, seconds, why) = match &u.outcome {
                UpstreamOutcome::Cached => ("cached", None, None),
                UpstreamOutcome::Ran { seconds } => ("ran", Some(*seconds), None),
                UpstreamOutcome::Missing { why } => ("missing", None, Some(why.clone())),
            };
            json!({"instance": u.instance, "kind": u.kind, "artifact": u.artifact,
                   "outcome": outcome, "seconds": seconds, "why": why})
        })
        .collect();
    let doc = json!({
        "fingerprint": c.fingerprint, "forced": c.forced, "threads": c.threads,
        "producers": producers, "upstream": upstream, "estimate": c.estimate,
    });
    std::fs::create_dir_all(dir)?;
    write_atomic(
        &dir.join(CONTEXT),
        &serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?,
    )
}

/// The instance's folder under the store's `jobs/`: the handoff both ways
/// (and a Slurm job's script).
pub fn job_dir(store: &Store, fingerprint: &str) -> PathBuf {
    store.root().join("jobs").join(fingerprint)
}

/// Sets up `dir` for a new attempt at `job`: an earlier attempt's answer
/// is not this one's, and the context is the driver's view of this run.
pub fn begin(dir: &Path, job: &Job) -> Result<(), StageError> {
    std::fs::create_dir_all(dir).map_err(|e| StageError::io(dir, e))?;
    let _ = std::fs::remove_file(dir.join(RESULT));
    write_context(
        dir,
        &Context {
            fingerprint: job.planned.fingerprint.clone(),
            forced: job.planned.forced,
            threads: job.threads,
            producers: job.producers.clone(),
            upstream: job.upstream.clone(),
            estimate: job.planned.estimate.clone(),
        },
    )
    .map_err(|e| StageError::io(dir, e))
}

pub fn read_context(dir: &Path) -> Result<Context, String> {
    let path = dir.join(CONTEXT);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let s = |v: &Value| v.as_str().map(str::to_string);
    let mut producers = BTreeMap::new();
    for p in doc["producers"].as_array().into_iter().flatten() {
        let index = p["index"]
            .as_u64()
            .ok_or_else(|| format!("{}: a producer without an index", path.display()))?;
        producers.insert(
            index as usize,
            Producer {
                name: s(&p["name"]).unwrap_or_default(),
                dir: s(&p["dir"]).map(PathBuf::from),
                why_missing: s(&p["why_missing"]),
            },
        );
    }
    let upstream = doc["upstream"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| Upstream {
            instance: s(&u["instance"]).unwrap_or_default(),
            kind: s(&u["kind"]).unwrap_or_default(),
            artifact: s(&u["artifact"]).map(PathBuf::from),
            outcome: match u["outcome"].as_str() {
                Some("cached") => UpstreamOutcome::Cached,
                Some("ran") => UpstreamOutcome::Ran {
                    seconds: u["seconds"].as_f64().unwrap_or(0.0),
                },
                _ => UpstreamOutcome::Missing {
                    why: s(&u["why"]).unwrap_or_default(),
                },
            },
        })
        .collect();
    Ok(Context {
        fingerprint: s(&doc["fingerprint"]).unwrap_or_default(),
        forced: doc["forced"].as_bool().unwrap_or(false),
        threads: doc["threads"].as_u64().unwrap_or(1).max(1) as usize,
        producers,
        upstream,
        // An older driver's context has none; one that does not read is
        // only a missing estimate, not a failed job.
        estimate: serde_json::from_value(doc["estimate"].clone()).ok(),
    })
}

/// How the job ended, as it saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// Committed under `fingerprint` (the planned one, or a partial one's).
    Built {
        fingerprint: String,
        missing: Vec<String>,
    },
    Failed {
        error: String,
    },
    /// Stopped by a signal (scancel, preemption, the time limit).
    Cancelled,
    /// Checkpointed on Slurm's warning signal and put back in the queue: not an end.
    Requeued,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    pub ended: Ended,
    pub seconds: f64,
}

pub fn write_result(dir: &Path, r: &JobReport) -> std::io::Result<()> {
    let doc = match &r.ended {
        Ended::Built { fingerprint, missing } => {
            json!({"status": "built", "fingerprint": fingerprint, "missing": missing, "seconds": r.seconds})
        }
        Ended::Failed { error } => json!({"status": "failed", "error": error, "seconds": r.seconds}),
        Ended::Cancelled => json!({"status": "cancelled", "seconds": r.seconds}),
        Ended::Requeued => json!({"status": "requeued", "seconds": r.seconds}),
    };
    write_atomic(
        &dir.join(RESULT),
        &serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?,
    )
}

/// `None` while the job has not written one (or it cannot be read yet).
pub fn read_result(dir: &Path) -> Option<JobReport> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(RESULT)).ok()?).ok()?;
    let seconds = doc["seconds"].as_f64().unwrap_or(0.0);
    let ended = match doc["status"].as_str()? {
        "built" => Ended::Built {
            fingerprint: doc["fingerprint"].as_str()?.to_string(),
            missing: doc["missing"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect(),
        },
        "failed" => Ended::Failed {
            error: doc["error"].as_str().unwrap_or_default().to_string(),
        },
        "cancelled" => Ended::Cancelled,
        "requeued" => Ended::Requeued,
        _ => return None,
    };
    Some(JobReport { ended, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_and_result_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut producers = BTreeMap::new();
        producers.insert(
            3,
            Producer {
                name: "corpus@sw".into(),
                dir: Some(PathBuf::from("/store/artifacts/ab")),
                why_missing: None,
            },
        );
        producers.insert(
            4,
            Producer {
                name: "judge@sw".into(),
                dir: None,
                why_missing: Some("failed: the judge timed out".into()),
            },
        );
        let upstream = vec![
            Upstream {
                instance: "corpus@sw".into(),
                kind: "ingest".into(),
                artifact: Some(PathBuf::from("/store/artifacts/ab")),
                outcome: UpstreamOutcome::Ran { seconds: 1.5 },
            },
            Upstream {
                instance: "judge@sw".into(),
                kind: "judge".into(),
                artifact: None,
                outcome: UpstreamOutcome::Missing {
                    why: "failed: the judge timed out".into(),
                },
            },
        ];
        let estimate = Recorded {
            seconds: Some(12.5),
            peak_bytes: 1 << 30,
            device: "this machine (cpu)".into(),
            source: Some("babelflow calibrate on this machine".into()),
            peak_source: None,
        };
        let c = Context {
            fingerprint: "f00".into(),
            forced: true,
            threads: 2,
            producers,
            upstream: upstream.clone(),
            estimate: Some(estimate.clone()),
        };
        write_context(dir.path(), &c).unwrap();
        let back = read_context(dir.path()).unwrap();
        assert_eq!(
            back.estimate,
            Some(estimate),
            "the manifest the job writes keeps the driver's estimate"
        );
        assert_eq!((back.fingerprint.as_str(), back.forced, back.threads), ("f00", true, 2));
        assert_eq!(back.upstream, upstream);
        assert_eq!(
            back.producers[&4].why_missing.as_deref(),
            Some("failed: the judge timed out")
        );
        assert_eq!(back.producers[&3].dir, Some(PathBuf::from("/store/artifacts/ab")));

        assert_eq!(read_result(dir.path()), None, "no result before the job writes one");
        for ended in [
            Ended::Built {
                fingerprint: "f00".into(),
                missing: vec!["judge@sw".into()],
            },
            Ended::Failed {
                error: "bad line 3".into(),
            },
            Ended::Cancelled,
            Ended::Requeued,
        ] {
            let r = JobReport { ended, seconds: 2.0 };
            write_result(dir.path(), &r).unwrap();
            assert_eq!(read_result(dir.path()), Some(r));
        }
    }
}
