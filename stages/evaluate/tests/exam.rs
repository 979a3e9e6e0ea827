//! Exam accuracy by answer letters and by choice likelihood agrees with a
//! question-by-question computation from the model's own logits.

mod common;

use babelflow_evaluate::exam::{argmax, prompt, read_questions, Question, LETTERS};
use babelflow_model::burn::tensor::Device;
use babelflow_tokens::hf::LoadedTokenizer;
use common::*;
use serde_json::json;

fn predictions(path: &std::path::Path) -> Vec<Vec<String>> {
    table(path, &["id", "answer", "by_letters", "by_likelihood", "shots"])
}

/// The shipped MMLU sample (2 dev questions, 4 test) as `ingest-choice` reads it.
fn mmlu_sample_table(dir: &std::path::Path) -> std::path::PathBuf {
    let mmlu = samples().join("exams/mmlu");
    let (dev, test) = (
        mmlu.join("everyday_science_dev.csv"),
        mmlu.join("everyday_science_test.csv"),
    );
    run(dir, "q", "ingest-choice", json!({}), &[("files", &[&dev, &test])]).join("questions.parquet")
}

#[test]
fn letter_and_likelihood_accuracy_match_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = tiny_model(dir.path());
    let table = mmlu_sample_table(dir.path());
    let out = run(
        dir.path(),
        "exam",
        "exam",
        json!({"shots": 1, "batch_size": 3}),
        &[("model", &[&model_dir]), ("questions", &[&table])],
    );
    let s = stats(&out);
    let rows = predictions(&out.join("predictions.parquet"));
    assert_eq!(rows.len(), 4, "the four test questions");

    let device = Device::flex();
    let (config, model) = babelflow_model::hf::load(&model_dir, &device).unwrap();
    let tok = LoadedTokenizer::load(&model_dir.join("tokenizer.json")).unwrap();
    let encode = |t: &str| -> Vec<u32> {
        let mut ids = vec![1u32];
        ids.extend(tok.tokenizer.encode(t, false).unwrap().get_ids());
        ids
    };
    let questions = read_questions(&table).unwrap();
    let shot: Vec<&Question> = questions.iter().filter(|q| q.split == "dev").take(1).collect();
    let (mut right_letters, mut right_likelihood) = (0, 0);
    for q in questions.iter().filter(|q| q.split == "test") {
        let text = prompt(q, &shot);
        let ids = encode(&text);
        let last = logprobs(&model, &config, &ids).pop().unwrap();
        let letter_scores: Vec<f64> = LETTERS[..q.choices.len()]
            .iter()
            .map(|l| {
                last[*tok
                    .tokenizer
                    .encode(format!("Answer: {l}"), false)
                    .unwrap()
                    .get_ids()
                    .last()
                    .unwrap() as usize]
            })
            .collect();
        let by_letters = LETTERS[argmax(&letter_scores)];
        let choice_scores: Vec<f64> = q
            .choices
            .iter()
            .map(|c| {
                let cont = format!(" {}", c.trim());
                let full = encode(&format!("{text}{cont}"));
                let lp = logprobs(&model, &config, &full);
                let shared = ids.iter().zip(&full).take_while(|(a, b)| a == b).count();
                (shared..full.len()).map(|j| lp[j - 1][full[j] as usize]).sum::<f64>() / cont.len() as f64
            })
            .collect();
        let by_likelihood = LETTERS[argmax(&choice_scores)];
        let row = rows.iter().find(|r| r[0] == q.id).unwrap();
        assert_eq!(
            (row[2].as_str(), row[3].as_str()),
            (by_letters, by_likelihood),
            "question {}",
            q.id
        );
        assert_eq!(row[4], "1");
        right_letters += (by_letters == q.answer) as usize;
        right_likelihood += (by_likelihood == q.answer) as usize;
    }
    let acc = &s["results"]["en/exam"];
    assert_eq!(acc["accuracy_letters"].as_f64().unwrap(), right_letters as f64 / 4.0);
    assert_eq!(
        acc["accuracy_likelihood"].as_f64().unwrap(),
        right_likelihood as f64 / 4.0
    );
    assert_eq!(acc["questions"], 4);
}

