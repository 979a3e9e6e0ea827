//! "Vocabulary extension: which init": for every further-pretraining run
//! that starts from a `resize-vocab` model (directly, or through earlier
//! pretraining such as a new-rows-first phase), its held-out bits per
//! character before and after, beside the original vocabulary's, and the
//! training tokens it needed to get back to the original vocabulary's level.
//! Every number comes from the same measure, the runs' validation curves
//! (`val_bits_per_char` in metrics.parquet), so the columns compare.

use std::collections::BTreeMap;
use std::path::Path;

use babelflow_stage::{StageError, Upstream};
use serde_json::Value;

use crate::figures::read_metrics;
use crate::table::{Cell, Table};
use crate::{manifest_in, read_json};

/// Bits per character are shown to three decimals: a run within half a
/// unit of the original vocabulary's figure is back at it (a thousandth is
/// below what another seed moves; without this, a curve that starts 0.0002
/// above the figure "recovers" after one interpolated token).
const SHOWN_PRECISION: f64 = 0.0005;

/// Per language, `(training tokens seen, bits per character)` by step.
type Curves = BTreeMap<String, Vec<(f64, f64)>>;

/// The validation curves of a training run's metrics.parquet.
fn curves(dir: &Path) -> Result<Curves, StageError> {
    let mut out = Curves::new();
    for (_, tokens, metric, lang, value) in read_metrics(&dir.join("metrics.parquet"))? {
        if metric == "val_bits_per_char" {
            out.entry(lang).or_default().push((tokens as f64, value));
        }
    }
    Ok(out)
}

/// Training tokens at which `curve` first reaches `target` or below,
/// interpolated linearly between the two evaluations around the crossing;
/// `None` when it never does.
pub fn tokens_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 <= target {
        return Some(first.0);
    }
    curve.windows(2).find(|w| w[1].1 <= target).map(|w| {
        let ((t0, b0), (t1, b1)) = (w[0], w[1]);
        t0 + (b0 - target) / (b0 - b1) * (t1 - t0)
    })
}

/// The instance a training or resize-vocab artifact started from.
fn model_input(dir: &Path) -> Option<String> {
    manifest_in(dir)?["inputs"]["model"][0]["instance"]
        .as_str()
        .map(str::to_string)
}

/// One pretraining run: what it started from, its tokens and its curves.
struct Run {
    from: String,
    tokens: f64,
    curves: Curves,
}

