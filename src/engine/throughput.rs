//! A machine's measured speed: FLOP/s by model width (and, for a forward
//! pass, by rows a pass multiplies), the optimizer's update per weight, and
//! what each kind of instance costs besides its FLOPs, as `babelflow
//! calibrate` stores it and the estimates read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One process's FLOP/s at one model width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// The models' hidden size this was measured at (0: any).
    pub hidden_size: usize,
    /// FLOP/s of training steps (forward + backward + optimizer, validation included).
    pub train_flops_per_s: f64,
    /// FLOP/s of forward-only passes (evaluation), at the calibration's
    /// usual batch.
    pub forward_flops_per_s: f64,
    /// Forward FLOP/s by rows a pass multiplies (sequences × positions),
    /// ascending: one sequence of a few tokens runs at a fraction of what a
    /// wide batch does. Empty: `forward_flops_per_s` at any size.
    #[serde(default)]
    pub forward_by_rows: Vec<RowsRate>,
    /// Seconds of the optimizer's update per weight it updates, measured
    /// apart from the training steps' FLOPs (which `train_flops_per_s` then
    /// excludes). 0: inside `train_flops_per_s` (a documented device's
    /// utilisation, a calibration made before it was measured).
    #[serde(default)]
    pub optimizer_seconds_per_update: f64,
}

/// Forward FLOP/s measured with passes of `rows` rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowsRate {
    pub rows: usize,
    pub flops_per_s: f64,
}

/// log-log interpolation of `y` at `x` between points sorted by x, the
/// nearest end's `y` outside them.
fn between(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let (first, last) = (points.first()?, points.last()?);
    if x <= first.0 || points.len() == 1 {
        return Some(first.1);
    }
    if x >= last.0 {
        return Some(last.1);
    }
    let upper = points.iter().position(|p| p.0 >= x)?;
    let (a, b) = (points[upper - 1], points[upper]);
    let f = (x.ln() - a.0.ln()) / (b.0.ln() - a.0.ln());
    Some((a.1.ln() + f * (b.1.ln() - a.1.ln())).exp())
}

impl Rate {
    /// Forward FLOP/s at passes of `rows` rows (0: unknown, the usual batch's).
    pub(crate) fn forward_at(&self, rows: usize) -> f64 {
        let points: Vec<(f64, f64)> = self
            .forward_by_rows
            .iter()
            .map(|r| (r.rows as f64, r.flops_per_s))
            .collect();
        match rows {
            0 => self.forward_flops_per_s,
            rows => between(&points, rows as f64).unwrap_or(self.forward_flops_per_s),
        }
    }
}

/// Throughput of one process, and where the figure came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// By width, ascending: small models reach a smaller share of the
    /// machine's peak, so a rate is read at the model's width (log-log
    /// between the widths measured, the nearest one outside them).
    pub rates: Vec<Rate>,
    /// Bytes/s of reading and writing model folders.
    pub io_bytes_per_s: f64,
    /// Seconds an instance of a kind costs besides its FLOPs and bytes
    /// (starting, reading the tokenizer and data, writing stats), by kind.
    #[serde(default)]
    pub overhead_s: BTreeMap<String, f64>,
    /// Seconds per token an instance of a kind spends besides its FLOPs
    /// (reading and tokenizing the text it scores), by kind.
    #[serde(default)]
    pub overhead_per_token_s: BTreeMap<String, f64>,
    /// Resident memory of a babelflow process besides an instance's work
    /// (the binary, its libraries, the tokenizer, the data, the allocator's),
    /// by kind, measured on this machine at the smallest width.
    #[serde(default)]
    pub process_bytes: BTreeMap<String, u64>,
    /// "babelflow calibrate on this machine, 2026-12-06", or
    /// "documented peak × 40 % assumed utilisation".
    pub source: String,
}

impl Throughput {
    /// (train, forward) FLOP/s at `hidden_size`, the forward's at passes of
    /// `rows` rows (0: the calibration's usual batch).
    pub fn at(&self, hidden_size: usize, rows: usize) -> Option<(f64, f64)> {
        let width = |r: &Rate| r.hidden_size as f64;
        let train: Vec<(f64, f64)> = self.rates.iter().map(|r| (width(r), r.train_flops_per_s)).collect();
        let forward: Vec<(f64, f64)> = self.rates.iter().map(|r| (width(r), r.forward_at(rows))).collect();
        Some((
            between(&train, hidden_size as f64)?,
            between(&forward, hidden_size as f64)?,
        ))
    }

    /// Seconds of the optimizer's update per weight at `hidden_size`
    /// (log-log between the widths measured; 0 where any width has none).
    pub fn optimizer_at(&self, hidden_size: usize) -> f64 {
        if self.rates.iter().any(|r| r.optimizer_seconds_per_update <= 0.0) {
            return 0.0;
        }
        let points: Vec<(f64, f64)> = self
            .rates
            .iter()
            .map(|r| (r.hidden_size as f64, r.optimizer_seconds_per_update))
            .collect();
        between(&points, hidden_size as f64).unwrap_or(0.0)
    }

