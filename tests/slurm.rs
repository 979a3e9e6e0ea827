//! Recipes through a real Slurm cluster (`--executor slurm`): one job per
//! ready instance, `sbatch` to submit, the shared store as the only truth.
//! These need a running cluster: `.ci/run` starts a one-node one with
//! `scripts/slurm-cluster.sh start`. Without one they skip, except under
//! CI=true, where a missing cluster is a failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{output_text, ran, repo_root, signal, slurm_cluster_up, spawn_run, wait_until, Project, TINY_LM_STAGES};

/// Quick polling and a short grace: the one-node cluster's store is local.
const FAST: [&str; 4] = ["--set", "executor.poll_interval_s=0.5", "--set", "executor.grace_s=3"];

fn slurm_run(p: &Project, recipe: &str, store: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", recipe, "--store", store, "--executor", "slurm"];
    args.extend_from_slice(&FAST);
    args.extend_from_slice(extra);
    p.run(&args)
}

/// Every artifact of a store: fingerprint → its files' blake3 (from the
/// manifest), without what records time (logs, manifests, stats with
/// seconds, the report with its run table).
fn artifacts(store: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(store.join("artifacts")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        if manifest["kind"] == "report" {
            continue;
        }
        let files = manifest["files"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(name, _)| !["log.txt", "stats.json", "metrics.parquet"].contains(&name.as_str()))
            .map(|(name, f)| (name.clone(), f["blake3"].as_str().unwrap_or_default().to_string()))
            .collect();
        out.insert(dir.file_name().unwrap().to_string_lossy().into_owned(), files);
    }
    out
}

#[test]
fn the_quickstart_through_slurm_makes_the_local_runs_artifacts_and_a_rerun_submits_nothing() {
    if !slurm_cluster_up() {
        return;
    }
    let p = Project::new();
    let recipe = repo_root().join("pipelines/quickstart.yaml");
    let recipe = recipe.to_str().unwrap();
    p.ok(&["run", recipe, "--store", "local"]);
    let out = slurm_run(&p, recipe, "cluster", &[]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        ran(&String::from_utf8_lossy(&out.stdout)).len(),
        28,
        "{}",
        output_text(&out)
    );
    let (local, cluster) = (artifacts(&p.path("local")), artifacts(&p.path("cluster")));
    assert_eq!(local.len(), 27, "every instance but the report");
    assert_eq!(local, cluster, "the same fingerprints holding the same bytes");

    // Each instance was a job: the lock file names it.
    let status = p.ok(&["status", recipe, "--store", "cluster"]);
    assert!(
        status.lines().filter(|l| l.contains("slurm ")).count() >= 28,
        "{status}"
    );

    let again = slurm_run(&p, recipe, "cluster", &[]);
    assert!(again.status.success(), "{}", output_text(&again));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(ran(&stdout).is_empty(), "{stdout}");
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("Slurm job"),
        "nothing submitted: {}",
        output_text(&again)
    );
}

const FAILING: &str = r#"
name: failing
stages:
  fine:
    kind: command
    with: { run: 'echo fine > "$OUT_OUT"' }
  broken:
    kind: command
    needs: { text: fine }
    retries: 0
    with: { run: 'echo "no such corpus at /data/sw.txt" >&2; exit 3' }
"#;

#[test]
fn a_failing_job_names_its_instance_and_its_logs() {
    if !slurm_cluster_up() {
        return;
    }
    let p = Project::new();
    p.write("r.yaml", FAILING);
    let out = slurm_run(&p, "r.yaml", ".babelflow", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("✗ broken failed"), "{stderr}");
    assert!(
        stderr.contains("no such corpus at /data/sw.txt"),
        "the stage's own error: {stderr}"
    );
    assert!(
        stderr.contains("Slurm job") && stderr.contains("broken.slurm.log"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fine"),
        "{}",
        output_text(&out)
    );
    let status = p.ok(&["status", "r.yaml"]);
    let line = status.lines().find(|l| l.starts_with("broken")).unwrap();
    assert!(line.contains("failed") && line.contains("slurm "), "{status}");
}

/// Long enough to be cancelled or requeued between checkpoints.
fn training_recipe() -> String {
    format!(
        "name: training\nstages:\n{TINY_LM_STAGES}  train:\n    kind: pretrain\n    needs: {{ model: model, tokens: tokens }}\n    with: {{ steps: 300, batch_size: 4, seq_len: 32, checkpoint_every: 10, eval_every: 100, warmup_steps: 5 }}\n"
    )
}

fn training_project() -> Project {
    let p = Project::new();
    p.write("r.yaml", &training_recipe());
    let line = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex the jolly vexed bugler\n";
    p.write("text.txt", &line.repeat(200));
    p
}

fn running_jobs(p: &Project, store: &str) -> BTreeMap<String, String> {
    let jobs = p.path(store).join("jobs");
    std::fs::read_dir(&jobs)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".running.json"))
        .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
        .next()
        .unwrap_or_default()
}

