//! The evaluation tables: perplexity and bits per character, exam
//! accuracy, response scores (chrF and code-switching), judge scores — one
//! table per instrument, a row per (evaluated model, language).

use std::collections::BTreeMap;

use babelflow_stage::{InputItem, StageError, Upstream};
use serde_json::Value;

use crate::table::{Cell, Table};
use crate::{source_name, stats_of};

fn f(v: &Value, digits: usize) -> Cell {
    Cell::from_json_f64(v, digits)
}

fn model_of(s: &Value) -> String {
    s["model"].as_str().unwrap_or("?").to_string()
}

/// Kinds whose output is a trained model: what "after" means in Table 2.
const TRAINING_KINDS: &[&str] = &["pretrain", "sft"];

/// One model's perplexity on one language.
struct Measured {
    model: String,
    lang: String,
    token_perplexity: Option<f64>,
    bits_per_char: Option<f64>,
}

/// The study's Table 2: per language, the untrained model's perplexity and
/// bits per character, then every trained model's, grouped by variant (the
/// model instance's label), with the change in bits per character — the
/// figure that compares across tokenizers. `None` unless the run record says
/// which evaluated models are untrained and which trained.
fn before_after(measured: &[Measured], upstream: &[Upstream]) -> Option<Table> {
    let kind_of: BTreeMap<&str, &str> = upstream
        .iter()
        .map(|u| (u.instance.as_str(), u.kind.as_str()))
        .collect();
    let trained = |m: &str| kind_of.get(m).map(|k| TRAINING_KINDS.contains(k));
    if !measured.iter().any(|m| trained(&m.model) == Some(false))
        || !measured.iter().any(|m| trained(&m.model) == Some(true))
    {
        return None;
    }
    let mut t = Table::new(
        "Before and after training, per language (as the study's Table 2)",
        &[
            "language",
            "model",
            "variant",
            "token perplexity",
            "bits / char",
            "Δ bits / char vs untrained",
            "Δ %",
        ],
    );
    t.note = Some(
        "Untrained: a model no training stage of this run produced (imported or initialised).          Rows are grouped by language, then by the model's variant label; Δ compares bits per character,          which stays comparable when the vocabulary was extended."
            .into(),
    );
    let variant = |m: &str| m.split_once('@').map(|(_, v)| v.to_string()).unwrap_or_default();
    let mut langs: Vec<&str> = measured.iter().map(|m| m.lang.as_str()).collect();
    langs.sort_unstable();
    langs.dedup();
    for lang in langs {
        let mut rows: Vec<&Measured> = measured
            .iter()
            .filter(|m| m.lang == lang && trained(&m.model).is_some())
            .collect();
        rows.sort_by_key(|m| (trained(&m.model), variant(&m.model), m.model.clone()));
        let reference = rows
            .iter()
            .find(|m| trained(&m.model) == Some(false))
            .and_then(|m| m.bits_per_char);
        for m in rows {
            let is_trained = trained(&m.model) == Some(true);
            let delta = match (is_trained, reference, m.bits_per_char) {
                (true, Some(r), Some(b)) => Some(b - r),
                _ => None,
            };
            t.rows.push(vec![
                Cell::Text(lang.to_string()),
                Cell::Text(if is_trained {
                    m.model.clone()
                } else {
                    format!("{} (untrained)", m.model)
                }),
                Cell::Text(variant(&m.model)),
                m.token_perplexity.map_or(Cell::Missing, |v| Cell::Float(v, 2)),
                m.bits_per_char.map_or(Cell::Missing, |v| Cell::Float(v, 3)),
                delta.map_or(Cell::Missing, |d| Cell::Float(d, 3)),
                match (delta, reference) {
                    (Some(d), Some(r)) if r != 0.0 => Cell::Float(100.0 * d / r, 1),
                    _ => Cell::Missing,
                },
            ]);
        }
    }
    Some(t)
}

