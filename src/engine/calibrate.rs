//! `babelflow calibrate`: measure this machine's throughput with the real
//! stages, so `plan --estimate` can say how long a run will take here.
//!
//! It writes a small recipe into a scratch folder — a synthetic corpus,
//! a 1 000-token tokenizer, then at each of a few model widths a randomly
//! initialised LLaMA trained for a few steps and scored for perplexity —
//! runs it one instance at a time, and divides each instance's FLOPs (from
//! the same estimate `plan --estimate` makes) by the seconds its stats.json
//! reports. What an instance took beyond that is its kind's fixed cost.
//! Disk speed comes from writing a 256 MiB file three times (the median). The result goes into the store's
//! `calibration.json`, under the backend.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use babelflow_stage::CancelFlag;

use super::device::{read_calibration, Device, CALIBRATION_FILE};
use super::progress::Progress;
use super::scheduler::SchedulerOptions;
use super::throughput::{Rate, RowsRate, Throughput};
use super::{Outcome, Pipeline, Selection};
use crate::executor::Executor;
use crate::registry::Registry;
use crate::store::Store;

/// One model width to measure, and how much to run at it.
#[derive(Debug, Clone, Copy)]
pub struct Width {
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub steps: usize,
}

const fn width(hidden_size: usize, layers: usize, heads: usize, steps: usize) -> Width {
    Width {
        hidden_size,
        layers,
        heads,
        steps,
    }
}

/// The widths `babelflow calibrate` measures: from the quickstart's to a
/// 1B model's, each run a few seconds on two CPU cores.
pub const WIDTHS: &[Width] = &[
    width(64, 2, 4, 40),
    width(256, 4, 4, 20),
    width(576, 4, 9, 12),
    width(1536, 2, 12, 6),
];

/// Bytes written to measure the disk.
const DISK_PROBE_BYTES: usize = 256 << 20;

