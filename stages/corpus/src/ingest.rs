//! The `ingest` kind: the user's pretraining text → clean corpus Parquet +
//! `stats.json` (documents and characters in and out, dropped per reason,
//! per-language counts).

use std::collections::BTreeMap;
use std::path::PathBuf;

use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde::Serialize;
use serde_json::Value;

use crate::clean::{clean_whitespace, Normalization};
use crate::dedup::{ExactDedup, NearDedup};
use crate::langid::{to_whatlang, LangId};
use crate::read::{expand_paths, field, for_each_record, Format, RecordError, Utf8Policy};
use crate::table::{StringTableWriter, CORPUS_COLUMNS};

pub struct Ingest;

const FORMATS: &[&str] = &[
    "auto",
    "text",
    "lines",
    "paragraphs",
    "jsonl",
    "json",
    "csv",
    "tsv",
    "parquet",
];

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "format",
        ParamType::Choice(FORMATS),
        r#""auto""#,
        "input format; `auto` picks by file extension, plain text by `text_unit`",
    ),
    ParamSpec::with_default(
        "text_unit",
        ParamType::Choice(&["file", "line", "paragraph"]),
        r#""paragraph""#,
        "for plain text: one document per file, per line, or per blank-line-separated paragraph",
    ),
    ParamSpec::with_default(
        "text_field",
        ParamType::Str,
        r#""text""#,
        "field (dotted path for nested JSON) or column holding the text",
    ),
    ParamSpec::optional(
        "id_field",
        ParamType::Str,
        "field holding a document id (default: file name and line)",
    ),
    ParamSpec::optional(
        "lang",
        ParamType::Str,
        "the corpus language (ISO 639-1, e.g. sw); also the expected language for `langid`",
    ),
    ParamSpec::optional(
        "lang_field",
        ParamType::Str,
        "field holding each document's language (overrides `lang`)",
    ),
    ParamSpec::with_default(
        "normalize",
        ParamType::Choice(&["none", "nfc", "nfkc"]),
        r#""nfc""#,
        "Unicode normalisation",
    ),
    ParamSpec::with_default(
        "clean_whitespace",
        ParamType::Bool,
        "true",
        "drop control characters, collapse spaces, trim lines",
    ),
    ParamSpec::with_default(
        "min_chars",
        ParamType::Int,
        "1",
        "drop documents shorter than this (characters, after cleaning)",
    )
    .non_negative(),
    ParamSpec::optional("max_chars", ParamType::Int, "drop documents longer than this").positive(),
    ParamSpec::with_default("dedup", ParamType::Bool, "true", "drop exact duplicates"),
    ParamSpec::optional(
        "near_dup_threshold",
        ParamType::Float,
        "drop near-duplicates (MinHash over 5-grams) at or above this Jaccard similarity, e.g. 0.8",
    )
    .between(0.0, 1.0),
    ParamSpec::with_default(
        "langid",
        ParamType::Bool,
        "false",
        "keep only documents identified as `lang` (needs `lang`)",
    ),
    ParamSpec::with_default(
        "langid_min_confidence",
        ParamType::Float,
        "0.5",
        "minimum identifier confidence to keep a document",
    )
    .between(0.0, 1.0),
    ParamSpec::with_default(
        "strict",
        ParamType::Bool,
        "false",
        "invalid UTF-8 is an error naming file and byte offset (else skipped and counted)",
    ),
    ParamSpec::with_default(
        "lenient",
        ParamType::Bool,
        "false",
        "skip and count malformed records and missing text fields instead of failing",
    ),
    ParamSpec::with_default(
        "max_doc_chars",
        ParamType::Int,
        "1000000",
        "split documents longer than this (characters, after cleaning) at the last paragraph break, line break or \
         space before the limit, into parts `<id>#1`, `<id>#2`, …; bounds the memory of train-tokenizer and \
         tokenize whatever the input (0: never split)",
    )
    .non_negative(),
    ParamSpec::with_default(
        "allow_empty",
        ParamType::Bool,
        "false",
        "let the stage succeed (with a warning) when no document is left; by default that is an error here, \
         not a puzzle at `mix` or `pretrain`",
    ),
];

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "files",
    required: true,
    many: true,
    doc: "files, globs or folders of text, JSONL/JSON, CSV/TSV or Parquet (.gz/.zst read transparently)",
}];

