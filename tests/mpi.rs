//! Data-parallel training over MPI: `run --processes N` (mpirun on this
//! machine) and `resources: { tasks_per_node: N }` (srun under the Slurm
//! executor). What a user relies on: N ranks train the model one rank
//! would, from the same global batch, to float tolerance; the instance's
//! fingerprint does not change with the world size; a run killed on 2
//! ranks resumes on 1 and ends where an uninterrupted run ends.
//!
//! Built without the `mpi` feature, only the refusal is tested. With it
//! (`cargo test --features mpi --test mpi`, as `.ci/run` does) these need
//! OpenMPI's `mpirun`, and the Slurm one a running cluster
//! (`scripts/slurm-cluster.sh start`); under CI=true a missing one fails.

mod common;

use common::{repo_root, Project, TINY_LM_STAGES};

/// A small model trained, then LoRA-tuned, on text no two lines alike.
fn recipe() -> String {
    format!("name: data-parallel\nstages:\n{TINY_LM_STAGES}{TRAINING_STAGES}")
}

const TRAINING_STAGES: &str = r#"  train:
    kind: pretrain
    needs: { model: model, tokens: tokens }
    with: { steps: 20, batch_size: 8, seq_len: 32, checkpoint_every: 10, eval_every: 10, warmup_steps: 5 }
  instructions:
    kind: ingest-instructions
    needs: { files: ./instructions.json }
  sft:
    kind: sft
    needs: { model: "train:model", instructions: instructions }
    with:
      template: bactrian
      steps: 20
      batch_size: 4
      max_len: 96
      lr: 2.0e-3
      warmup_steps: 2
      eval_every: 10
      trainable: lora
      lora_rank: 4
"#;

fn project() -> Project {
    let p = Project::new();
    p.write("r.yaml", &recipe());
    // Deterministic varied lines: the loss keeps moving for 300 steps.
    let words =
        "the quick brown fox jumps over lazy dog while seven wizards quietly hex jolly vexed bugler near old river"
            .split(' ')
            .collect::<Vec<_>>();
    let mut state = 12345u64;
    let mut text = String::new();
    for _ in 0..300 {
        for _ in 0..15 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(words[(state >> 33) as usize % words.len()]);
            text.push(' ');
        }
        text.push('\n');
    }
    p.write("text.txt", &text);
    let instructions = std::fs::read_to_string(repo_root().join("data/samples/instructions/en.json")).unwrap();
    p.write("instructions.json", &instructions);
    p
}

