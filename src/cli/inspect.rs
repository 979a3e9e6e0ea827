//! `babelflow graph`, `status`, `gc` and `kinds`: commands that look, not run.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use babelflow::engine::{Action, Selection};
use babelflow::registry::Registry;
use babelflow::store::lockfile::LockFile;
use babelflow::store::Store;

use super::{load, report as report_error, GraphFormat, RecipeArgs, EXIT_ERROR};

pub fn graph(registry: &Registry, args: &RecipeArgs, format: GraphFormat) -> anyhow::Result<ExitCode> {
    let pipeline = match load(registry, args) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    print!(
        "{}",
        match format {
            GraphFormat::Dot => pipeline.graph.to_dot(),
            GraphFormat::Mermaid => pipeline.graph.to_mermaid(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The recipe, its store and its plan with nothing forced; errors printed.
fn load_and_plan(
    registry: &Registry,
    args: &RecipeArgs,
) -> Result<
    (
        babelflow::engine::Pipeline,
        Store,
        Vec<babelflow::engine::PlannedInstance>,
    ),
    ExitCode,
> {
    let pipeline = load(registry, args)?;
    // Looking creates nothing: `status --store typo/` must not make a store.
    let store = Store::at(&pipeline.default_store(args.store.as_deref())).map_err(|e| report_error(e.into()))?;
    let planned = pipeline.plan(&store, &Selection::default()).map_err(report_error)?;
    Ok((pipeline, store, planned))
}

pub fn status(registry: &Registry, args: &RecipeArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (pipeline, store, planned) = match load_and_plan(registry, args) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let lock = LockFile::load(&store.lockfile_path(&pipeline.id));
    // Jobs a Slurm run has in the queue now (its driver keeps this list).
    let running: std::collections::BTreeMap<String, String> =
        std::fs::read_to_string(babelflow::executor::slurm::Slurm::live_path(&store, &pipeline.id))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
    let states = (!running.is_empty())
        .then(babelflow::executor::slurm::queue_states)
        .flatten();
    let mut rows = Vec::new();
    for p in &planned {
        let last = lock.instances.get(&p.name);
        let artifact = (p.action == Action::Cached).then(|| store.artifact_dir(&p.fingerprint));
        let (job, job_state) = match running.get(&p.name) {
            Some(id) => (
                Some(format!("slurm {id}")),
                Some(
                    states
                        .as_ref()
                        .and_then(|s| s.get(id).cloned())
                        .unwrap_or_else(|| "in queue".into()),
                ),
            ),
            None => (last.and_then(|l| l.job.clone()), None),
        };
        rows.push(serde_json::json!({
            "name": p.name,
            "kind": p.kind,
            "up_to_date": p.action == Action::Cached,
            "last_status": last.map(|l| l.status.clone()),
            "last_duration_s": last.map(|l| l.duration_s),
            "last_finished_at": last.map(|l| l.finished_at),
            "last_error": last.and_then(|l| l.error.clone()),
            "artifact": artifact,
            "job": job,
            "job_state": job_state,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = planned.iter().map(|p| p.name.len()).max().unwrap_or(8).max(8);
    let with_jobs = rows.iter().any(|r| !r["job"].is_null());
    println!(
        "{:width$}  {:10}  {:>8}  {:8}  {}artifact",
        "instance",
        "last run",
        "time",
        "current",
        if with_jobs {
            format!("{:24}  ", "job")
        } else {
            String::new()
        }
    );
    for (p, row) in planned.iter().zip(&rows) {
        let last = match row["job_state"].as_str() {
            Some(_) => "running",
            None => row["last_status"].as_str().unwrap_or("never"),
        };
        let time = row["last_duration_s"]
            .as_f64()
            .map(|s| format!("{s:.1}s"))
            .unwrap_or_default();
        let current = if p.action == Action::Cached { "yes" } else { "stale" };
        let artifact = row["artifact"].as_str().unwrap_or("-");
        let job = if with_jobs {
            let text = match (row["job"].as_str(), row["job_state"].as_str()) {
                (Some(j), Some(state)) => format!("{j} {}", state.to_lowercase()),
                (Some(j), None) => j.to_string(),
                _ => "-".into(),
            };
            format!("{text:24}  ")
        } else {
            String::new()
        };
        println!("{:width$}  {last:10}  {time:>8}  {current:8}  {job}{artifact}", p.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn report(registry: &Registry, args: &RecipeArgs, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (pipeline, store, planned) = match load_and_plan(registry, args) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let lock = LockFile::load(&store.lockfile_path(&pipeline.id));
    let reports: Vec<_> = planned.iter().filter(|p| p.kind == "report").collect();
    if reports.is_empty() {
        eprintln!("error: the recipe has no stage of kind `report`");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    let mut missing = false;
    for p in reports {
        // A report the last run made without some inputs (they failed) is
        // still the newest report there is; say what it lacks.
        let partial = lock
            .instances
            .get(&p.name)
            .filter(|e| e.status == "partial" && e.fingerprint == p.fingerprint)
            .and_then(|e| Some((e.artifact.clone()?, e.error.clone().unwrap_or_default())))
            .filter(|(fp, _)| store.artifact_dir(fp).is_dir());
        let dir = match (&p.action, partial) {
            (Action::Cached, _) => store.artifact_dir(&p.fingerprint),
            (_, Some((fp, what))) => {
                eprintln!("{}: partial, {what}; rerun once they succeed", p.name);
                store.artifact_dir(&fp)
            }
            _ => {
                eprintln!(
                    "{}: not built for the recipe as it is now ({}); run `babelflow run` first",
                    p.name,
                    p.reasons.join("; ")
                );
                missing = true;
                continue;
            }
        };
        println!("{}: {}", p.name, dir.join("report.html").display());
        if let Some(out) = &out {
            let target = if planned.iter().filter(|q| q.kind == "report").count() > 1 {
                out.join(babelflow::store::sanitize(&p.name))
            } else {
                out.clone()
            };
            std::fs::create_dir_all(&target)?;
            for name in ["report.md", "report.html"] {
                std::fs::copy(dir.join(name), target.join(name))?;
            }
            println!("  copied to {}", target.display());
        }
    }
    Ok(if missing {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn gc(store: Option<PathBuf>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let root = store
        .or_else(|| std::env::var_os("BABELFLOW_STORE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".babelflow"));
    if !root.join("artifacts").is_dir() {
        eprintln!(
            "error: {} is not a babelflow store (no artifacts/ folder)",
            root.display()
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    let store = Store::open(&root)?;
    let _lock = store.lock(true, || eprintln!("waiting for the run that holds the store…"))?;
    let mut referenced = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("recipes"))? {
        let path = entry?.path();
        for e in LockFile::load(&path).instances.values() {
            referenced.insert(e.fingerprint.clone());
            referenced.extend(e.artifact.clone());
        }
    }
    let (mut count, mut bytes) = (0usize, 0u64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for fp in store.artifacts()? {
        if referenced.contains(&fp) {
            continue;
        }
        count += 1;
        let dir = store.artifact_dir(&fp);
        // What it was, so a user sees which trial (`run --set ...`) goes.
        let what = match babelflow::store::MadeFor::read(&dir) {
            Some(m) => {
                let age = m.finished_at.map_or(String::new(), |t| {
                    format!(", made {} ago", age_text(now.saturating_sub(t)))
                });
                format!("{} of recipe {} ({}{age})", m.instance, m.recipe, m.kind)
            }
            None => "no manifest: an unfinished or foreign folder".into(),
        };
        let size = babelflow::store::dir_size(&dir);
        if dry_run {
            println!("would delete {what}, {:.1} MB: {}", size as f64 / 1e6, dir.display());
            bytes += size;
        } else {
            bytes += store.remove_artifact(&fp)?;
            println!("deleted {what}, {:.1} MB", size as f64 / 1e6);
        }
    }
    store.clean_temp()?;
    let verb = if dry_run { "would free" } else { "freed" };
    println!(
        "{count} unreferenced artifact{} ({verb} {:.1} MB); {} kept",
        if count == 1 { "" } else { "s" },
        bytes as f64 / 1e6,
        referenced.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `90 s`, `12 min`, `5 h`, `3 days`.
fn age_text(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

pub fn kinds(registry: &Registry, only: Option<&str>) -> anyhow::Result<ExitCode> {
    if let Some(name) = only {
        let Some(kind) = registry.get(name) else {
            eprintln!(
                "error: no stage kind `{name}`{}",
                babelflow::diagnostics::did_you_mean(name, registry.names())
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default()
            );
            return Ok(ExitCode::from(EXIT_ERROR));
        };
        println!(
            "{} (code version {}): {}",
            kind.name(),
            kind.code_version(),
            kind.summary()
        );
        println!("\nparameters (under `with:`):");
        for p in kind.params() {
            let req = if p.required { "required" } else { "optional" };
            let default = p.default.map(|d| format!(", default {d}")).unwrap_or_default();
            let range = if p.range.is_unbounded() {
                String::new()
            } else {
                format!(", {}", p.range.describe())
            };
            println!(
                "  {:18} {} ({req}{default}{range})\n  {:18} {}",
                p.name,
                p.ty.describe(),
                "",
                p.doc
            );
        }
        println!("\ninputs (under `needs:`):");
        if kind.open_inputs() {
            println!("  any names you choose");
        }
        for i in kind.inputs() {
            let req = if i.required { "required" } else { "optional" };
            let many = if i.many { ", several" } else { "" };
            println!("  {:18} {} ({req}{many})", i.name, i.doc);
        }
        return Ok(ExitCode::SUCCESS);
    }
    for kind in registry.kinds() {
        println!("{:20} {}", kind.name(), kind.summary());
    }
    Ok(ExitCode::SUCCESS)
}
