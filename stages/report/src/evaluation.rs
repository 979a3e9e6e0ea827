//! The evaluation tables: perplexity and bits per character, exam
//! accuracy, response scores (chrF and code-switching), judge scores — one
//! table per instrument, a row per (evaluated model, language).

use babelflow_stage::{InputItem, StageError};
use serde_json::Value;

use crate::table::{Cell, Table};
use crate::{source_name, stats_of};

fn f(v: &Value, digits: usize) -> Cell {
    Cell::from_json_f64(v, digits)
}

fn model_of(s: &Value) -> String {
    s["model"].as_str().unwrap_or("?").to_string()
}

/// Tables for every bound evaluation stats.json, grouped by instrument;
/// instruments with no bound stage get no table.
pub fn tables(items: &[InputItem]) -> Result<Vec<Table>, StageError> {
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
    Ok([ppl, exam, respond, judge]
        .into_iter()
        .filter(|t| !t.rows.is_empty())
        .collect())
}
