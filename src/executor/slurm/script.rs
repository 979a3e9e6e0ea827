//! The job for one instance: its `sbatch` flags (from the stage's
//! `resources:` and the recipe's `executor:`) and the script that runs
//! `babelflow exec` for it on a node.

use std::path::{Path, PathBuf};

use crate::recipe::executor::ExecutorSettings;
use crate::recipe::Instance;

/// How to run this babelflow again on a node: the same binary, recipe,
/// overrides and store, all absolute (a job starts in its own folder).
#[derive(Debug, Clone)]
pub struct Invocation {
    pub binary: PathBuf,
    pub recipe: PathBuf,
    pub sets: Vec<String>,
    pub store: PathBuf,
    pub workdir: PathBuf,
}

/// Slurm's job names are free text; this keeps them readable in `squeue`.
pub fn job_name(instance: &str) -> String {
    format!("bf:{instance}")
}

pub fn sbatch_flags(inst: &Instance, settings: &ExecutorSettings, output: &Path) -> Vec<String> {
    let r = &inst.resources;
    let mut flags = vec![
        "--parsable".to_string(),
        format!("--job-name={}", job_name(&inst.name)),
        // Appended: a requeued job's second part follows its first.
        format!("--output={}", output.display()),
        "--open-mode=append".to_string(),
    ];
    if r.processes() > 1 {
        flags.push(format!("--nodes={}", r.nodes));
        flags.push(format!("--ntasks-per-node={}", r.tasks_per_node));
    } else {
        flags.push("--ntasks=1".to_string());
    }
    flags.push(format!("--cpus-per-task={}", r.cpus));
    if r.gpus > 0 {
        flags.push(format!("--gres=gpu:{}", r.gpus));
    }
    if let Some(m) = &r.memory {
        flags.push(format!("--mem={m}"));
    }
    if let Some(t) = r.time.as_ref().or(settings.time.as_ref()) {
        flags.push(format!("--time={t}"));
    }
    for (flag, value) in [
        ("partition", &settings.partition),
        ("account", &settings.account),
        ("qos", &settings.qos),
    ] {
        if let Some(v) = value {
            flags.push(format!("--{flag}={v}"));
        }
    }
    if inst.policy.requeue {
        // Two minutes' warning to the script (babelflow itself, by exec):
        // it checkpoints, then requeues its own job.
        flags.push("--requeue".into());
        flags.push("--signal=B:USR1@120".into());
    } else {
        // The driver resubmits (retries:); Slurm requeueing behind its
        // back would run an instance twice.
        flags.push("--no-requeue".into());
    }
    flags.extend(settings.sbatch_flags.iter().cloned());
    flags
}

/// `babelflow exec` for one instance, as program and arguments (unquoted).
pub fn exec_command(inv: &Invocation, instance: &str, fingerprint: &str, handoff: &Path) -> Vec<String> {
    let mut args = vec![
        inv.binary.display().to_string(),
        "exec".into(),
        inv.recipe.display().to_string(),
        "--store".into(),
        inv.store.display().to_string(),
        "--instance".into(),
        instance.to_string(),
        "--fingerprint".into(),
        fingerprint.to_string(),
        "--handoff".into(),
        handoff.display().to_string(),
    ];
    for s in &inv.sets {
        args.push("--set".into());
        args.push(s.clone());
    }
    args
}

/// The batch script: `exec`, so babelflow (or, for a data-parallel stage,
/// `srun`, which forwards signals to every rank) is the process Slurm
/// signals.
pub fn script(
    inv: &Invocation,
    inst: &Instance,
    fingerprint: &str,
    handoff: &Path,
    settings: &ExecutorSettings,
) -> String {
    let mut args: Vec<String> = Vec::new();
    let r = &inst.resources;
    if r.processes() > 1 {
        // One step of N×M tasks; each is a rank (SLURM_PROCID) that finds
        // the others through the PMI plugin OpenMPI or MPICH was built for.
        args.extend([
            "srun".to_string(),
            format!("--mpi={}", settings.mpi),
            format!("--ntasks={}", r.processes()),
            format!("--ntasks-per-node={}", r.tasks_per_node),
            format!("--cpus-per-task={}", r.cpus),
            "--kill-on-bad-exit=1".to_string(),
        ]);
    }
    args.extend(exec_command(inv, &inst.name, fingerprint, handoff));
    let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
    format!(
        "#!/bin/sh\n# babelflow: instance {} (fingerprint {fingerprint})\ncd {} || exit 1\n{}exec {}\n",
        inst.name,
        quote(&inv.workdir.display().to_string()),
        // The compute pool (rayon) sizes itself by the node's cores, not by
        // the job's allocation: hold it to `cpus` unless the user chose.
        format_args!("export RAYON_NUM_THREADS=\"${{RAYON_NUM_THREADS:-{}}}\"\n", r.cpus),
        args.join(" ")
    )
}

/// POSIX single-quoting.
pub fn quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,+".contains(c))
    {
        return text.to_string();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        for text in ["plain", "two words", "it's", "$HOME", "a\"b", "vars.langs=[sw, vi]", ""] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(text)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
        }
    }
}