/// How a resized model's new rows started: the init, and the rows each
/// rule made (stats.json of resize-vocab; older artifacts have only the
/// init in their manifest's params).
fn init_of(dir: &Path) -> (String, String) {
    let stats = read_json(&dir.join("stats.json")).unwrap_or(Value::Null);
    let init = stats["init"]
        .as_str()
        .map(str::to_string)
        .or_else(|| Some(manifest_in(dir)?["params"]["init"].as_str()?.to_string()))
        .unwrap_or_else(|| "?".into());
    let made_by = stats["new_rows_by"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(rule, n)| format!("{rule}: {}", n.as_u64().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    (init, made_by)
}

/// The table, or `None` when no pretraining run of this report starts from
/// a resized model.
pub fn table(upstream: &[Upstream]) -> Result<Option<Table>, StageError> {
    let kind_of: BTreeMap<&str, (&str, Option<&Path>)> = upstream
        .iter()
        .map(|u| (u.instance.as_str(), (u.kind.as_str(), u.artifact.as_deref())))
        .collect();
    let mut runs: BTreeMap<String, Run> = BTreeMap::new();
    for u in upstream.iter().filter(|u| u.kind == "pretrain") {
        let Some(dir) = u.artifact.as_deref() else { continue };
        let (Some(from), Ok(stats)) = (model_input(dir), read_json(&dir.join("stats.json"))) else {
            continue;
        };
        let run = Run {
            from,
            tokens: stats["tokens"].as_f64().unwrap_or(0.0),
            curves: curves(dir)?,
        };
        runs.insert(u.instance.clone(), run);
    }

    let mut t = Table::new(
        "Vocabulary extension: which init",
        &[
            "language",
            "init",
            "training",
            "original vocabulary (bits / char)",
            "extended, untrained",
            "after training",
            "Δ vs original",
            "tokens to recover",
            "new rows by",
        ],
    );
    t.note = Some(
        "Held-out bits per character from the runs' validation curves (the same windows at every evaluation). \
         The original vocabulary's figure is its untrained model's, from a run that starts from the model that \
         was resized. Tokens to recover: the training tokens (through earlier phases, for a chain) after which \
         the extended model is back at that figure (to the table's precision), interpolated between evaluations; `not within N` when the \
         run ends above it."
            .into(),
    );
    let mut rows = Vec::new();
    for (name, run) in &runs {
        // Walk back through earlier pretraining to the resized model.
        let mut chain = vec![name.as_str()];
        let mut from = run.from.as_str();
        while let Some((earlier_name, earlier)) = runs.get_key_value(from) {
            chain.push(earlier_name.as_str());
            from = earlier.from.as_str();
            if chain.len() > runs.len() {
                break; // a cycle cannot happen in a DAG; never loop on a bad manifest
            }
        }
        let Some(("resize-vocab", Some(resized))) = kind_of.get(from).copied() else {
            continue;
        };
        chain.reverse();
        let (init, made_by) = init_of(resized);
        let original = model_input(resized);
        for (lang, own) in &run.curves {
            // The chain's curve, each phase after the tokens of the ones before.
            let mut offset = 0.0;
            let mut curve = Vec::new();
            for phase in &chain {
                let phase_run = &runs[*phase];
                if let Some(points) = phase_run.curves.get(lang) {
                    curve.extend(points.iter().map(|(tokens, bits)| (tokens + offset, *bits)));
                }
                offset += phase_run.tokens;
            }
            let reference = original.as_deref().and_then(|base| {
                runs.values()
                    .filter(|r| r.from == base)
                    .find_map(|r| r.curves.get(lang)?.first().map(|p| p.1))
            });
            let untrained = curve.first().map(|p| p.1);
            let after = own.last().map(|p| p.1);
            let recover = reference.map(|target| match tokens_to_reach(&curve, target + SHOWN_PRECISION) {
                Some(tokens) => Cell::Int(tokens.round() as u64),
                None => Cell::Text(format!("not within {}", curve.last().map_or(0, |p| p.0 as u64))),
            });
            rows.push(vec![
                Cell::Text(lang.clone()),
                Cell::Text(init.clone()),
                Cell::Text(chain.join(" → ")),
                reference.map_or(Cell::Missing, |v| Cell::Float(v, 3)),
                untrained.map_or(Cell::Missing, |v| Cell::Float(v, 3)),
                after.map_or(Cell::Missing, |v| Cell::Float(v, 3)),
                reference
                    .zip(after)
                    .map_or(Cell::Missing, |(r, a)| Cell::Float(a - r, 3)),
                recover.unwrap_or(Cell::Missing),
                Cell::Text(made_by.clone()),
            ]);
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    rows.sort_by_key(|r| {
        (
            r[0].render(),
            r[2].render().matches('→').count(),
            r[1].render(),
            r[2].render(),
        )
    });
    t.rows = rows;
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_to_recover_interpolate_between_the_evaluations_around_the_crossing() {
        let curve = [(0.0, 3.0), (100.0, 2.5), (200.0, 1.5), (300.0, 1.2)];
        assert_eq!(tokens_to_reach(&curve, 2.0), Some(150.0));
        assert_eq!(tokens_to_reach(&curve, 3.5), Some(0.0), "already there when untrained");
        assert_eq!(tokens_to_reach(&curve, 2.5), Some(100.0));
        assert_eq!(tokens_to_reach(&curve, 1.0), None, "never within the run");
        assert_eq!(tokens_to_reach(&[], 1.0), None);
    }
}
