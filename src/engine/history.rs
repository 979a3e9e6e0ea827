//! Earlier runs of the same shape as a source of estimates. Every manifest
//! keeps the work the instance did (`work_done`: its shape and FLOPs, by
//! the estimate's model with every input read after the run) beside the
//! time it took and its peak memory. When
//! an instance about to run has the shape of runs the store already holds
//! (same kind, backend and model, same trainable part, same memory
//! layout: batch × length, precision, checkpointing; any number of steps
//! or documents), their measured seconds per FLOP and their peak price it
//! more closely than a calibration at another shape can.

use babelflow_stage::estimate::Work;
use serde_json::Value;

use crate::store::Store;

/// One finished run, as its manifest (or the store's run log) recorded it.
#[derive(Debug, Clone)]
pub struct PastRun {
    fingerprint: String,
    pub instance: String,
    pub recipe: String,
    shape: String,
    backend: String,
    finished_at: u64,
    duration_s: f64,
    flops: f64,
    /// The tokens it read: its fixed cost, where that grows with them.
    tokens: f64,
    /// Ran with `--jobs 1`: alone, its time and peak its own.
    alone: bool,
    peak_bytes: Option<u64>,
}

impl PastRun {
    fn from_manifest(m: &Value) -> Option<PastRun> {
        let done = &m["work_done"];
        Some(PastRun {
            fingerprint: m["fingerprint"].as_str().unwrap_or_default().to_string(),
            instance: m["instance"].as_str()?.to_string(),
            recipe: m["recipe"].as_str().unwrap_or("?").to_string(),
            shape: done["shape"].as_str()?.to_string(),
            backend: m["backend"].as_str()?.to_string(),
            finished_at: m["finished_at"].as_u64().unwrap_or(0),
            duration_s: m["duration_s"].as_f64()?,
            flops: done["flops"].as_f64()?,
            tokens: done["tokens"].as_f64()?,
            alone: m["peak_rss_own"].as_bool() == Some(true),
            // Where its work lived: a GPU's own peak, never its host memory.
            peak_bytes: babelflow_stage::memory::measured_peak(m).map(|p| p.bytes),
        })
    }
}

/// What an instance did, for its manifest: its shape and FLOPs by the
/// estimate's model, now that every input exists (before the run, a text's
/// size may have been a guess).
pub fn work_done(kind: &str, work: &Work, processes: usize) -> Value {
    serde_json::json!({
        "shape": shape_of(kind, work, processes),
        "flops": flops_of(work),
        "tokens": work.tokens.value,
    })
}

/// The fields of a manifest the history reads, for the store's run log
/// (`Store::log_run`): the same names, so one reader serves both.
pub fn run_line(manifest: &Value) -> Value {
    let mut line = serde_json::Map::new();
    for key in [
        "fingerprint",
        "instance",
        "recipe",
        "kind",
        "backend",
        "finished_at",
        "duration_s",
        "peak_rss_bytes",
        "peak_rss_own",
        "work_done",
    ] {
        if let Some(value) = manifest.get(key) {
            line.insert(key.to_string(), value.clone());
        }
    }
    // Of the notes, where the work ran and the device's peak there: what
    // `measured_peak` reads.
    let notes: serde_json::Map<String, Value> = ["backend", babelflow_stage::memory::DEVICE_PEAK_NOTE]
        .into_iter()
        .filter_map(|key| Some((key.to_string(), manifest["notes"].get(key)?.clone())))
        .collect();
    if !notes.is_empty() {
        line.insert("notes".into(), Value::Object(notes));
    }
    Value::Object(line)
}

/// The runs a store's run log and manifests describe, newest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    runs: Vec<PastRun>,
}

/// An estimate made from earlier runs of the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct FromHistory {
    pub seconds: f64,
    pub seconds_source: String,
    /// The median measured peak, when the runs ran alone (else a peak is
    /// the process's, with what ran beside it).
    pub peak: Option<(u64, String)>,
}

/// The key two instances share when they hold the same memory and run
/// the same products per token: the kind, the model's size and width,
/// what trains, the memory layout and the processes. Steps and text
/// lengths are left out: they scale the FLOPs, not the shape.
pub fn shape_of(kind: &str, work: &Work, processes: usize) -> String {
    let key = serde_json::json!({
        "kind": kind,
        "parameters": work.parameters,
        "trainable_parameters": work.trainable_parameters,
        "hidden_size": work.hidden_size,
        "memory": work.memory,
        "processes": processes,
    });
    blake3::hash(key.to_string().as_bytes()).to_hex()[..16].to_string()
}

