//! The `report` kind: report.md and a self-contained report.html built only
//! from the artifacts bound to it. A table whose artifacts are absent says
//! so; nothing is filled in.

mod evaluation;
mod extension;
pub mod figures;
mod run;
mod table;

use std::path::Path;
use std::sync::Arc;

use babelflow_stage::{InputItem, InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde_json::Value;
pub use table::{Cell, Table};

pub struct Report;

const PARAMS: &[ParamSpec] = &[ParamSpec::with_default(
    "title",
    ParamType::Str,
    r#""babelflow report""#,
    "heading of the report",
)];

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "corpus",
        required: false,
        many: true,
        doc: "stats.json of `ingest` instances (bind `corpus@x:stats.json`, or the whole stage)",
    },
    InputSpec {
        name: "tokens",
        required: false,
        many: true,
        doc: "stats.json of `tokenize` instances",
    },
    InputSpec {
        name: "training",
        required: false,
        many: true,
        doc: "stats.json of `pretrain` and `sft` instances",
    },
    InputSpec {
        name: "evaluation",
        required: false,
        many: true,
        doc: "stats.json of `perplexity`, `exam`, `respond` and `judge` instances",
    },
];

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![Arc::new(Report)]
}

fn read_json(path: &Path) -> Result<Value, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StageError::input(path, None, format!("not JSON: {e}")))
}

/// The stats.json of an input: the item itself, or `stats.json` beside it
/// (a bare reference binds the kind's first output).
fn stats_of(item: &InputItem) -> Result<Value, StageError> {
    let path = if item.path.file_name().is_some_and(|n| n == "stats.json") {
        item.path.clone()
    } else {
        item.path.with_file_name("stats.json")
    };
    read_json(&path)
}

/// The manifest of the artifact folder `dir`, when it has one.
fn manifest_in(dir: &Path) -> Option<Value> {
    read_json(&dir.join("manifest.json")).ok()
}

/// The manifest of the artifact an input comes from, when it has one.
fn manifest_of(item: &InputItem) -> Option<Value> {
    manifest_in(item.path.parent()?)
}

fn source_name(item: &InputItem) -> String {
    item.instance.clone().unwrap_or_else(|| item.path.display().to_string())
}