#[cfg(not(feature = "mpi"))]
#[test]
fn several_processes_need_a_babelflow_built_with_mpi() {
    let p = project();
    let out = p.run(&["run", "r.yaml", "--processes", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`train` is to train on 2 processes") && stderr.contains("--features mpi"),
        "{stderr}"
    );
    assert!(
        !p.path(".babelflow/artifacts").exists()
            || std::fs::read_dir(p.path(".babelflow/artifacts"))
                .unwrap()
                .next()
                .is_none(),
        "refused before running anything"
    );
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use std::process::Command;
    use std::time::Duration;

    use super::project;
    use crate::common::{
        artifact_dir, manifest_of, metrics_of, mpirun_installed, output_text, signal, slurm_cluster_up, spawn_run,
        stats_of, wait_until, Project,
    };

    /// The per-step training losses of an instance in a store, and its
    /// stats, as the recipe with `sets` (`--set` flags) plans it.
    fn losses(p: &Project, store: &str, instance: &str, sets: &[&str]) -> (Vec<f64>, serde_json::Value) {
        let mut args = vec!["--store", store];
        args.extend_from_slice(sets);
        let plan = p.plan("r.yaml", &args);
        let losses = metrics_of(p, &plan, instance)
            .into_iter()
            .filter(|(_, metric, _)| metric == "loss")
            .map(|(_, _, v)| v)
            .collect();
        (losses, stats_of(p, &plan, instance))
    }

    /// Equal to 1e-5 at every step, over a loss that falls by `drop` at least.
    fn assert_same_losses(one: &[f64], many: &[f64], steps: usize, drop: f64) {
        assert_eq!(one.len(), steps, "{one:?}");
        assert_eq!(many.len(), steps, "{many:?}");
        let worst = one.iter().zip(many).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(
            worst <= 1e-5,
            "max |Δ loss| {worst:e}\n1 rank:  {one:?}\n2 ranks: {many:?}"
        );
        assert!(one[steps - 1] < one[0] - drop, "the loss falls by {drop}: {one:?}");
    }

    fn fingerprint(p: &Project, store: &str, instance: &str) -> String {
        let plan = p.plan("r.yaml", &["--store", store]);
        let dir = artifact_dir(p, &plan, instance);
        dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn two_processes_pretrain_and_tune_with_lora_as_one_does_with_the_same_global_batch() {
        if !mpirun_installed() {
            return;
        }
        let p = project();
        p.ok(&["run", "r.yaml", "--store", "one"]);
        let out = p.run(&["run", "r.yaml", "--store", "two", "--processes", "2"]);
        assert!(out.status.success(), "{}", output_text(&out));
        // LoRA on 4 examples moves the loss less than full pretraining does.
        for (instance, drop) in [("train", 0.3), ("sft", 0.03)] {
            let ((one, one_stats), (two, two_stats)) =
                (losses(&p, "one", instance, &[]), losses(&p, "two", instance, &[]));
            assert_same_losses(&one, &two, 20, drop);
            assert_eq!(one_stats["world_size"], 1, "{one_stats}");
            assert_eq!(two_stats["world_size"], 2, "{two_stats}");
            assert!(two_stats["allreduce_seconds"].as_f64().unwrap() > 0.0, "{two_stats}");
            assert_eq!(
                fingerprint(&p, "one", instance),
                fingerprint(&p, "two", instance),
                "the world size is not part of what {instance} is"
            );
        }
        // The driver estimated the instance; the ranks' manifest keeps it
        // (the report sets it beside the measured time and peak).
        let plan = p.plan("r.yaml", &["--store", "two"]);
        let manifest = manifest_of(&p, &plan, "train");
        assert!(manifest["estimate"]["peak_bytes"].as_u64().unwrap() > 0, "{manifest:#}");
        let log = std::fs::read_dir(p.path("two/logs"))
            .unwrap()
            .flatten()
            .map(|d| d.path().join("train.rank1.log"))
            .find(|f| f.is_file())
            .expect("rank 1 keeps its own log");
        let log = std::fs::read_to_string(log).unwrap();
        assert!(log.contains("rank 1 of 2"), "{log}");
    }

    #[test]
    fn a_two_process_run_killed_mid_way_resumes_on_one_and_ends_as_an_uninterrupted_run() {
        if !mpirun_installed() {
            return;
        }
        let p = project();
        let longer = ["--set", "stages.train.with.steps=300"];
        let long = [longer[0], longer[1], "--only", "train"];
        let mut args = vec!["run", "r.yaml", "--store", "whole"];
        args.extend_from_slice(&long);
        p.ok(&args);

        let mut args = vec!["--store", "killed", "--processes", "2"];
        args.extend_from_slice(&long);
        let child = spawn_run(&p, &args);
        let resume = p.path("killed/resume");
        wait_until("a checkpoint of the two ranks", Duration::from_secs(120), || {
            std::fs::read_dir(&resume)
                .into_iter()
                .flatten()
                .flatten()
                .any(|d| d.path().join("checkpoint/position.json").is_file())
        });
        // A terminal's Ctrl-C: the whole foreground group.
        signal(&format!("-{}", child.id()), "-INT");
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(130), "{}", output_text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("train cancelled"),
            "{}",
            output_text(&out)
        );

        // No rank trains on behind the driver's back.
        let left = Command::new("pgrep")
            .args(["-f", "babelflow exec .*killed"])
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "ranks still running: {}",
            String::from_utf8_lossy(&left.stdout)
        );

        let mut args = vec!["run", "r.yaml", "--store", "killed"];
        args.extend_from_slice(&long);
        p.ok(&args);
        let (whole, _) = losses(&p, "whole", "train", &longer);
        let (resumed, stats) = losses(&p, "killed", "train", &longer);
        let from = stats["resumed_from_step"].as_u64().expect("resumed from a checkpoint");
        assert!(from > 0 && from < 300, "{stats}");
        assert_eq!(stats["world_size"], 1, "{stats}");
        assert_same_losses(&whole, &resumed, 300, 1.0);
    }

    #[test]
    fn tasks_per_node_2_under_slurm_runs_through_srun_and_trains_as_one_process() {
        if !slurm_cluster_up() {
            return;
        }
        let p = project();
        let only = ["--only", "train"];
        let mut args = vec!["run", "r.yaml", "--store", "one"];
        args.extend_from_slice(&only);
        p.ok(&args);
        let out = p.run(&[
            "run",
            "r.yaml",
            "--store",
            "cluster",
            "--only",
            "train",
            "--executor",
            "slurm",
            "--set",
            "stages.train.resources.tasks_per_node=2",
            "--set",
            "executor.poll_interval_s=0.5",
        ]);
        assert!(out.status.success(), "{}", output_text(&out));
        let (one, _) = losses(&p, "one", "train", &[]);
        let (two, stats) = losses(
            &p,
            "cluster",
            "train",
            &["--set", "stages.train.resources.tasks_per_node=2"],
        );
        assert_same_losses(&one, &two, 20, 0.3);
        assert_eq!(stats["world_size"], 2, "{stats}");
        let plan = p.plan(
            "r.yaml",
            &["--store", "cluster", "--set", "stages.train.resources.tasks_per_node=2"],
        );
        let manifest = manifest_of(&p, &plan, "train");
        assert!(
            manifest["estimate"]["peak_bytes"].as_u64().unwrap() > 0,
            "the job's manifest keeps the driver's estimate: {manifest:#}"
        );
        let log = std::fs::read_dir(p.path("cluster/logs"))
            .unwrap()
            .flatten()
            .map(|d| d.path().join("train.log"))
            .find(|f| f.is_file())
            .unwrap();
        let log = std::fs::read_to_string(log).unwrap();
        assert!(
            log.contains("rank 0 of 2 (from SLURM_NTASKS)"),
            "srun started the ranks: {log}"
        );
    }
}