/// Writes of [`DISK_PROBE_BYTES`] timed, for their median.
const DISK_PROBES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("cannot write the calibration recipe in {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot calibrate: {0}")]
    Backend(#[from] babelflow_model::ModelError),
    #[error("the calibration recipe is invalid (a babelflow bug): {0}")]
    Recipe(String),
    #[error("{0}")]
    Engine(#[from] super::EngineError),
    #[error("calibration instance {instance} {what}")]
    Instance { instance: String, what: String },
    #[error("cannot save {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What one width measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// At the smallest width, training's FLOP/s is the median of
    /// `train_rates`.
    pub rate: Rate,
    /// Training's FLOP/s in each run of this width's training: one, or at
    /// the smallest width its runs in processes of their own too (how much
    /// the machine's speed moved during the calibration).
    pub train_rates: Vec<f64>,
    pub train_seconds: f64,
    pub score_seconds: f64,
}

/// The throughput measured, and the rows behind it.
pub struct Calibration {
    pub backend: String,
    pub throughput: Throughput,
    pub measured: Vec<Measured>,
}

/// Text of `paragraphs` paragraphs over a fixed synthetic lexicon, with
/// word frequencies skewed like a language's (a few words very common).
fn synthetic_corpus(paragraphs: usize) -> String {
    const SYLLABLES: &[&str] = &[
        "ka", "ma", "ta", "na", "li", "mo", "sa", "ri", "po", "ne", "vu", "do", "ze", "fi", "gu", "ha", "bo", "ye",
        "chi", "wa",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let lexicon: Vec<String> = (0..4000u64)
        .map(|i| {
            let n = 1 + (i % 3) as usize;
            let mut word = String::new();
            let mut k = i;
            for _ in 0..=n {
                word.push_str(SYLLABLES[(k % SYLLABLES.len() as u64) as usize]);
                k /= SYLLABLES.len() as u64;
                k += i % 7;
            }
            word
        })
        .collect();
    let mut text = String::new();
    for _ in 0..paragraphs {
        let words = 30 + next() % 30;
        for w in 0..words {
            let u = (next() % 1_000_000) as f64 / 1_000_000.0;
            let index = ((u * u * u) * lexicon.len() as f64) as usize;
            if w > 0 {
                text.push(' ');
            }
            text.push_str(&lexicon[index.min(lexicon.len() - 1)]);
        }
        text.push_str(".\n\n");
    }
    text
}

/// Multiple-choice questions in MMLU's CSV layout (question, A-D, answer)
/// over the first words of `corpus`.
fn synthetic_questions(corpus: &str, rows: usize) -> String {
    let words: Vec<&str> = corpus.split_whitespace().collect();
    let mut csv = String::new();
    for r in 0..rows {
        let at = |k: usize| words[(r * 17 + k * 5) % words.len()].trim_end_matches('.');
        let question: Vec<&str> = (0..12).map(at).collect();
        let answer = ["A", "B", "C", "D"][r % 4];
        csv.push_str(&format!(
            "{}?,{},{},{},{},{answer}\n",
            question.join(" "),
            at(20),
            at(21),
            at(22),
            at(23)
        ));
    }
    csv
}

/// Alpaca-style instructions over the first words of `corpus`.
fn synthetic_instructions(corpus: &str, rows: usize) -> String {
    let words: Vec<&str> = corpus.split_whitespace().collect();
    let items: Vec<serde_json::Value> = (0..rows)
        .map(|r| {
            let span = |from: usize, n: usize| -> String {
                (from..from + n)
                    .map(|k| words[(r * 31 + k) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            serde_json::json!({"instruction": span(0, 14), "input": "", "output": span(14, 24)})
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Documents scored at `width` with batches of 4: about a second, enough
/// batches that the first (which allocates) does not set the rate.
fn score_docs(width: usize) -> usize {
    3 * (256 * 64 / width.max(64) + 16)
}

/// Batch sizes scored besides 4, for the forward rate's dependence on how
/// many rows a pass multiplies (one short sequence to a wide batch).
const SCORE_BATCHES: [usize; 2] = [1, 16];

fn recipe(backend: &str, widths: &[Width]) -> String {
    let mut yaml = format!(
        "name: calibrate
defaults: {{ backend: {backend} }}
stages:
  corpus:
    kind: ingest
    needs: {{ files: ./corpus.txt }}
    with: {{ lang: xx, text_unit: paragraph, dedup: false }}
  tokenizer:
    kind: train-tokenizer
    needs: {{ corpus: corpus }}
    with: {{ vocab_size: 1000 }}
  tokens:
    kind: tokenize
    needs: {{ corpus: corpus, tokenizer: tokenizer }}
  questions:
    kind: ingest-choice
    needs: {{ files: ./questions }}
    with: {{ format: mmlu, lang: xx }}
  instructions:
    kind: ingest-instructions
    needs: {{ files: ./instructions.json }}
    with: {{ lang: xx }}
"
    );
    for &Width {
        hidden_size: width,
        layers,
        heads,
        steps,
    } in widths
    {
        yaml.push_str(&format!(
            "  model_{width}:
    kind: init-model
    needs: {{ tokenizer: tokenizer }}
    with: {{ hidden_size: {width}, num_hidden_layers: {layers}, num_attention_heads: {heads} }}
  train_{width}:
    kind: pretrain
    needs: {{ model: model_{width}, tokens: tokens, validation: tokens }}
    with: {{ steps: {steps}, batch_size: 4, seq_len: 128, warmup_steps: 1, eval_every: {steps}, eval_batches: 1, checkpoint_every: 0 }}
  score_{width}:
    kind: perplexity
    needs: {{ model: model_{width}, text: \"corpus:corpus.parquet\" }}
    with: {{ max_len: 128, batch_size: 4, max_docs: {docs} }}
",
            docs = score_docs(width),
        ));
        for (batch, docs) in SCORE_BATCHES.iter().map(|&b| (b, score_docs(width) * b / 8 + 4)) {
            yaml.push_str(&format!(
                "  score_{width}_batch{batch}:
    kind: perplexity
    needs: {{ model: model_{width}, text: \"corpus:corpus.parquet\" }}
    with: {{ max_len: 128, batch_size: {batch}, max_docs: {docs} }}
"
            ));
        }
        // The kinds whose cost at small sizes is mostly their own fixed
        // cost, measured once at the smallest width, before any larger model
        // leaves the allocator holding more than they need. What a scoring
        // process holds grows with the batches it has run (the allocator's
        // arenas: 35 MiB after 16 documents, 57 after 1 000, here), so it
        // is measured on a few documents, as a small model is scored.
        if width == widths[0].hidden_size {
            yaml.push_str(&format!(
                "  held_{width}:
    kind: perplexity
    needs: {{ model: model_{width}, text: \"corpus:corpus.parquet\" }}
    with: {{ max_len: 128, batch_size: 4, max_docs: 32 }}
  tiny_{width}:
    kind: perplexity
    needs: {{ model: model_{width}, text: \"corpus:corpus.parquet\" }}
    with: {{ max_len: 128, batch_size: 4, max_docs: 2 }}
  exam_{width}:
    kind: exam
    needs: {{ model: model_{width}, questions: questions }}
    with: {{ shots: 1, max_len: 256 }}
  exam_shots4_{width}:
    kind: exam
    needs: {{ model: model_{width}, questions: questions }}
    with: {{ shots: 4, max_len: 512 }}
  respond_{width}:
    kind: respond
    needs: {{ model: model_{width}, instructions: instructions }}
    with: {{ template: alpaca, max_new_tokens: 16, max_examples: 4 }}
"
            ));
        }
    }
    yaml
}

fn read_json(store: &Store, fingerprint: &str, name: &str) -> Option<serde_json::Value> {
    let path = store.artifact_dir(fingerprint).join(name);
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Bytes/s of writing a file in `dir`.
fn disk_bytes_per_s(dir: &Path) -> std::io::Result<f64> {
    let path = dir.join("disk-probe.bin");
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    {
        let mut file = std::fs::File::create(&path)?;
        for _ in 0..DISK_PROBE_BYTES / block.len() {
            file.write_all(&block)?;
        }
        // Not synced: babelflow's own writes land in the page cache too.
        file.flush()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(DISK_PROBE_BYTES as f64 / seconds.max(1e-6))
}

/// A scoring instance's (seconds, forward FLOP/s): the FLOPs of the tokens
/// it scored (its estimate's per token, padding included) over the seconds
/// its stats.json reports.
fn forward_rate(work: &babelflow_stage::estimate::Work, stats: &serde_json::Value) -> (f64, f64) {
    let seconds = stats["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
    let scored_tokens = stats["tokens_per_s"].as_f64().unwrap_or(0.0) * seconds;
    let per_token = work.forward_flops / work.tokens.value.max(1.0);
    (seconds, per_token * scored_tokens / seconds)
}

/// A training instance's (FLOP/s of its steps, seconds of its optimizer a
/// weight updated) from its stats.json. The optimizer's updates, timed by the
/// trainer, are apart: they cost per weight trained, not per token, so a run
/// with more tokens a step than these spends a smaller share of its time on
/// them.
fn training_rate(work: &babelflow_stage::estimate::Work, stats: &serde_json::Value) -> (f64, f64) {
    let seconds = stats["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
    let optimizer_seconds = stats["optimizer_seconds"].as_f64().unwrap_or(0.0).clamp(0.0, seconds);
    (
        (work.train_flops + work.forward_flops) / (seconds - optimizer_seconds).max(1e-6),
        optimizer_seconds / work.optimizer_updates.max(1.0),
    )
}

/// Costs below this are weighed as this in [`line_through`]: a timer's resolution.
const LEAST_COST_S: f64 = 1e-3;

/// The line `y = a + b·x` through `points` that makes the smallest
/// relative errors (least squares weighted by 1/y²: an instance of 10 ms
/// is priced as closely as one of 10 s, where plain least squares would
/// fit the long ones and leave the intercept to their noise), with `a` and
/// `b` at least 0 (a cost is never negative: where the fit says so, the
/// other term is refitted alone); `None` with fewer than two distinct `x`.
fn line_through(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let weight = |y: f64| 1.0 / y.max(LEAST_COST_S).powi(2);
    let sum = |f: &dyn Fn(f64, f64) -> f64| points.iter().map(|&(x, y)| weight(y) * f(x, y)).sum::<f64>();
    let total = sum(&|_, _| 1.0);
    let (mx, my) = (sum(&|x, _| x) / total, sum(&|_, y| y) / total);
    let sxx = sum(&|x, _| (x - mx) * (x - mx));
    if points.len() < 2 || sxx <= 0.0 {
        return None;
    }
    let b = sum(&|x, y| (x - mx) * (y - my)) / sxx;
    let a = my - b * mx;
    Some(if b < 0.0 {
        (my, 0.0)
    } else if a < 0.0 {
        (0.0, sum(&|x, y| x * y) / sum(&|x, _| x * x))
    } else {
        (a, b)
    })
}

/// The corpus, questions, instructions and recipe in `scratch`; the recipe's path.
fn write_inputs(scratch: &Path, backend: &str, widths: &[Width]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(scratch.join("questions"))?;
    let corpus = synthetic_corpus(3000);
    std::fs::write(scratch.join("corpus.txt"), &corpus)?;
    std::fs::write(
        scratch.join("questions/calibration_dev.csv"),
        synthetic_questions(&corpus, 5),
    )?;
    std::fs::write(
        scratch.join("questions/calibration_test.csv"),
        synthetic_questions(&corpus[999..], 16),
    )?;
    std::fs::write(scratch.join("instructions.json"), synthetic_instructions(&corpus, 8))?;
    let recipe_path = scratch.join("calibrate.yaml");
    std::fs::write(&recipe_path, recipe(backend, widths))?;
    Ok(recipe_path)
}

/// The kinds measured at the smallest width for what they hold and take
/// besides their work, with the prefix of their instance's name.
const SMALL: [(&str, &str); 4] = [
    ("pretrain", "train"),
    ("perplexity", "held"),
    ("exam", "exam"),
    ("respond", "respond"),
];

/// Instances of the smallest width also run again in processes of their
/// own, for the fixed costs: a second size of the kinds whose cost besides
/// their passes grows with what they read.
const ALSO_ALONE: [&str; 2] = ["tiny", "exam_shots4"];

/// Runs of each of those, in processes of their own: a 15 ms instance
/// takes 14 to 25 ms from one run to the next here, and the median of 3
/// runs is off the long median by up to 25 %, of 5 by up to 16 %.
const ALONE_RUNS: usize = 5;

/// Runs `instance` of the calibration recipe again, alone in a `binary` process of its own.
fn rerun_alone(binary: &Path, recipe: &Path, store: &Path, instance: &str) -> Result<(), CalibrateError> {
    let failed = |what: String| CalibrateError::Instance {
        instance: instance.to_string(),
        what,
    };
    let out = std::process::Command::new(binary)
        .arg("run")
        .arg(recipe)
        .arg("--store")
        .arg(store)
        .args(["--jobs", "1", "--only", instance, "--force", instance])
        .output()
        .map_err(|e| failed(format!("could not start {}: {e}", binary.display())))?;
    if !out.status.success() {
        return Err(failed(format!(
            "failed in a process of its own: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// `Err` when `backend` cannot run here (not in this build, not a backend,
/// or no device answers), as the stages themselves would say it: to check
/// before [`calibrate`], whose recipe would otherwise fail on it.
pub fn can_calibrate(backend: &str) -> Result<(), CalibrateError> {
    babelflow_model::device::select(backend, 0)?;
    Ok(())
}

/// Runs the calibration recipe on `backend` (one [`can_calibrate`]
/// accepts) in a scratch folder under `scratch`, one instance at a time.
///
/// With `binary` (this babelflow's executable), the smallest width's
/// instances are run once more, each in a process of its own, for what a
/// process holds besides an instance's work: in this long-lived process
/// the allocator still holds what earlier instances freed.
pub fn calibrate(
    registry: &Registry,
    backend: &str,
    widths: &[Width],
    binary: Option<&Path>,
    scratch: &Path,
    progress: Arc<Progress>,
    cancel: &CancelFlag,
) -> Result<Calibration, CalibrateError> {
    let io = |source| CalibrateError::Scratch {
        path: scratch.to_path_buf(),
        source,
    };
    let recipe_path = write_inputs(scratch, backend, widths).map_err(io)?;
    let pipeline = Pipeline::load(&recipe_path, &[], registry).map_err(|d| CalibrateError::Recipe(d.to_string()))?;
    let store = Arc::new(Store::open(&scratch.join("store")).map_err(super::EngineError::from)?);
    let options = SchedulerOptions {
        jobs: 1,
        keep_going: false,
        executor: Arc::new(Executor::Local(None)),
    };
    let (planned, outcomes) = pipeline.run(store.clone(), &Selection::default(), &options, cancel, progress, true)?;
    for (p, outcome) in planned.iter().zip(&outcomes) {
        match outcome {
            Outcome::Ran { .. } | Outcome::Cached => {}
            other => {
                return Err(CalibrateError::Instance {
                    instance: p.name.clone(),
                    what: format!("did not finish: {other:?}"),
                })
            }
        }
    }
    // The estimate of the same instances, now that everything exists.
    let planned = pipeline.plan(&store, &Selection::default())?;
    let unpriced = Device::this_machine(backend, scratch);
    let cost = super::estimate::estimate(&pipeline.graph, &planned, &store, &unpriced);
    let find = |name: &str| -> Result<(&super::estimate::InstanceCost, serde_json::Value), CalibrateError> {
        let missing = |what: &str| CalibrateError::Instance {
            instance: name.to_string(),
            what: what.to_string(),
        };
        let index = planned
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| missing("is not in the plan"))?;
        let fingerprint = &planned[index].fingerprint;
        let stats = read_json(&store, fingerprint, "stats.json").ok_or_else(|| missing("wrote no stats.json"))?;
        Ok((&cost.instances[index], stats))
    };
    // One write of the probe read 0.47 GB/s here where five others read
    // 4.9 to 6.4 (the page cache flushing what the calibration wrote):
    // the median of three.
    let io_rate = super::history::median(
        (0..DISK_PROBES)
            .map(|_| disk_bytes_per_s(scratch))
            .collect::<std::io::Result<Vec<f64>>>()
            .map_err(io)?,
    );
    let mut measured = Vec::new();
    // The smallest width's training work, to rate its runs alone below.
    let mut small_train_work = None;
    for &Width { hidden_size: width, .. } in widths {
        let (train, train_stats) = find(&format!("train_{width}"))?;
        let (score, score_stats) = find(&format!("score_{width}"))?;
        let (Some(train_work), Some(score_work)) = (&train.work, &score.work) else {
            return Err(CalibrateError::Instance {
                instance: format!("train_{width}"),
                what: "has no estimate to calibrate against".into(),
            });
        };
        let train_seconds = train_stats["seconds"].as_f64().unwrap_or(0.0).max(1e-6);
        let (score_seconds, forward_flops_per_s) = forward_rate(score_work, &score_stats);
        let mut forward_by_rows = vec![RowsRate {
            rows: score_work.forward_rows,
            flops_per_s: forward_flops_per_s,
        }];
        for batch in SCORE_BATCHES {
            let name = format!("score_{width}_batch{batch}");
            let (cost, stats) = find(&name)?;
            let work = cost.work.as_ref().ok_or_else(|| CalibrateError::Instance {
                instance: name.clone(),
                what: "has no estimate to calibrate against".into(),
            })?;
            let (_, flops_per_s) = forward_rate(work, &stats);
            forward_by_rows.push(RowsRate {
                rows: work.forward_rows,
                flops_per_s,
            });
        }
        forward_by_rows.sort_by_key(|r| r.rows);
        forward_by_rows.dedup_by_key(|r| r.rows);
        let (train_flops_per_s, optimizer_seconds_per_update) = training_rate(train_work, &train_stats);
        small_train_work.get_or_insert_with(|| train_work.clone());
        let rate = Rate {
            hidden_size: width,
            train_flops_per_s,
            forward_flops_per_s,
            forward_by_rows,
            optimizer_seconds_per_update,
        };
        measured.push(Measured {
            train_rates: vec![rate.train_flops_per_s],
            rate,
            train_seconds,
            score_seconds,
        });
    }
    let small = widths.first().map(|w| w.hidden_size);
    // Each run of an instance: (seconds in all, its stats, its peak), as its
    // manifest and stats.json say once it has run.
    let record = |name: &str| -> Option<(f64, serde_json::Value, f64)> {
        let p = planned.iter().find(|p| p.name == name)?;
        let manifest = read_json(&store, &p.fingerprint, "manifest.json")?;
        let stats = read_json(&store, &p.fingerprint, "stats.json")?;
        Some((
            manifest["duration_s"].as_f64()?,
            stats,
            babelflow_stage::memory::measured_peak(&manifest)?.bytes as f64,
        ))
    };
    let mut runs: BTreeMap<String, Vec<(f64, serde_json::Value, f64)>> = BTreeMap::new();
    if let Some(width) = small {
        for prefix in SMALL.iter().map(|(_, prefix)| *prefix).chain(ALSO_ALONE) {
            let name = format!("{prefix}_{width}");
            let mut of_this = Vec::new();
            match binary {
                // Instances of milliseconds: their median over a few runs,
                // not one run's jitter.
                Some(binary) => {
                    for _ in 0..ALONE_RUNS {
                        rerun_alone(binary, &recipe_path, store.root(), &name)?;
                        of_this.extend(record(&name));
                    }
                }
                None => of_this.extend(record(&name)),
            }
            runs.insert(name, of_this);
        }
    }
    // The smallest width's training, well under a second, is timed again
    // in each of its runs alone: its rate prices every toy training, and one
    // run of it moves by ±12 % from one calibration to the next here.
    if let (Some(width), Some(first), Some(work)) = (small, measured.first_mut(), &small_train_work) {
        if let Some(alone) = runs.get(&format!("train_{width}")) {
            let in_process = (first.rate.train_flops_per_s, first.rate.optimizer_seconds_per_update);
            let samples: Vec<(f64, f64)> = std::iter::once(in_process)
                .chain(alone.iter().map(|(_, stats, _)| training_rate(work, stats)))
                .collect();
            first.train_rates = samples.iter().map(|s| s.0).collect();
            first.rate.train_flops_per_s = super::history::median(first.train_rates.clone());
            first.rate.optimizer_seconds_per_update = super::history::median(samples.iter().map(|s| s.1).collect());
        }
    }
    // At the smallest width, what each kind holds and takes beyond its work
    // (the process, the tokenizer, the data, the report of it), from the
    // runs in processes of their own: each instance is one on a cluster
    // (a job each), and a process's first instance pays for its start
    // (threads, the allocator's arenas, code paged in), a few milliseconds.
    // Reading the model is negligible there: the disk probe's rate is not
    // the page cache's, and at width 256 its error is the size of the
    // fixed cost.
    let mut process_bytes = BTreeMap::new();
    let mut overhead_s: BTreeMap<String, f64> = BTreeMap::new();
    let mut scoring_outside: Vec<(f64, f64)> = Vec::new();
    let mut exam_outside: Vec<(f64, f64)> = Vec::new();
    if let (Some(width), Some(rate)) = (small, measured.first().map(|m| m.rate.clone())) {
        let work_of = |name: &str| find(name).ok().and_then(|(cost, _)| cost.work.clone());
        // The median over an instance's runs (in processes of their own
        // where it had them, else the calibration's one) of what `per_run`
        // makes of one: (seconds in all, stats, peak).
        let median_of = |name: &str, per_run: &dyn Fn(f64, &serde_json::Value, f64) -> f64| -> Option<f64> {
            let of_this = runs
                .get(name)
                .cloned()
                .unwrap_or_else(|| record(name).into_iter().collect());
            let values: Vec<f64> = of_this.iter().map(|(t, s, p)| per_run(*t, s, *p)).collect();
            (!values.is_empty()).then(|| super::history::median(values))
        };
        // (tokens read, seconds) an instance spends besides what it times
        // itself (training steps, scoring passes) and its checkpoint bytes:
        // starting, loading, reading and tokenizing its data.
        let besides = |name: &str| -> Option<(f64, f64)> {
            let work = work_of(name)?;
            let io_seconds = work.io_bytes as f64 / io_rate;
            let seconds = median_of(name, &|total, stats, _| {
                stats["seconds"]
                    .as_f64()
                    .map_or(0.0, |own| (total - own - io_seconds).max(0.0))
            })?;
            Some((work.tokens.value, seconds))
        };
        for (kind, prefix) in SMALL {
            let name = format!("{prefix}_{width}");
            let (Some(work), Some(peak)) = (work_of(&name), median_of(&name, &|_, _, peak| peak)) else {
                continue;
            };
            process_bytes.insert(
                kind.to_string(),
                (peak - work.memory.total_bytes() as f64).max(0.0) as u64,
            );
        }
        if let Some((_, seconds)) = besides(&format!("train_{width}")) {
            overhead_s.insert("pretrain".into(), seconds);
        }
        // Scoring's and the exam's grow with what they read: a line over
        // their sizes, the few-document ones setting the fixed part, which
        // the long scorings alone cannot tell apart from their noise.
        let scorings = [
            format!("score_{width}"),
            format!("held_{width}"),
            format!("tiny_{width}"),
        ]
        .into_iter()
        .chain(SCORE_BATCHES.iter().map(|batch| format!("score_{width}_batch{batch}")));
        scoring_outside.extend(scorings.filter_map(|name| besides(&name)));
        exam_outside.extend(
            [format!("exam_{width}"), format!("exam_shots4_{width}")]
                .iter()
                .filter_map(|n| besides(n)),
        );
        // A generation's cost beyond its FLOPs at this width (the rate at
        // its rows, as an estimate reads it): mostly its token-by-token
        // steps, each too small for the rate.
        let name = format!("respond_{width}");
        if let Some(work) = work_of(&name) {
            let compute = work.forward_flops / rate.forward_at(work.forward_rows);
            if let Some(seconds) = median_of(&name, &|total, _, _| (total - compute).max(0.0)) {
                overhead_s.insert("respond".into(), seconds);
            }
        }
    }
    let mut overhead_per_token_s = BTreeMap::new();
    for (kind, points) in [("perplexity", &scoring_outside), ("exam", &exam_outside)] {
        if let Some((fixed, per_token)) = line_through(points) {
            overhead_s.insert(kind.into(), fixed);
            overhead_per_token_s.insert(kind.into(), per_token);
        }
    }
    let throughput = Throughput {
        rates: measured.iter().map(|m| m.rate.clone()).collect(),
        io_bytes_per_s: io_rate,
        overhead_s,
        overhead_per_token_s,
        process_bytes,
        source: format!(
            "babelflow calibrate on this machine, {} threads, at {}",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            super::execute::now_unix()
        ),
    };
    Ok(Calibration {
        backend: backend.to_string(),
        throughput,
        measured,
    })
}

/// Saves a calibration into the store's calibration.json, beside other backends'.
pub fn save(store_dir: &Path, calibration: &Calibration) -> Result<PathBuf, CalibrateError> {
    // A file that does not read is replaced: this is what it was for.
    let mut all = read_calibration(store_dir).unwrap_or_default();
    all.insert(calibration.backend.clone(), calibration.throughput.clone());
    let path = store_dir.join(CALIBRATION_FILE);
    let text = serde_json::to_string_pretty(&all).unwrap_or_default();
    std::fs::write(&path, text).map_err(|source| CalibrateError::Save {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cost_line_is_fitted_by_relative_error_and_never_negative() {
        // y = 0.5 + 0.01 x exactly.
        let (a, b) = line_through(&[(0.0, 0.5), (100.0, 1.5), (300.0, 3.5)]).unwrap();
        assert!((a - 0.5).abs() < 1e-12 && (b - 0.01).abs() < 1e-12, "{a} {b}");
        // 5 ms fixed and 1 µs a token, the long runs 10 % off either way:
        // the short runs still set the fixed cost.
        let (a, b) = line_through(&[(100.0, 0.0051), (200.0, 0.0052), (1e5, 0.115), (2e5, 0.184)]).unwrap();
        assert!((a - 0.005).abs() < 2e-4, "{a}");
        assert!((b - 1e-6).abs() < 1e-7, "{b}");
        // Falling with x: no per-x cost, the (weighted) mean is fixed.
        let (a, b) = line_through(&[(1.0, 2.0), (3.0, 1.0)]).unwrap();
        assert!((a - 1.2).abs() < 1e-12 && b == 0.0, "{a} {b}");
        // A negative intercept: the line through 0 instead, weighed as the
        // fit is (1 and 1/16): (1 + 8/16) / (1 + 4/16).
        let (a, b) = line_through(&[(1.0, 1.0), (2.0, 4.0)]).unwrap();
        assert_eq!(a, 0.0);
        assert!((b - 1.2).abs() < 1e-12, "{b}");
        assert_eq!(line_through(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn the_synthetic_corpus_is_the_same_every_time_and_skewed() {
        let text = synthetic_corpus(50);
        assert_eq!(text, synthetic_corpus(50));
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for word in text.split_whitespace() {
            *counts.entry(word.trim_end_matches('.')).or_default() += 1;
        }
        let mut by_count: Vec<usize> = counts.values().copied().collect();
        by_count.sort_unstable_by(|a, b| b.cmp(a));
        // The commonest word is far commoner than the median one.
        assert!(by_count[0] > 10 * by_count[by_count.len() / 2], "{:?}", &by_count[..5]);
    }
}