#[derive(Debug, Default, Serialize)]
struct LangCount {
    documents: u64,
    chars: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct IngestStats {
    files: u64,
    documents_in: u64,
    chars_in: u64,
    documents_out: u64,
    chars_out: u64,
    dropped: BTreeMap<String, u64>,
    /// Documents longer than `max_doc_chars`, and the parts they became.
    split_documents: u64,
    split_parts: u64,
    languages: BTreeMap<String, LangCount>,
}

fn count_drop(stats: &mut IngestStats, reason: &str) {
    *stats.dropped.entry(reason.to_string()).or_default() += 1;
}

impl StageKind for Ingest {
    fn name(&self) -> &'static str {
        "ingest"
    }
    fn code_version(&self) -> &'static str {
        // 2: near-duplicate shingles hashed with FNV-1a + SplitMix64 instead of blake3.
        // 3: one-permutation MinHash over a rolling 5-character window.
        // 4: documents over max_doc_chars are split; an empty result is an error.
        "4"
    }
    fn summary(&self) -> &'static str {
        "pretraining text (text, JSONL, CSV, Parquet; .gz/.zst) → clean corpus Parquet + stats.json"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["corpus.parquet".into(), "stats.json".into()]
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if params.bool("langid").unwrap_or(false) {
            match params.opt_str("lang").ok().flatten() {
                None => problems.push(("langid".into(), "needs `lang`, the language to keep".into())),
                Some(code) if to_whatlang(code).is_none() => problems.push((
                    "lang".into(),
                    format!("the language identifier (whatlang) has no model for `{code}`; set langid: false for this corpus"),
                )),
                _ => {}
            }
        }
        problems
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::ingest(ctx, &self.outputs(ctx.params))
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let text_unit = match p.str("text_unit")? {
            "file" => Format::TextFile,
            "line" => Format::TextLines,
            _ => Format::TextParagraphs,
        };
        let forced = match p.str("format")? {
            "text" => Some(Format::TextFile),
            "lines" => Some(Format::TextLines),
            "paragraphs" => Some(Format::TextParagraphs),
            "jsonl" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "tsv" => Some(Format::Tsv),
            "parquet" => Some(Format::Parquet),
            _ => None,
        };
        let text_field = p.str("text_field")?.to_string();
        let id_field = p.opt_str("id_field")?.map(str::to_string);
        let lang = p.opt_str("lang")?.unwrap_or("und").to_string();
        let lang_field = p.opt_str("lang_field")?.map(str::to_string);
        let normalization = Normalization::parse(p.str("normalize")?);
        let clean = p.bool("clean_whitespace")?;
        let min_chars = p.usize("min_chars")?;
        let max_chars = p.opt_usize("max_chars")?;
        let lenient = p.bool("lenient")?;
        let utf8 = Utf8Policy {
            strict: p.bool("strict")?,
        };
        let mut exact = p.bool("dedup")?.then(ExactDedup::default);
        let mut near = p.opt_f64("near_dup_threshold")?.map(NearDedup::new);
        let langid = p.bool("langid")?.then(LangId::default);
        let min_confidence = p.f64("langid_min_confidence")?;
        let max_doc_chars = p.usize("max_doc_chars")?;
        let allow_empty = p.bool("allow_empty")?;

        let paths: Vec<PathBuf> = ctx.input("files").iter().map(|i| i.path.clone()).collect();
        let files = expand_paths(&paths)?;
        let mut writer = StringTableWriter::create(&ctx.output("corpus.parquet"), &CORPUS_COLUMNS)?;
        let mut stats = IngestStats::default();

        for (file_no, path) in files.iter().enumerate() {
            ctx.check_cancelled()?;
            ctx.progress(file_no as u64, Some(files.len() as u64), &path.display().to_string());
            stats.files += 1;
            let format = forced.unwrap_or_else(|| Format::detect(path, text_unit));
            let source = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for_each_record(path, format, utf8, &mut |record| {
                stats.documents_in += 1;
                let record = match record {
                    Ok(r) => r,
                    Err(RecordError::InvalidUtf8) => {
                        count_drop(&mut stats, "invalid_utf8");
                        return Ok(());
                    }
                    Err(RecordError::Malformed { line, message }) => {
                        if lenient {
                            count_drop(&mut stats, "malformed");
                            return Ok(());
                        }
                        return Err(StageError::input(
                            path,
                            Some(line),
                            format!("{message} (set lenient: true to skip such records)"),
                        ));
                    }
                };
                let Some(text) = field(&record.fields, &text_field).and_then(Value::as_str) else {
                    if lenient {
                        count_drop(&mut stats, "missing_text");
                        return Ok(());
                    }
                    return Err(StageError::input(
                        path,
                        Some(record.line),
                        format!("record has no text field `{text_field}` (set text_field, or lenient: true to skip)"),
                    ));
                };
                stats.chars_in += text.chars().count() as u64;
                let mut text = normalization.apply(text);
                if clean {
                    text = clean_whitespace(&text);
                }
                let n_chars = text.chars().count();
                if text.trim().is_empty() {
                    count_drop(&mut stats, "empty");
                    return Ok(());
                }
                if n_chars < min_chars {
                    count_drop(&mut stats, "too_short");
                    return Ok(());
                }
                if max_chars.is_some_and(|m| n_chars > m) {
                    count_drop(&mut stats, "too_long");
                    return Ok(());
                }
                let doc_lang = lang_field
                    .as_deref()
                    .and_then(|f| field(&record.fields, f))
                    .and_then(Value::as_str)
                    .unwrap_or(&lang)
                    .to_string();
                if let Some(id) = &langid {
                    match id.detect(&text) {
                        Some((code, conf)) if code == doc_lang && conf >= min_confidence => {}
                        Some((code, _)) if code != doc_lang => {
                            count_drop(&mut stats, "wrong_language");
                            return Ok(());
                        }
                        _ => {
                            count_drop(&mut stats, "low_language_confidence");
                            return Ok(());
                        }
                    }
                }
                if let Some(d) = exact.as_mut() {
                    if !d.first_time(&text) {
                        count_drop(&mut stats, "duplicate");
                        return Ok(());
                    }
                }
                if let Some(d) = near.as_mut() {
                    if !d.first_time(&text) {
                        count_drop(&mut stats, "near_duplicate");
                        return Ok(());
                    }
                }
                let id = id_field
                    .as_deref()
                    .and_then(|f| field(&record.fields, f))
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| format!("{source}:{}", record.line));
                let parts = split_long(&text, max_doc_chars);
                if parts.len() > 1 {
                    stats.split_documents += 1;
                    stats.split_parts += parts.len() as u64;
                }
                for (k, part) in parts.iter().enumerate() {
                    let part_id = if parts.len() > 1 {
                        format!("{id}#{}", k + 1)
                    } else {
                        id.clone()
                    };
                    writer.push(&[&part_id, &doc_lang, part, &source])?;
                }
                stats.documents_out += parts.len() as u64;
                stats.chars_out += n_chars as u64;
                let per_lang = stats.languages.entry(doc_lang).or_default();
                per_lang.documents += parts.len() as u64;
                per_lang.chars += n_chars as u64;
                Ok(())
            })?;
        }
        let rows = writer.finish()?;
        if rows == 0 {
            let why = empty_reason(&stats, &paths);
            if !allow_empty {
                return Err(StageError::failed(format!(
                    "{why}; an empty corpus would only fail later, at `mix` or `pretrain` (set allow_empty: true to \
                     accept it)"
                )));
            }
            ctx.warn(&format!("the corpus is empty: {why} (allow_empty: true)"));
        }
        ctx.progress(files.len() as u64, Some(files.len() as u64), "done");
        ctx.write_json("stats.json", &stats)?;
        ctx.note("documents", rows);
        ctx.note("chars", stats.chars_out);
        ctx.log(&format!(
            "{} files: {} of {} documents kept, dropped {:?}",
            stats.files, stats.documents_out, stats.documents_in, stats.dropped
        ));
        Ok(())
    }
}