/// Tables for every bound evaluation stats.json, grouped by instrument;
/// instruments with no bound stage get no table.
pub fn tables(items: &[InputItem], upstream: &[Upstream]) -> Result<Vec<Table>, StageError> {
    let mut measured = Vec::new();
    let mut ppl = Table::new(
        "Perplexity of held-out text",
        &[
            "stage",
            "model",
            "language",
            "token perplexity",
            "bits / char",
            "bits / byte",
            "tokens / char",
        ],
    );
    ppl.note = Some(
        "Token perplexity depends on the tokenizer (an extended vocabulary changes what a token is); \
         bits per character and per byte measure the same likelihood per unit of text and compare across tokenizers."
            .into(),
    );
    let mut exam = Table::new(
        "Multiple-choice exams",
        &[
            "stage",
            "model",
            "language / task",
            "questions",
            "accuracy (letters)",
            "accuracy (likelihood)",
        ],
    );
    exam.note = Some(
        "Letters: the answer letter's logit after `Answer:`; likelihood: each choice's log-likelihood per byte.".into(),
    );
    let mut respond = Table::new(
        "Generated responses",
        &[
            "stage",
            "model",
            "language",
            "responses",
            "chrF (reference-based)",
            "code-switch rate",
            "off-target letters",
        ],
    );
    respond.note = Some("chrF against the reference answers stands in for a judge when none is bound.".into());
    let mut judge = Table::new(
        "Judge scores (0–3; AVG is the plain mean of the five, as in the study's Table 1)",
        &[
            "stage",
            "language",
            "judged",
            "unparseable",
            "ACC",
            "F",
            "INFO",
            "LC",
            "H",
            "AVG",
        ],
    );
    for item in items {
        let s = stats_of(item)?;
        let stage = source_name(item);
        if let Some(per_lang) = s["per_lang"].as_object().filter(|_| s["max_len"].is_u64()) {
            for (lang, v) in per_lang {
                measured.push(Measured {
                    model: model_of(&s),
                    lang: lang.clone(),
                    token_perplexity: v["token_perplexity"].as_f64(),
                    bits_per_char: v["bits_per_char"].as_f64(),
                });
                ppl.rows.push(vec![
                    Cell::Text(stage.clone()),
                    Cell::Text(model_of(&s)),
                    Cell::Text(lang.clone()),
                    f(&v["token_perplexity"], 2),
                    f(&v["bits_per_char"], 3),
                    f(&v["bits_per_byte"], 3),
                    f(&v["tokens_per_char"], 3),
                ]);
            }
        } else if let Some(results) = s["results"].as_object() {
            for (task, v) in results {
                exam.rows.push(vec![
                    Cell::Text(stage.clone()),
                    Cell::Text(model_of(&s)),
                    Cell::Text(task.clone()),
                    Cell::from_json_u64(&v["questions"]),
                    f(&v["accuracy_letters"], 3),
                    f(&v["accuracy_likelihood"], 3),
                ]);
            }
        } else if s["judge"].is_string() {
            for (lang, v) in s["per_lang"].as_object().into_iter().flatten() {
                let mut row = vec![
                    Cell::Text(stage.clone()),
                    Cell::Text(lang.clone()),
                    Cell::from_json_u64(&v["judged"]),
                    Cell::from_json_u64(&v["unparseable"]),
                ];
                for key in [
                    "accuracy",
                    "fluency",
                    "informativeness",
                    "logical_coherence",
                    "harmlessness",
                    "avg",
                ] {
                    row.push(f(&v[key], 2));
                }
                judge.rows.push(row);
            }
        } else if let Some(per_lang) = s["per_lang"].as_object() {
            for (lang, v) in per_lang {
                respond.rows.push(vec![
                    Cell::Text(stage.clone()),
                    Cell::Text(model_of(&s)),
                    Cell::Text(lang.clone()),
                    Cell::from_json_u64(&v["responses"]),
                    f(&v["chrf_reference_based"], 1),
                    f(&v["code_switch_rate"], 3),
                    f(&v["off_target_char_share"], 3),
                ]);
            }
        } else {
            return Err(StageError::input(
                &item.path,
                None,
                "not the stats.json of a perplexity, exam, respond or judge stage",
            ));
        }
    }
    let table2 = before_after(&measured, upstream);
    Ok([Some(ppl), table2, Some(exam), Some(respond), Some(judge)]
        .into_iter()
        .flatten()
        .filter(|t| !t.rows.is_empty())
        .collect())
}