#[test]
fn a_training_job_cancelled_mid_way_is_retried_from_its_checkpoint_and_ends_bit_identical() {
    if !slurm_cluster_up() {
        return;
    }
    let p = training_project();
    p.ok(&["run", "r.yaml", "--store", "local"]);

    let mut args = vec!["--store", "cluster", "--executor", "slurm"];
    args.extend_from_slice(&FAST);
    let child = spawn_run(&p, &args);
    // Wait for a checkpoint of the training job, then scancel it, as an
    // operator or a preemption would.
    let resume = p.path("cluster/resume");
    wait_until("a training checkpoint", Duration::from_secs(300), || {
        running_jobs(&p, "cluster").contains_key("train")
            && walk(&resume).iter().any(|f| f.to_string_lossy().contains("checkpoint"))
    });
    let id = running_jobs(&p, "cluster")["train"].clone();
    assert!(Command::new("scancel").arg(&id).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("↻ train failed; retrying (attempt 2 of 2)"), "{stderr}");
    assert!(
        stderr.contains(&format!("Slurm job {id} was stopped by a signal")),
        "{stderr}"
    );
    let log = walk(&p.path("cluster/logs"))
        .into_iter()
        .find(|f| f.ends_with("train.log"))
        .unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("resuming from the checkpoint at step"), "{log}");

    let (local, cluster) = (artifacts(&p.path("local")), artifacts(&p.path("cluster")));
    assert_eq!(
        local, cluster,
        "the resumed model is the uninterrupted one, bit for bit"
    );
}

#[test]
fn ctrl_c_on_the_driver_cancels_every_job_it_submitted() {
    if !slurm_cluster_up() {
        return;
    }
    let p = Project::new();
    p.write(
        "r.yaml",
        r#"
name: sleepy
stages:
  nap:
    kind: command
    foreach: [a, b, c]
    with: { run: 'sleep 120; echo done > "$OUT_OUT"' }
"#,
    );
    let mut args = vec!["--executor", "slurm"];
    args.extend_from_slice(&FAST);
    let child = spawn_run(&p, &args);
    wait_until("three jobs in the queue", Duration::from_secs(60), || {
        running_jobs(&p, ".babelflow").len() == 3
    });
    let ids: Vec<String> = running_jobs(&p, ".babelflow").into_values().collect();
    signal(&format!("-{}", child.id()), "-INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", output_text(&out));
    let queue = String::from_utf8_lossy(
        &Command::new("squeue")
            .args(["--noheader", "--format=%i"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for id in &ids {
        assert!(
            !queue.lines().any(|l| l.trim() == id),
            "job {id} still in the queue:\n{queue}"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn requeue_true_checkpoints_on_slurms_warning_and_the_requeued_job_resumes() {
    if !slurm_cluster_up() {
        return;
    }
    let p = training_project();
    p.ok(&["run", "r.yaml", "--store", "local"]);
    // No retries: only the requeue can finish it.
    let mut args = vec![
        "--store",
        "cluster",
        "--executor",
        "slurm",
        "--set",
        "stages.train.requeue=true",
        "--set",
        "stages.train.retries=0",
    ];
    args.extend_from_slice(&FAST);
    let child = spawn_run(&p, &args);
    let resume = p.path("cluster/resume");
    wait_until("a training checkpoint", Duration::from_secs(300), || {
        running_jobs(&p, "cluster").contains_key("train")
            && walk(&resume).iter().any(|f| f.to_string_lossy().contains("checkpoint"))
    });
    let id = running_jobs(&p, "cluster")["train"].clone();
    // What `--signal=B:USR1@120` sends two minutes before the time limit.
    let warned = Command::new("scancel")
        .args(["--batch", "--signal=USR1", &id])
        .status()
        .unwrap();
    assert!(warned.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let job_log = walk(&p.path("cluster/logs"))
        .into_iter()
        .find(|f| f.ends_with("train.slurm.log"))
        .unwrap();
    let job_log = std::fs::read_to_string(job_log).unwrap();
    assert!(job_log.contains(&format!("job {id} requeued")), "{job_log}");
    let log = walk(&p.path("cluster/logs"))
        .into_iter()
        .find(|f| f.ends_with("train.log"))
        .unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("resuming from the checkpoint at step"), "{log}");
    assert_eq!(artifacts(&p.path("local")), artifacts(&p.path("cluster")));
}
