//! `babelflow calibrate`: measure this machine, store it for `plan --estimate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use babelflow::engine::calibrate;
use babelflow::engine::progress::Progress;
use babelflow::registry::Registry;
use babelflow::store::Store;
use babelflow_stage::CancelFlag;

use super::estimate::{duration, si};
use super::EXIT_ERROR;

pub fn calibrate(registry: &Registry, store: Option<PathBuf>, backend: &str) -> anyhow::Result<ExitCode> {
    let root = store
        .or_else(|| std::env::var_os("BABELFLOW_STORE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".babelflow"));
    let store = match Store::open(&root) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    // Before the header and the minute of work it announces.
    if let Err(e) = calibrate::can_calibrate(backend) {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    // Outside the store: a `run` on it meanwhile would clear its tmp/.
    let scratch = std::env::temp_dir().join(format!("babelflow-calibrate.{}", std::process::id()));
    println!("calibrating `{backend}`: training and scoring small LLaMAs at widths 64 to 1536 (about a minute)…");
    let result = calibrate::calibrate(
        registry,
        backend,
        calibrate::WIDTHS,
        std::env::current_exe().ok().as_deref(),
        &scratch,
        Arc::new(Progress::new()),
        &CancelFlag::new(),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let calibration = match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_ERROR));
        }
    };
    println!(
        "  width  train FLOP/s  AdamW ns/weight  forward FLOP/s  train time  scoring time  forward FLOP/s by rows a pass"
    );
    let mut spread = None;
    for m in &calibration.measured {
        if m.train_rates.len() > 1 {
            let slowest = m.train_rates.iter().copied().fold(f64::INFINITY, f64::min);
            let fastest = m.train_rates.iter().copied().fold(0.0, f64::max);
            spread = Some(format!(
                "  training at width {}: the median of {} runs, {}FLOP/s to {}FLOP/s ({:.0} % apart: the machine's speed varies; so do estimates priced by it)",
                m.rate.hidden_size,
                m.train_rates.len(),
                si(slowest),
                si(fastest),
                (fastest / slowest - 1.0) * 100.0
            ));
        }
        let by_rows: Vec<String> = m
            .rate
            .forward_by_rows
            .iter()
            .map(|r| format!("{}: {}", r.rows, si(r.flops_per_s)))
            .collect();
        println!(
            "  {:5}  {:>12}  {:>15.2}  {:>14}  {:>10}  {:>12}  {}",
            m.rate.hidden_size,
            si(m.rate.train_flops_per_s),
            m.rate.optimizer_seconds_per_update * 1e9,
            si(m.rate.forward_flops_per_s),
            duration(m.train_seconds),
            duration(m.score_seconds),
            by_rows.join(", ")
        );
    }
    if let Some(spread) = spread {
        println!("{spread}");
    }
    let t = &calibration.throughput;
    println!("  disk: {}B/s written", si(t.io_bytes_per_s));
    for (kind, seconds) in &t.overhead_s {
        let held = t.process_bytes.get(kind).map_or_else(String::new, |b| {
            format!(", {:.0} MiB held besides its work", *b as f64 / (1u64 << 20) as f64)
        });
        let per_token = t
            .overhead_per_token_s
            .get(kind)
            .map_or_else(String::new, |s| format!(" + {:.2} µs a token read", s * 1e6));
        println!(
            "  fixed cost of a `{kind}` instance: {}{per_token}{held}",
            duration(*seconds)
        );
    }
    match calibrate::save(store.root(), &calibration) {
        Ok(path) => {
            println!(
                "saved in {}; `babelflow plan RECIPE --estimate` now prices time with it",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}
