//! Corpus sizes at plan time (`plan --estimate`): `ingest` counts its input
//! files' bytes and converts them to characters at the rate measured on
//! each file's first 64 KiB (Hindi takes about three bytes a character,
//! English one); `split` hands each side its share.

use std::io::Read;
use std::path::Path;

use babelflow_stage::estimate::{Basis, Count, Facts, PlannedInput};
use babelflow_stage::{Estimate, EstimateContext, StageError};

use crate::read_corpus_head;

/// Bytes of each file read to learn its characters per byte.
const SAMPLE_BYTES: u64 = 64 * 1024;

/// Characters in the text files under `path` (a file or a folder), from
/// their sizes and a sample of each; `None` for anything that is not text.
fn file_chars(path: &Path) -> Option<f64> {
    if path.is_dir() {
        let mut total = 0.0;
        for entry in std::fs::read_dir(path).ok()? {
            total += file_chars(&entry.ok()?.path())?;
        }
        return Some(total);
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !matches!(extension, "txt" | "text" | "md" | "jsonl" | "json") {
        return None;
    }
    let size = std::fs::metadata(path).ok()?.len();
    let mut sample = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(SAMPLE_BYTES)
        .read_to_end(&mut sample)
        .ok()?;
    let text = String::from_utf8_lossy(&sample);
    let rate = text.chars().count() as f64 / sample.len().max(1) as f64;
    Some(size as f64 * rate)
}

/// `ingest`: the characters of its text files (JSON fields included, an overestimate).
pub fn ingest(ctx: &EstimateContext, outputs: &[String]) -> Estimate {
    let mut total = 0.0;
    for item in ctx.input("files") {
        let Some(chars) = item.path.as_deref().and_then(file_chars) else {
            return Estimate::default();
        };
        total += chars;
    }
    let chars = Count::new(
        total,
        Basis::Derived,
        "file sizes × characters per byte of their first 64 KiB, before cleaning and dedup",
    );
    let mut estimate = Estimate::default();
    estimate.outputs.insert(
        outputs[0].clone(),
        Facts {
            chars: Some(chars),
            ..Facts::default()
        },
    );
    estimate
}

/// `split`: each side's share of the table's characters.
pub fn split(ctx: &EstimateContext) -> Estimate {
    let mut estimate = Estimate::default();
    // The upstream estimate's, else counted in the table when it exists.
    let Some(chars) = ctx
        .input("table")
        .first()
        .and_then(|t| text_chars(std::slice::from_ref(t), 0))
    else {
        return estimate;
    };
    let (Ok(validation), Ok(test)) = (ctx.params.f64("validation"), ctx.params.f64("test")) else {
        return estimate;
    };
    for (side, share) in [
        ("train", 1.0 - validation - test),
        ("validation", validation),
        ("test", test),
    ] {
        estimate.outputs.insert(
            format!("{side}.parquet"),
            Facts {
                chars: Some(chars.scaled(share, Basis::Derived, format!("{share:.2} of the rows"))),
                ..Facts::default()
            },
        );
    }
    estimate
}

/// Characters of text inputs: counted in the tables that exist (at most
/// `max_docs` documents per language; 0: all), else the upstream estimate.
pub fn text_chars(texts: &[PlannedInput], max_docs: usize) -> Option<Count> {
    let mut total = 0.0;
    let mut basis = Basis::Measured;
    let mut how = Vec::new();
    for text in texts {
        if let Some(path) = &text.path {
            total += corpus_chars(path, max_docs).ok()? as f64;
            how.push("counted".to_string());
        } else {
            let chars = text.facts.chars.as_ref()?;
            total += chars.value;
            basis = basis.max(chars.basis);
            // An upstream count read as characters already ("characters
            // counted"): said once, not "characters characters …".
            how.push(chars.how.strip_prefix("characters ").unwrap_or(&chars.how).to_string());
        }
    }
    how.dedup();
    Some(Count::new(total, basis, format!("characters {}", how.join("; "))))
}

/// Documents of a table read to count its characters; a larger table's
/// count is scaled up by its row count (from the Parquet footer), so a plan
/// never reads a whole pretraining corpus.
const COUNTED_ROWS: usize = 20_000;

/// Characters in a corpus table, at most `max_docs` documents per language
/// (0: all); past [`COUNTED_ROWS`] rows, extrapolated from those read.
pub fn corpus_chars(path: &Path, max_docs: usize) -> Result<u64, StageError> {
    let mut per_lang = std::collections::BTreeMap::<String, (usize, u64)>::new();
    let read = read_corpus_head(path, COUNTED_ROWS, &mut |doc| {
        let (docs, chars) = per_lang.entry(doc.lang).or_default();
        if max_docs == 0 || *docs < max_docs {
            *docs += 1;
            *chars += doc.text.chars().count() as u64;
        }
        Ok(())
    })?;
    let counted: u64 = per_lang.values().map(|(_, c)| c).sum();
    let total_rows = crate::parquet_in::table_rows(path).map(|rows| rows as f64);
    Ok(match total_rows {
        Some(rows) if max_docs == 0 && rows > read as f64 => (counted as f64 * rows / read.max(1) as f64) as u64,
        _ => counted,
    })
}

/// `ingest-choice`: its questions (every split) and their characters,
/// read from the CSV files.
pub fn ingest_choice(ctx: &EstimateContext) -> Estimate {
    let paths: Option<Vec<std::path::PathBuf>> = ctx.input("files").iter().map(|i| i.path.clone()).collect();
    let Some(paths) = paths else {
        return Estimate::default();
    };
    let format = ctx.params.str("format").unwrap_or("auto");
    let mut rows = crate::choice::Rows::default();
    let files = crate::read::expand_paths(&paths).ok();
    for path in files.into_iter().flatten() {
        if crate::choice::read_file(&path, format, &mut rows).is_err() {
            return Estimate::default();
        }
    }
    let chars: usize = rows
        .question
        .iter()
        .zip(&rows.choices)
        .map(|(q, c)| q.chars().count() + c.iter().map(|c| c.chars().count()).sum::<usize>())
        .sum();
    let facts = Facts {
        rows: Some(Count::new(
            rows.id.len() as f64,
            Basis::Measured,
            "questions of every split",
        )),
        chars: Some(Count::new(chars as f64, Basis::Measured, "questions and choices")),
        ..Facts::default()
    };
    Estimate {
        outputs: [("questions.parquet".to_string(), facts)].into(),
        ..Estimate::default()
    }
}