/// The plan prices the passes the run computes: the prompts built as the
/// run builds them, batched and padded as it batches them.
#[test]
fn the_estimate_counts_the_positions_the_forward_passes_compute() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = tiny_model(dir.path());
    let table = mmlu_sample_table(dir.path());
    for (params, passes) in [
        (json!({"shots": 1, "batch_size": 3}), 2 + 6),
        (json!({"shots": 0, "batch_size": 8, "scoring": "letters"}), 1),
    ] {
        let out = run(
            dir.path(),
            "exam",
            "exam",
            params.clone(),
            &[("model", &[&model_dir]), ("questions", &[&table])],
        );
        let positions = stats(&out)["positions"].as_f64().unwrap();
        let work = babelflow_stage::testing::estimate_kind(
            kind("exam").as_ref(),
            params.clone(),
            &[("model", &[&model_dir]), ("questions", &[&table])],
        )
        .unwrap()
        .work
        .expect("the questions and the model exist");
        assert_eq!(work.tokens.basis, babelflow_stage::estimate::Basis::Measured);
        assert_eq!(work.tokens.value, positions, "{params}: {}", work.tokens.how);
        assert!(
            work.tokens.how.contains(&format!("({passes} passes")),
            "{}",
            work.tokens.how
        );
        // Every position runs the weights' products, and attends over at
        // most the longest sequence.
        let (config, _) = babelflow_model::hf::load(&model_dir, &Device::flex()).unwrap();
        let per_position = |t| babelflow_model::estimate::forward_flops_per_token(&config, t);
        assert!(work.forward_flops > positions * per_position(0), "{params}");
        assert!(work.forward_flops < positions * per_position(256), "{params}");
    }
}

#[test]
fn shots_are_dropped_until_the_prompt_fits_and_ceval_val_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = tiny_model(dir.path());
    let ceval = samples().join("exams/ceval");
    let (dev, val) = (ceval.join("daily_life_dev.csv"), ceval.join("daily_life_val.csv"));
    let table = run(
        dir.path(),
        "q",
        "ingest-choice",
        json!({"lang": "zh"}),
        &[("files", &[&dev, &val])],
    )
    .join("questions.parquet");
    let roomy = run(
        dir.path(),
        "roomy",
        "exam",
        json!({"shots": 5, "split": "val"}),
        &[("model", &[&model_dir]), ("questions", &[&table])],
    );
    let used: Vec<String> = predictions(&roomy.join("predictions.parquet"))
        .into_iter()
        .map(|r| r[4].clone())
        .collect();
    assert_eq!(used, ["1", "1"], "one dev question exists, so one shot");
    // A context that holds a question but not question + shot: zero shots.
    let tok = LoadedTokenizer::load(&model_dir.join("tokenizer.json")).unwrap();
    let questions = read_questions(&table).unwrap();
    let q = questions.iter().find(|q| q.split == "val").unwrap();
    let alone = 1 + tok.tokenizer.encode(prompt(q, &[]) + " 十二个", false).unwrap().len();
    let tight = run(
        dir.path(),
        "tight",
        "exam",
        json!({"shots": 5, "split": "val", "max_len": alone + 8}),
        &[("model", &[&model_dir]), ("questions", &[&table])],
    );
    let rows = predictions(&tight.join("predictions.parquet"));
    assert!(rows.iter().any(|r| r[4] == "0"), "{rows:?}");
}

/// (id, choices, answer) of a hand-made question.
type Row<'a> = (&'a str, Vec<&'a str>, &'a str);

/// A questions table written by another tool, with `choices` per row.
fn questions_table(path: &std::path::Path, rows: &[Row]) {
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    let text = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
        std::sync::Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let mut choices = ListBuilder::new(StringBuilder::new());
    for (_, c, _) in rows {
        for item in c {
            choices.values().append_value(item);
        }
        choices.append(true);
    }
    let batch = RecordBatch::try_from_iter([
        ("id", text(&|r| r.0.to_string())),
        ("lang", text(&|_| "en".into())),
        ("subject", text(&|_| "things".into())),
        ("split", text(&|_| "test".into())),
        ("question", text(&|r| format!("Which is {}?", r.0))),
        ("choices", std::sync::Arc::new(choices.finish()) as ArrayRef),
        ("answer", text(&|r| r.2.to_string())),
    ])
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn a_question_the_scorer_cannot_letter_is_an_error_naming_file_and_question() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = tiny_model(dir.path());
    let too_many = dir.path().join("nine.parquet");
    let nine: Vec<&str> = vec!["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    questions_table(&too_many, &[("q1", vec!["x", "y"], "A"), ("q2", nine, "B")]);
    let bad_answer = dir.path().join("answer.parquet");
    questions_table(&bad_answer, &[("q3", vec!["x", "y", "z"], "D")]);
    for (table, says) in [
        (&too_many, "question `q2` has 9 choices; 2 to 8 are supported"),
        (&bad_answer, "question `q3` has answer `D`, not one of A, B, C"),
    ] {
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let err = babelflow_stage::testing::run_kind(
            kind("exam").as_ref(),
            json!({"shots": 0}),
            &babelflow_stage::testing::inputs(&[("model", &[&model_dir]), ("questions", &[table])]),
            &out,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&table.display().to_string()) && err.contains(says),
            "{err}"
        );
    }
}