/// The FLOPs an instance's time is priced by.
pub fn flops_of(work: &Work) -> f64 {
    work.train_flops + work.forward_flops
}

/// The median (the mean of the middle two for an even count; 0 for none).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of `(value, weight)` pairs: the value where half the weight
/// lies on either side (the mean of the two where it falls between them, so
/// equal weights give [`median`]); 0 for none.
fn weighted_median(mut values: Vec<(f64, f64)>) -> f64 {
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = values.iter().map(|v| v.1).sum::<f64>() / 2.0;
    let mut below = 0.0;
    for (i, &(value, weight)) in values.iter().enumerate() {
        below += weight;
        if below > half {
            return value;
        }
        if below == half {
            return values.get(i + 1).map_or(value, |next| (value + next.0) / 2.0);
        }
    }
    0.0
}

/// "an earlier run", "median of 3 earlier runs".
fn earlier_runs(n: usize) -> String {
    if n == 1 {
        "an earlier run".to_string()
    } else {
        format!("median of {n} earlier runs")
    }
}

impl History {
    /// Every run in `store`'s run log, and every manifest that recorded a
    /// shape (a store older than the log has only those), each run once.
    /// Lines and manifests that do not read are passed over: a history is
    /// a hint, not an input.
    pub fn load(store: &Store) -> History {
        let logged = std::fs::read_to_string(store.runs_log_path()).unwrap_or_default();
        let mut runs: Vec<PastRun> = logged
            .lines()
            .filter_map(|line| PastRun::from_manifest(&serde_json::from_str(line).ok()?))
            .collect();
        let seen: std::collections::BTreeSet<(String, u64)> =
            runs.iter().map(|r| (r.fingerprint.clone(), r.finished_at)).collect();
        runs.extend(
            store
                .artifacts()
                .unwrap_or_default()
                .iter()
                .filter_map(|fingerprint| {
                    let text = std::fs::read_to_string(store.artifact_dir(fingerprint).join("manifest.json")).ok()?;
                    PastRun::from_manifest(&serde_json::from_str(&text).ok()?)
                })
                .filter(|r| !seen.contains(&(r.fingerprint.clone(), r.finished_at))),
        );
        History::of(runs)
    }

    fn of(mut runs: Vec<PastRun>) -> History {
        runs.sort_by_key(|r| std::cmp::Reverse(r.finished_at));
        History { runs }
    }

