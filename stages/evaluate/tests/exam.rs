//! Exam accuracy by answer letters and by choice likelihood agrees with a
//! question-by-question computation from the model's own logits.

mod common;

use babelflow_evaluate::exam::{argmax, prompt, read_questions, Question, LETTERS};
use babelflow_model::burn::tensor::{Device, Int, Tensor, TensorData};
use babelflow_tokens::hf::LoadedTokenizer;
use common::*;
use serde_json::json;

fn predictions(path: &std::path::Path) -> Vec<Vec<String>> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        for r in 0..batch.num_rows() {
            rows.push(
                ["id", "answer", "by_letters", "by_likelihood", "shots"]
                    .iter()
                    .map(|c| {
                        let col = batch.column_by_name(c).unwrap();
                        let col = col.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
                        col.value(r).to_string()
                    })
                    .collect(),
            );
        }
    }
    rows
}

/// Log-softmax of every position of one unbatched forward pass.
fn logprobs(model: &babelflow_model::Llama, config: &babelflow_model::LlamaConfig, ids: &[u32]) -> Vec<Vec<f64>> {
    let device = Device::flex();
    let rope = babelflow_model::Rope::new(config, ids.len(), &device).unwrap();
    let x = Tensor::<2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]),
        &device,
    );
    let logits: Vec<f32> = model
        .forward(x, &rope, None)
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .unwrap();
    logits
        .chunks(config.vocab_size)
        .map(|row| {
            let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
            let log_z = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            row.iter().map(|&x| x as f64 - log_z).collect()
        })
        .collect()
}

#[test]
fn letter_and_likelihood_accuracy_match_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = tiny_model(dir.path());
    let mmlu = samples().join("exams/mmlu");
    let (dev, test) = (
        mmlu.join("everyday_science_dev.csv"),
        mmlu.join("everyday_science_test.csv"),
    );
    let table = run(
        dir.path(),
        "q",
        "ingest-choice",
        json!({}),
        &[("files", &[&dev, &test])],
    )
    .join("questions.parquet");
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