    /// The cost of an instance of `kind` besides its FLOPs and checkpoint
    /// bytes, for `tokens` (`sft` costs what `pretrain` does).
    pub(crate) fn overhead(&self, kind: &str, tokens: f64) -> f64 {
        let fixed = self.overhead_s.get(like(kind)).copied().unwrap_or(0.0);
        fixed + tokens * self.overhead_per_token_s.get(like(kind)).copied().unwrap_or(0.0)
    }

    /// What a process running `kind` holds besides its work (`sft`: as `pretrain`).
    pub fn process_bytes(&self, kind: &str) -> u64 {
        let known = self.process_bytes.get(like(kind));
        // A kind not measured: the least any kind holds.
        known
            .copied()
            .unwrap_or_else(|| self.process_bytes.values().copied().min().unwrap_or(0))
    }
}

/// The kind calibrated in `kind`'s place: `sft` trains as `pretrain` does.
fn like(kind: &str) -> &str {
    if kind == "sft" {
        "pretrain"
    } else {
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_read_at_the_models_width_between_the_widths_measured() {
        let rate = |hidden_size, flops| Rate {
            hidden_size,
            train_flops_per_s: flops,
            forward_flops_per_s: 2.0 * flops,
            forward_by_rows: Vec::new(),
            optimizer_seconds_per_update: 0.0,
        };
        let t = Throughput {
            rates: vec![rate(64, 1e9), rate(256, 16e9)],
            io_bytes_per_s: 1e9,
            overhead_s: [("pretrain".to_string(), 2.0)].into(),
            overhead_per_token_s: BTreeMap::new(),
            process_bytes: [("pretrain".to_string(), 30), ("exam".to_string(), 50)].into(),
            source: "test".into(),
        };
        assert_eq!(t.at(32, 0), Some((1e9, 2e9)));
        assert_eq!(t.at(1024, 0), Some((16e9, 32e9)));
        // Halfway in log width is halfway in log rate: 4 GFLOP/s at 128.
        let (train, forward) = t.at(128, 0).unwrap();
        assert!(
            (train - 4e9).abs() < 1.0 && (forward - 8e9).abs() < 1.0,
            "{train} {forward}"
        );
        assert_eq!((t.overhead("sft", 1e6), t.overhead("perplexity", 1e6)), (2.0, 0.0));
        assert_eq!((t.process_bytes("sft"), t.process_bytes("respond")), (30, 30));
    }

    #[test]
    fn a_forward_rate_is_read_at_the_passes_rows_then_at_the_width() {
        let rows = |points: &[(usize, f64)]| {
            points
                .iter()
                .map(|&(rows, flops_per_s)| RowsRate { rows, flops_per_s })
                .collect()
        };
        let t = Throughput {
            rates: vec![
                Rate {
                    hidden_size: 64,
                    train_flops_per_s: 1e9,
                    forward_flops_per_s: 2e9,
                    forward_by_rows: rows(&[(100, 1e9), (400, 4e9)]),
                    optimizer_seconds_per_update: 0.0,
                },
                Rate {
                    hidden_size: 256,
                    train_flops_per_s: 1e9,
                    forward_flops_per_s: 2e9,
                    forward_by_rows: rows(&[(100, 4e9), (400, 16e9)]),
                    optimizer_seconds_per_update: 0.0,
                },
            ],
            io_bytes_per_s: 1e9,
            overhead_s: BTreeMap::new(),
            overhead_per_token_s: [("perplexity".to_string(), 1e-3)].into(),
            process_bytes: BTreeMap::new(),
            source: "test".into(),
        };
        let forward = |width, rows| t.at(width, rows).unwrap().1;
        // Rows unknown: the usual batch's rate.
        assert_eq!(forward(64, 0), 2e9);
        // Below and above the rows measured: the nearest.
        assert_eq!((forward(64, 10), forward(64, 4000)), (1e9, 4e9));
        // Halfway in log rows, then halfway in log width: 2 and 8, then 4 GFLOP/s.
        assert!((forward(64, 200) - 2e9).abs() < 1.0);
        assert!((forward(128, 200) - 4e9).abs() < 1.0, "{}", forward(128, 200));
        // An older calibration without rows reads as before.
        let old: Rate =
            serde_json::from_str(r#"{"hidden_size": 64, "train_flops_per_s": 1e9, "forward_flops_per_s": 3e9}"#)
                .unwrap();
        assert_eq!(old.forward_at(50), 3e9);
        // Scoring 1 000 tokens costs 1 ms each besides its FLOPs.
        assert_eq!(t.overhead("perplexity", 1000.0), 1.0);
    }
}