    /// The estimate of `work` on `backend` from the runs of the same
    /// shape, `None` when there are none. `fixed_s(tokens)` is what an
    /// instance of this shape costs besides its FLOPs (checkpoint I/O, the
    /// kind's fixed cost and what grows with the tokens it reads, such as
    /// tokenizing them): each earlier run's own is taken from its duration,
    /// the rest scaled by the FLOPs, and this one's added back.
    pub fn estimate(
        &self,
        shape: &str,
        backend: &str,
        work: &Work,
        fixed_s: impl Fn(f64) -> f64,
    ) -> Option<FromHistory> {
        let of_shape = || self.runs.iter().filter(|r| r.shape == shape && r.backend == backend);
        // Runs that had the machine to themselves, when there are any: one
        // that shared it was slower than this one will be alone. The latest
        // five: the machine of a year ago is not this one.
        let alone = of_shape().any(|r| r.alone);
        let same: Vec<&PastRun> = of_shape().filter(|r| r.alone || !alone).take(5).collect();
        let latest = same.first()?;
        let flops = flops_of(work);
        // Each run's price for this one, weighed by its FLOPs: a run a
        // hundredth of this one's size carries a hundred times its timer's
        // noise into the scaling.
        let seconds = weighted_median(
            same.iter()
                .map(|r| {
                    let compute = (r.duration_s - fixed_s(r.tokens)).max(0.0);
                    let scale = if r.flops > 0.0 { flops / r.flops } else { 1.0 };
                    (fixed_s(work.tokens.value) + compute * scale, r.flops.max(1.0))
                })
                .collect(),
        );
        let seconds_source = format!(
            "{} of the same shape in this store (latest `{}` of {}: {:.2} s for {:.3e} FLOPs{})",
            earlier_runs(same.len()),
            latest.instance,
            latest.recipe,
            latest.duration_s,
            latest.flops,
            if alone {
                ""
            } else {
                "; beside other instances, so slower than alone"
            },
        );
        let peaks: Vec<f64> = same.iter().filter_map(|r| r.peak_bytes).map(|b| b as f64).collect();
        let peak = (alone && !peaks.is_empty()).then(|| {
            (
                median(peaks.clone()) as u64,
                format!(
                    "measured peak: {} of the same shape in this store",
                    earlier_runs(peaks.len())
                ),
            )
        });
        Some(FromHistory {
            seconds,
            seconds_source,
            peak,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use babelflow_stage::estimate::{Basis, Count, Memory};

    fn work(flops: f64, activations: u64) -> Work {
        Work {
            tokens: Count::new(flops / 1e6, Basis::Params, "test"),
            train_flops: flops,
            forward_flops: 0.0,
            parameters: 1000,
            trainable_parameters: 1000,
            memory: Memory {
                activations_bytes: activations,
                ..Memory::default()
            },
            fit_options: vec![],
            io_bytes: 0,
            hidden_size: 64,
            forward_rows: 0,
            all_reduce_bytes: 0,
            optimizer_updates: 0.0,
        }
    }

    fn run(shape: &str, finished_at: u64, duration_s: f64, flops: f64, alone: bool) -> PastRun {
        PastRun {
            fingerprint: format!("f{finished_at}"),
            instance: format!("run{finished_at}"),
            recipe: "r".into(),
            shape: shape.into(),
            backend: "cpu".into(),
            finished_at,
            duration_s,
            flops,
            tokens: flops / 1e6,
            alone,
            peak_bytes: Some(100 * finished_at),
        }
    }

    #[test]
    fn the_shape_ignores_how_long_a_run_is_but_not_its_memory_layout() {
        assert_eq!(
            shape_of("pretrain", &work(1e9, 10), 1),
            shape_of("pretrain", &work(5e9, 10), 1)
        );
        assert_ne!(
            shape_of("pretrain", &work(1e9, 10), 1),
            shape_of("pretrain", &work(1e9, 20), 1)
        );
        assert_ne!(
            shape_of("pretrain", &work(1e9, 10), 1),
            shape_of("sft", &work(1e9, 10), 1)
        );
        assert_ne!(
            shape_of("pretrain", &work(1e9, 10), 1),
            shape_of("pretrain", &work(1e9, 10), 2)
        );
    }

    #[test]
    fn a_gpu_runs_peak_is_its_devices_never_its_host_memory() {
        let manifest = |notes: Value| {
            serde_json::json!({
                "fingerprint": "f", "instance": "train", "recipe": "r", "backend": "vulkan", "finished_at": 1,
                "duration_s": 2.0, "peak_rss_bytes": 900, "peak_rss_own": true,
                "work_done": {"shape": "a", "flops": 1e9, "tokens": 1000.0}, "notes": notes,
            })
        };
        let peak_of = |notes: Value| {
            let run = PastRun::from_manifest(&manifest(notes)).unwrap();
            let e = History::of(vec![run]).estimate("a", "vulkan", &work(1e9, 0), |_| 0.0);
            e.unwrap().peak.map(|(bytes, _)| bytes)
        };
        // Host memory is not the device's: no peak rather than a wrong one.
        assert_eq!(peak_of(serde_json::json!({"backend": "vulkan:0"})), None);
        let measured = serde_json::json!({"backend": "vulkan:0", "device_peak_bytes": 5000});
        assert_eq!(peak_of(measured.clone()), Some(5000));
        // `auto` that ran on the CPU: its resident memory is its peak.
        assert_eq!(peak_of(serde_json::json!({"backend": "cpu (flex)"})), Some(900));
        // The run log keeps what that needs, and no other note.
        let mut notes = measured.clone();
        notes["special_tokens"] = "BOS <s>".into();
        assert_eq!(run_line(&manifest(notes))["notes"], measured);
    }

    #[test]
    fn time_scales_with_the_flops_beyond_the_fixed_cost_and_takes_the_median() {
        // Three runs alone of 1 GFLOP: 3, 5 and 4 s, of which 1 s is fixed.
        let history = History::of(vec![
            run("a", 3, 3.0, 1e9, true),
            run("a", 2, 5.0, 1e9, true),
            run("a", 1, 4.0, 1e9, true),
            run("a", 9, 40.0, 1e9, false),
            run("b", 4, 99.0, 1e9, true),
        ]);
        let e = history.estimate("a", "cpu", &work(2e9, 0), |_| 1.0).unwrap();
        // Median compute 3 s per GFLOP, twice the FLOPs: 1 + 6 s; the run
        // that shared the machine left out.
        assert!((e.seconds - 7.0).abs() < 1e-12, "{e:?}");
        assert!(e.seconds_source.contains("median of 3 earlier runs"), "{e:?}");
        assert!(e.seconds_source.contains("`run3`"), "the latest is named: {e:?}");
        // The runs' peaks: 100, 200 and 300 bytes.
        assert_eq!(e.peak.unwrap().0, 200);
        assert!(history.estimate("a", "vulkan", &work(1e9, 0), |_| 0.0).is_none());
        assert!(history.estimate("c", "cpu", &work(1e9, 0), |_| 0.0).is_none());
    }

    #[test]
    fn a_weighted_median_leans_on_the_heavy_values_and_is_the_median_for_equal_weights() {
        assert_eq!(weighted_median(vec![(3.0, 1.0), (5.0, 1.0), (4.0, 1.0)]), 4.0);
        assert_eq!(weighted_median(vec![(3.0, 2.0), (5.0, 2.0)]), 4.0);
        assert_eq!(weighted_median(vec![(1.0, 1.0), (2.0, 1.0), (9.0, 5.0)]), 9.0);
        assert_eq!(weighted_median(vec![]), 0.0);
    }

    #[test]
    fn a_larger_run_prices_a_long_one_before_many_short_ones() {
        // Three runs of 1 MFLOP whose compute the timer blurs (their 1 ms
        // scaled 1000 times: 1 s) and one of 100 MFLOP at 50 ms: a 1 GFLOP
        // run takes 0.5 s, as the long one says.
        let history = History::of(vec![
            run("a", 1, 0.001, 1e6, true),
            run("a", 2, 0.001, 1e6, true),
            run("a", 3, 0.001, 1e6, true),
            run("a", 4, 0.05, 1e8, true),
        ]);
        let e = history.estimate("a", "cpu", &work(1e9, 0), |_| 0.0).unwrap();
        assert!((e.seconds - 0.5).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn each_run_gives_back_its_own_fixed_cost_where_it_grows_with_the_tokens() {
        // 1 GFLOP over 1000 tokens in 1 s, of which 0.1 s + 0.1 ms a token
        // (0.2 s) is not compute; now ten times the tokens and FLOPs.
        let history = History::of(vec![run("a", 1, 1.0, 1e9, true)]);
        let longer = work(1e10, 0);
        let fixed = |tokens: f64| 0.1 + 1e-4 * tokens;
        let e = history.estimate("a", "cpu", &longer, fixed).unwrap();
        // 1.1 s fixed + 0.8 s × 10: taking this run's 1.1 s from the earlier
        // run's 1 s would price it at its fixed cost alone.
        assert!((e.seconds - 9.1).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn runs_that_shared_the_machine_price_time_when_there_are_no_others_and_say_so() {
        let history = History::of(vec![run("a", 1, 4.0, 1e9, false)]);
        let e = history.estimate("a", "cpu", &work(1e9, 0), |_| 0.0).unwrap();
        assert_eq!(e.seconds, 4.0);
        assert!(e.seconds_source.contains("beside other instances"), "{e:?}");
        // Its peak was the process's, with what ran beside it.
        assert!(e.peak.is_none());
    }

    #[test]
    fn only_the_latest_five_runs_count() {
        let mut runs: Vec<PastRun> = (0..5).map(|t| run("a", 10 + t, 2.0, 1e9, true)).collect();
        runs.extend((0..5).map(|t| run("a", t, 50.0, 1e9, true)));
        let history = History::of(runs);
        assert_eq!(
            history.estimate("a", "cpu", &work(1e9, 0), |_| 0.0).unwrap().seconds,
            2.0
        );
    }
}
