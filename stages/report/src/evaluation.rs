//! The evaluation tables: perplexity and bits per character, exam
//! accuracy, response scores (chrF and code-switching), judge scores — one
//! table per instrument, a row per (evaluated model, language).

use std::collections::BTreeMap;

use babelflow_stage::{InputItem, StageError, Upstream};
use serde_json::Value;

use crate::table::{Cell, Table};
use crate::{manifest_in, source_name, stats_of};

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

/// For each trained model of the run, the model its training started from
/// (the `model` input in its manifest).
fn trained_from(upstream: &[Upstream]) -> BTreeMap<String, String> {
    upstream
        .iter()
        .filter(|u| TRAINING_KINDS.contains(&u.kind.as_str()))
        .filter_map(|u| {
            let manifest = manifest_in(u.artifact.as_ref()?)?;
            let start = manifest["inputs"]["model"][0]["instance"].as_str()?.to_string();
            Some((u.instance.clone(), start))
        })
        .collect()
}

/// The study's Table 2: per language, each evaluated model's perplexity and
/// bits per character beside those of the model its training started from
/// (when that one was evaluated too), with the change in bits per character
/// — the figure that compares across tokenizers. Rows are grouped by
/// language, then by the model's variant label. `None` unless some trained
/// model's starting point was evaluated.
fn before_after(measured: &[Measured], upstream: &[Upstream]) -> Option<Table> {
    let from = trained_from(upstream);
    let bits = |model: &str, lang: &str| {
        measured
            .iter()
            .find(|m| m.model == model && m.lang == lang)
            .and_then(|m| m.bits_per_char)
    };
    let has_pair = measured
        .iter()
        .any(|m| from.get(&m.model).is_some_and(|start| bits(start, &m.lang).is_some()));
    if !has_pair {
        return None;
    }
    let mut t = Table::new(
        "Before and after training, per language (as the study's Table 2)",
        &[
            "language",
            "model",
            "variant",
            "trained from",
            "token perplexity",
            "bits / char",
            "Δ bits / char",
            "Δ %",
        ],
    );
    t.note = Some(
        "Δ compares each trained model with the model its training started from, on the same text; bits per \
         character stay comparable when the vocabulary was extended. Rows are grouped by language, then by the \
         model's variant label."
            .into(),
    );
    let variant = |m: &str| m.split_once('@').map(|(_, v)| v.to_string()).unwrap_or_default();
    let mut rows: Vec<&Measured> = measured.iter().collect();
    // Per language: untrained models first, then trained ones by variant.
    rows.sort_by_key(|m| {
        (
            m.lang.clone(),
            from.contains_key(&m.model),
            variant(&m.model),
            m.model.clone(),
        )
    });
    for m in rows {
        let start = from.get(&m.model);
        let before = start.and_then(|s| bits(s, &m.lang));
        let delta = before.zip(m.bits_per_char).map(|(b, a)| a - b);
        t.rows.push(vec![
            Cell::Text(m.lang.clone()),
            Cell::Text(m.model.clone()),
            Cell::Text(variant(&m.model)),
            start.map_or(Cell::Missing, |s| Cell::Text(s.clone())),
            m.token_perplexity.map_or(Cell::Missing, |v| Cell::Float(v, 2)),
            m.bits_per_char.map_or(Cell::Missing, |v| Cell::Float(v, 3)),
            delta.map_or(Cell::Missing, |d| Cell::Float(d, 3)),
            match (delta, before) {
                (Some(d), Some(b)) if b != 0.0 => Cell::Float(100.0 * d / b, 1),
                _ => Cell::Missing,
            },
        ]);
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