/// Why an ingest kept nothing, in the user's terms.
fn empty_reason(stats: &IngestStats, inputs: &[PathBuf]) -> String {
    if stats.files == 0 {
        let shown: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return format!("no input file was found in {}", shown.join(", "));
    }
    if stats.documents_in == 0 {
        return format!("the {} input file(s) hold no document", stats.files);
    }
    let dropped: Vec<String> = stats.dropped.iter().map(|(why, n)| format!("{n} {why}")).collect();
    format!(
        "no document is left: all {} read from {} file(s) were dropped ({})",
        stats.documents_in,
        stats.files,
        dropped.join(", ")
    )
}

/// `text` cut into parts of at most `max_chars` characters, each ending
/// before the last paragraph break, else line break, else space, within
/// the limit (a hard cut where there is none); the whitespace at a cut is
/// dropped. `max_chars == 0` never cuts.
pub fn split_long(text: &str, max_chars: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while max_chars > 0 && rest.chars().count() > max_chars {
        let limit = rest.char_indices().nth(max_chars).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..limit];
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|&at| at > 0).map(|at| (at, sep.len())));
        let (end, skip) = cut.unwrap_or((limit, 0));
        parts.push(&rest[..end]);
        rest = rest[end + skip..].trim_start();
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::split_long;

    #[test]
    fn long_documents_split_at_the_best_boundary_within_the_limit() {
        // (text, limit, parts)
        let cases: &[(&str, usize, &[&str])] = &[
            ("short", 10, &["short"]),
            ("short", 0, &["short"]),
            ("aaaa bbbb\n\ncccc dddd", 14, &["aaaa bbbb", "cccc dddd"]),
            // A line break wins over a later space: parts end where the text has its seams.
            ("aaaa\nbbbb cccc", 12, &["aaaa", "bbbb cccc"]),
            ("aaaa bbbb cccc", 10, &["aaaa bbbb", "cccc"]),
            ("abcdefghij", 4, &["abcd", "efgh", "ij"]),
            ("ééééé ééé", 6, &["ééééé", "ééé"]),
        ];
        for (text, limit, want) in cases {
            assert_eq!(split_long(text, *limit), *want, "{text:?} at {limit}");
        }
    }

    #[test]
    fn parts_are_never_longer_than_the_limit_and_lose_only_cut_whitespace() {
        let text = "word ".repeat(1000) + &"x".repeat(30);
        let parts = split_long(&text, 97);
        assert!(parts.iter().all(|p| p.chars().count() <= 97));
        let joined: String = parts.concat();
        let original: String = text.split_whitespace().collect();
        assert_eq!(joined.replace(' ', ""), original);
    }
}