pub fn data_table(items: &[InputItem]) -> Result<Table, StageError> {
    let mut t = Table::new(
        "Data: documents and characters per language",
        &[
            "source",
            "language",
            "documents in",
            "documents kept",
            "characters kept",
            "dropped (reason: count)",
        ],
    );
    for item in items {
        let s = stats_of(item)?;
        let dropped = s["dropped"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let languages = s["languages"].as_object().cloned().unwrap_or_default();
        for (lang, counts) in &languages {
            t.rows.push(vec![
                Cell::Text(source_name(item)),
                Cell::Text(lang.clone()),
                Cell::from_json_u64(&s["documents_in"]),
                Cell::from_json_u64(&counts["documents"]),
                Cell::from_json_u64(&counts["chars"]),
                Cell::Text(if dropped.is_empty() {
                    "none".into()
                } else {
                    dropped.clone()
                }),
            ]);
        }
    }
    Ok(t)
}

pub fn fertility_table(items: &[InputItem]) -> Result<Table, StageError> {
    let mut t = Table::new(
        "Tokenizer fertility per language",
        &[
            "source",
            "language",
            "tokens",
            "tokens/char",
            "tokens/word",
            "tokens/byte",
            "byte-fallback share",
            "vocabulary",
        ],
    );
    t.note = Some(
        "Text tokens only (BOS/EOS excluded). Tokens per word is left out for languages written without spaces. \
         Rows are grouped by language, so the same text under the original and an extended vocabulary sit together."
            .into(),
    );
    let mut rows = Vec::new();
    for item in items {
        let s = stats_of(item)?;
        for (lang, f) in s["languages"].as_object().cloned().unwrap_or_default() {
            rows.push(vec![
                Cell::Text(source_name(item)),
                Cell::Text(lang),
                Cell::from_json_u64(&f["tokens"]),
                Cell::from_json_f64(&f["tokens_per_char"], 3),
                Cell::from_json_f64(&f["tokens_per_word"], 3),
                Cell::from_json_f64(&f["tokens_per_byte"], 3),
                Cell::from_json_f64(&f["byte_fallback_share"], 3),
                Cell::from_json_u64(&s["vocab_size"]),
            ]);
        }
    }
    // Stable: within a language, sources stay in the order they were bound.
    rows.sort_by_key(|r| r[1].render());
    t.rows = rows;
    Ok(t)
}

pub fn training_table(items: &[InputItem]) -> Result<Table, StageError> {
    let mut t = Table::new(
        "Training: held-out loss per language, before and after",
        &[
            "stage",
            "language",
            "loss before",
            "loss after",
            "perplexity before",
            "perplexity after",
        ],
    );
    t.note = Some("Token-level loss on held-out text of each language (natural log); perplexity = exp(loss).".into());
    for item in items {
        let s = stats_of(item)?;
        let start = s["validation_loss_start"].as_object().cloned().unwrap_or_default();
        for (lang, before) in &start {
            let after = &s["validation_loss_end"][lang.as_str()];
            let exp = |v: &Value| v.as_f64().map(|x| Cell::Float(x.exp(), 2)).unwrap_or(Cell::Missing);
            t.rows.push(vec![
                Cell::Text(source_name(item)),
                Cell::Text(lang.clone()),
                Cell::from_json_f64(before, 3),
                Cell::from_json_f64(after, 3),
                exp(before),
                exp(after),
            ]);
        }
        t.rows.push(vec![
            Cell::Text(source_name(item)),
            Cell::Text(format!(
                "train: {} steps, {} tokens",
                s["steps"].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                s["tokens"]
                    .as_u64()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into())
            )),
            Cell::Missing,
            Cell::from_json_f64(&s["final_loss"], 3),
            Cell::Missing,
            Cell::Text(format!(
                "{:.0} tokens/s on {}",
                s["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                s["backend"].as_str().unwrap_or("?")
            )),
        ]);
    }
    Ok(t)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{border:1px solid #ccc;padding:.25rem .6rem}\
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}\
td.missing,p.missing{color:#999}p.note{color:#555;font-size:.9rem}figure{margin:1rem 0}\
figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.9rem}@media print{body{margin:0}}";

impl StageKind for Report {
    fn name(&self) -> &'static str {
        "report"
    }
    fn code_version(&self) -> &'static str {
        "9"
    }
    fn summary(&self) -> &'static str {
        "report.md + self-contained report.html with the numbers of the bound artifacts"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["report.md".into(), "report.html".into()]
    }
    fn runs_with_missing_inputs(&self) -> bool {
        true
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let title = ctx.params.str("title")?;
        let corpus = ctx.input("corpus");
        let tokens = ctx.input("tokens");
        let training = ctx.input("training");
        let evaluation = ctx.input("evaluation");
        let mut all: Vec<&InputItem> = corpus.iter().chain(tokens).chain(training).chain(evaluation).collect();
        all.sort_by_key(|i| i.instance.clone());
        all.dedup_by_key(|i| i.instance.clone());
        let mut tables: Vec<Table> = run::missing_table(&ctx.missing).into_iter().collect();
        tables.extend([data_table(corpus)?, fertility_table(tokens)?, training_table(training)?]);
        tables.extend(evaluation::tables(evaluation, &ctx.upstream)?);
        tables.extend(extension::table(&ctx.upstream)?);
        tables.push(run::run_table(&ctx.upstream, &all));
        let mut figures = figures::training(training)?;
        figures.extend(figures::code_switching(evaluation)?);

        let mut md = format!("# {title}\n\n");
        let mut html = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            table::escape(title),
            table::escape(title)
        );
        for t in &tables {
            md.push_str(&t.markdown());
            html.push_str(&t.html());
        }
        if !figures.is_empty() {
            md.push_str("## Figures\n\nIn report.html:\n\n");
            html.push_str("<h2>Figures</h2>\n");
            for f in &figures {
                md.push_str(&format!("- {}\n", f.caption));
                html.push_str(&format!(
                    "<figure>{}<figcaption>{}</figcaption></figure>\n",
                    // Inline SVG in HTML needs no namespace declaration; without
                    // it the page holds no URL at all.
                    f.svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1),
                    table::escape(&f.caption)
                ));
            }
            md.push('\n');
        }
        html.push_str("</body>\n</html>\n");
        let write = |name: &str, text: &str| {
            let path = ctx.output(name);
            std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))
        };
        write("report.md", &md)?;
        write("report.html", &html)?;
        ctx.log(&format!(
            "report with {} tables and {} figures",
            tables.len(),
            figures.len()
        ));
        Ok(())
    }
}
