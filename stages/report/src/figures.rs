//! Inline SVG figures drawn with plotters: training curves (loss, learning
//! rate, tokens/s, validation perplexity per language, variants of a stage
//! overlaid) from metrics.parquet, and code-switching rates as bars.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt64Type};
use babelflow_stage::{InputItem, StageError};
use plotters::prelude::*;

use crate::{source_name, stats_of};

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Figure {
    pub caption: String,
    pub svg: String,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn draw_error(e: impl std::fmt::Display) -> StageError {
    StageError::failed(format!("drawing a figure: {e}"))
}

/// A line chart as an SVG string.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<String, StageError> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all.filter(|p| p.0.is_finite() && p.1.is_finite()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(draw_error)?;
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(draw_error)?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .draw()
                .map_err(draw_error)?;
        }
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// A bar chart (values 0–1) as an SVG string.
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<String, StageError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..1.0)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .y_desc(y_label)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(draw_error)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
                Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v)],
                    PALETTE[0].filled(),
                )
            }))
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(svg)
}

/// One row of a training metrics.parquet: (step, tokens, metric, lang, value).
pub type MetricRow = (u64, u64, String, String, f64);

/// The rows of a training metrics.parquet.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRow>, StageError> {
    let bad = |m: String| StageError::input(path, None, m);
    let reader = babelflow_corpus::parquet_in::open(path, 8192).map_err(|e| bad(format!("not a Parquet file: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |n: &str| batch.column_by_name(n).ok_or_else(|| bad(format!("no column `{n}`")));
        let step = column("step")?.as_primitive_opt::<UInt64Type>().cloned();
        let tokens = column("tokens")?.as_primitive_opt::<UInt64Type>().cloned();
        let text = |n: &str| column(n).map(|c| babelflow_corpus::parquet_in::to_utf8(c).ok().flatten());
        let metric = text("metric")?;
        let lang = text("lang")?;
        let value = column("value")?.as_primitive_opt::<Float64Type>().cloned();
        let (Some(step), Some(tokens), Some(metric), Some(lang), Some(value)) = (step, tokens, metric, lang, value)
        else {
            return Err(bad(
                "not a training metrics table (step, tokens, metric, lang, value)".into()
            ));
        };
        for r in 0..batch.num_rows() {
            rows.push((
                step.value(r),
                tokens.value(r),
                metric.value(r).to_string(),
                lang.value(r).to_string(),
                value.value(r),
            ));
        }
    }
    Ok(rows)
}

/// Training curves, one figure per (training stage, quantity); the
/// instances of a stage (its variants) are overlaid.
pub fn training(items: &[InputItem]) -> Result<Vec<Figure>, StageError> {
    let mut by_stage: BTreeMap<String, Vec<(String, Vec<MetricRow>)>> = BTreeMap::new();
    for item in items {
        let metrics = item.path.with_file_name("metrics.parquet");
        if !metrics.is_file() {
            continue;
        }
        let name = source_name(item);
        let stage = name.split('@').next().unwrap_or(&name).to_string();
        by_stage.entry(stage).or_default().push((name, read_metrics(&metrics)?));
    }
    let mut figures = Vec::new();
    for (stage, variants) in &by_stage {
        let curve = |metric: &str, per_lang: bool| -> Vec<Series> {
            let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for (name, rows) in variants {
                for (_, tokens, _, lang, value) in rows.iter().filter(|r| r.2 == metric) {
                    let key = match (per_lang, variants.len() > 1) {
                        (true, true) => format!("{name} {lang}"),
                        (true, false) => lang.clone(),
                        (false, _) => name.clone(),
                    };
                    out.entry(key).or_default().push((*tokens as f64, *value));
                }
            }
            out.into_iter().map(|(name, points)| Series { name, points }).collect()
        };
        for (metric, label, per_lang) in [
            ("loss", "training loss", false),
            ("val_ppl", "held-out perplexity", true),
            ("lr", "learning rate", false),
            ("tokens_per_s", "tokens/s", false),
        ] {
            let series = curve(metric, per_lang);
            if series.iter().all(|s| s.points.is_empty()) {
                continue;
            }
            let title = format!("{stage}: {label}");
            figures.push(Figure {
                svg: line_chart(&title, "tokens seen", label, &series)?,
                caption: title,
            });
        }
    }
    Ok(figures)
}

/// Code-switching rate per language, from `respond` stats.
pub fn code_switching(items: &[InputItem]) -> Result<Vec<Figure>, StageError> {
    let mut bars = Vec::new();
    for item in items {
        let s = stats_of(item)?;
        if !s["scores"].is_string() {
            continue; // not a respond stage
        }
        for (lang, v) in s["per_lang"].as_object().into_iter().flatten() {
            if let Some(rate) = v["code_switch_rate"].as_f64() {
                bars.push((lang.clone(), rate));
            }
        }
    }
    if bars.is_empty() {
        return Ok(Vec::new());
    }
    bars.sort_by(|a, b| a.0.cmp(&b.0));
    let title = "Code-switching: share of responses that mix languages".to_string();
    Ok(vec![Figure {
        svg: bar_chart(&title, "rate", &bars)?,
        caption: title,
    }])
}
