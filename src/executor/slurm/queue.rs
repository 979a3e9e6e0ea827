//! Slurm's commands, as the executor uses them: `sbatch` to submit,
//! `squeue` for liveness only, `sacct` (or `scontrol` where accounting is
//! off) to say how a job ended, `scancel` to stop one. Completion itself is
//! never read from here: it is the committed artifact in the store.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// States in which a job may still commit its artifact.
pub fn alive(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "CONFIGURING"
            | "RUNNING"
            | "COMPLETING"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SUSPENDED"
            | "STAGE_OUT"
            | "SIGNALING"
            | "STOPPED"
    )
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e} (is this a Slurm login node? is {program} on PATH?)"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sbatch --parsable` prints `ID` or `ID;CLUSTER`.
pub fn submit(flags: &[String], script: &Path) -> Result<String, String> {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let script = script.display().to_string();
    args.push(&script);
    // The flags and script path are per instance (and logged at debug):
    // keep them out of the message so a cause shared by every instance
    // (a controller gone mid-run) reads the same and is reported once.
    let out = Command::new("sbatch")
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run `sbatch`: {e} (is this a Slurm login node? is sbatch on PATH?)"))?;
    if !out.status.success() {
        return Err(format!(
            "`sbatch` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = out.trim().split(';').next().unwrap_or_default().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return Err(format!("sbatch printed no job id: {:?}", out.trim()));
    }
    Ok(id)
}

/// Whether the controller answers: `scontrol ping` says `UP` for the
/// primary (or a backup) slurmctld. Asked once before the first submission
/// so a cluster that is down is one clear error, not one per instance.
pub fn controller_up() -> Result<(), String> {
    let out = Command::new("scontrol")
        .arg("ping")
        .output()
        .map_err(|e| format!("cannot run `scontrol`: {e} (is this a Slurm login node? is scontrol on PATH?)"))?;
    // `scontrol ping` prints its verdict on stdout and exits 1 when down.
    let said = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.contains("is UP") {
        return Ok(());
    }
    // The verdict lines (`Slurmctld(primary) at head is DOWN`), not the banner.
    let verdict: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("Slurmctld"))
        .map(str::trim)
        .collect();
    let verdict = if verdict.is_empty() {
        said.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        verdict.join("; ")
    };
    Err(format!(
        "the Slurm controller does not answer (`scontrol ping`: {verdict})"
    ))
}

pub fn cancel(id: &str) -> Result<(), String> {
    run("scancel", &[id]).map(|_| ())
}

/// One `squeue` for every job of this user, shared by all the worker
/// threads and reused for `min_age`: the scheduler is asked about
/// liveness once per interval however many jobs are in flight.
pub struct Queue {
    min_age: Duration,
    last: Mutex<Option<(Instant, Answer)>>,
}

/// `squeue`'s last answer: job id → state, or why it gave none.
type Answer = Result<HashMap<String, String>, String>;

impl Queue {
    pub fn new(min_age: Duration) -> Queue {
        Queue {
            min_age,
            last: Mutex::new(None),
        }
    }

    /// The job's state, `Ok(None)` when it is no longer in the queue.
    pub fn state(&self, id: &str) -> Result<Option<String>, String> {
        let Ok(mut last) = self.last.lock() else {
            return Err("the queue cache is poisoned".into());
        };
        let fresh = last.as_ref().is_some_and(|(at, _)| at.elapsed() < self.min_age);
        if !fresh {
            *last = Some((Instant::now(), squeue()));
        }
        match last.as_ref().map(|(_, r)| r) {
            Some(Ok(jobs)) => Ok(jobs.get(id).cloned()),
            Some(Err(e)) => Err(e.clone()),
            None => Err("no answer from squeue".into()),
        }
    }

    pub fn all(&self) -> Result<HashMap<String, String>, String> {
        squeue()
    }

    /// Forgets the last answer (after a submission, so a new job is not
    /// taken for one that left the queue).
    pub fn invalidate(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }
}

fn squeue() -> Result<HashMap<String, String>, String> {
    let out = run("squeue", &["--me", "--noheader", "--array", "--format=%i %T"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once(' ')?;
            Some((id.to_string(), state.trim().to_string()))
        })
        .collect())
}

/// How a job that left the queue ended, in words: `sacct` where
/// accounting runs, else `scontrol show job` (which keeps a finished job
/// for MinJobAge, 300 s by default).
pub fn how_it_ended(id: &str) -> String {
    if let Ok(out) = run(
        "sacct",
        &[
            "--noheader",
            "--parsable2",
            "-X",
            "-j",
            id,
            "--format=State,ExitCode,Reason",
        ],
    ) {
        if let Some(line) = out.lines().find(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split('|').collect();
            let mut text = format!("ended as {}", fields.first().copied().unwrap_or("?"));
            if let Some(code) = fields.get(1) {
                text.push_str(&format!(", exit code {code}"));
            }
            if let Some(reason) = fields.get(2).filter(|r| !r.is_empty() && **r != "None") {
                text.push_str(&format!(", reason {reason}"));
            }
            return text;
        }
    }
    match run("scontrol", &["show", "job", "--oneliner", id]) {
        Ok(out) => {
            let field = |name: &str| {
                out.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
                    .unwrap_or("?")
                    .to_string()
            };
            let mut text = format!("ended as {}, exit code {}", field("JobState"), field("ExitCode"));
            let reason = field("Reason");
            if reason != "None" && reason != "?" {
                text.push_str(&format!(", reason {reason}"));
            }
            text
        }
        Err(_) => "left the queue (neither sacct nor scontrol knows it any more)".into(),
    }
}
