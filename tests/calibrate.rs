//! `babelflow calibrate`: this machine's throughput, measured with the real
//! stages, and `plan --estimate` pricing time with it.

mod common;

use std::sync::Arc;

use babelflow::engine::calibrate::{self, Width};
use babelflow::engine::device::Device;
use babelflow::engine::progress::Progress;
use babelflow::registry::Registry;
use babelflow_stage::CancelFlag;
use common::Project;

#[test]
fn calibration_measures_each_width_and_plan_prices_time_with_it() {
    let p = Project::new();
    let widths = [
        Width {
            hidden_size: 32,
            layers: 1,
            heads: 2,
            steps: 2,
        },
        Width {
            hidden_size: 64,
            layers: 1,
            heads: 4,
            steps: 2,
        },
    ];
    let calibration = calibrate::calibrate(
        &Registry::builtin(),
        "cpu",
        &widths,
        Some(&common::bin()),
        &p.path("scratch"),
        Arc::new(Progress::new()),
        &CancelFlag::new(),
    )
    .expect("calibration runs");
    let rates = &calibration.throughput.rates;
    assert_eq!(rates.iter().map(|r| r.hidden_size).collect::<Vec<_>>(), [32, 64]);
    for r in rates {
        assert!(r.train_flops_per_s > 1e6 && r.forward_flops_per_s > 1e6, "{r:?}");
        // The forward measured at three batch sizes: one sequence, 4, 16.
        let rows: Vec<usize> = r.forward_by_rows.iter().map(|f| f.rows).collect();
        assert_eq!(rows.len(), 3, "{r:?}");
        assert!(rows[0] < rows[1] && rows[1] < rows[2], "{rows:?}");
        assert!(r.forward_by_rows.iter().all(|f| f.flops_per_s > 1e6), "{r:?}");
        assert!(r.forward_by_rows.iter().any(|f| f.flops_per_s == r.forward_flops_per_s));
        // AdamW's update timed apart: between a tenth of a nanosecond and
        // a microsecond a weight (a few loads and stores each).
        let update = r.optimizer_seconds_per_update;
        assert!(update > 1e-10 && update < 1e-6, "{r:?}");
    }
    // The smallest width's training, under a second, is the median of its
    // run in the calibration and its runs in processes of their own; a
    // wider one's is its one run.
    let runs: Vec<usize> = calibration.measured.iter().map(|m| m.train_rates.len()).collect();
    assert_eq!(runs, [6, 1]);
    let smallest = &calibration.measured[0];
    let mut sorted = smallest.train_rates.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(
        smallest.rate.train_flops_per_s,
        (sorted[2] + sorted[3]) / 2.0,
        "{sorted:?}"
    );
    assert_eq!(
        calibration.measured[1].rate.train_flops_per_s,
        calibration.measured[1].train_rates[0]
    );
    assert!(calibration.throughput.io_bytes_per_s > 1e6);
    assert!(calibration.throughput.overhead_s.contains_key("pretrain"));
    // Scoring's cost besides its passes: fixed, and per token read (fitted over the three batch sizes).
    assert!(calibration.throughput.overhead_s.contains_key("perplexity"));
    assert!(calibration.throughput.overhead_per_token_s.contains_key("perplexity"));
    // What each kind's process holds besides its work, measured in a process of its own.
    for kind in ["pretrain", "perplexity", "exam", "respond"] {
        let held = calibration.throughput.process_bytes.get(kind).copied().unwrap_or(0);
        assert!(held > 1 << 20 && held < 1 << 30, "{kind}: {held}");
    }

    let store = p.path("store");
    std::fs::create_dir_all(&store).unwrap();
    calibrate::save(&store, &calibration).unwrap();
    let host = Device::this_machine("cpu", &store);
    let read = host.throughput.expect("read back from calibration.json");
    assert_eq!(read.source, calibration.throughput.source);
    for (a, b) in read.rates.iter().zip(rates) {
        assert!(
            (a.train_flops_per_s / b.train_flops_per_s - 1.0).abs() < 1e-9,
            "{a:?} {b:?}"
        );
        assert_eq!(a.forward_by_rows.len(), b.forward_by_rows.len());
    }

    // The quickstart priced on it: every estimated instance has a time.
    let recipe = common::repo_root().join("pipelines/quickstart.yaml");
    let plan = p.plan(
        recipe.to_str().unwrap(),
        &["--estimate", "--store", store.to_str().unwrap()],
    );
    let pretrain = common::estimate_of(&plan, "pretrain");
    assert!(pretrain["seconds"].as_f64().unwrap() > 0.0, "{pretrain:#}");
    assert!(plan["estimate"]["totals"]["seconds"].as_f64().unwrap() > 0.0);
}

/// A backend this build lacks is said to be missing, with what the build
/// has, before anything runs; not blamed on the calibration's own recipe.
#[test]
fn calibrating_a_backend_this_build_lacks_says_so_and_what_it_has() {
    let p = Project::new();
    let compiled = Registry::builtin().backends().to_vec();
    let missing = ["cuda", "vulkan", "wgpu"]
        .into_iter()
        .find(|b| !compiled.contains(b))
        .expect("a build without cuda (it cannot build offline)");
    let store = p.path("store");
    let out = p.run(&["calibrate", "--backend", missing, "--store", store.to_str().unwrap()]);
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("backend `{missing}` is not available")),
        "{text}"
    );
    assert!(
        text.contains(&format!("this build has: {}", compiled.join(", "))),
        "{text}"
    );
    assert!(!text.contains("a babelflow bug"), "{text}");
    assert!(!text.contains("calibrating"), "announced work it cannot do: {text}");
    assert!(!store.join("calibration.json").exists());
}
