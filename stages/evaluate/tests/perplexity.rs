//! Perplexity and bits per character equal a direct computation from the
//! model's logits.

mod common;

use babelflow_model::burn::tensor::Device;
use babelflow_tokens::hf::LoadedTokenizer;
use common::*;
use serde_json::json;

/// Σ −log p(next) over `BOS text`, from the reference log-probabilities.
fn hand_nll(model: &babelflow_model::Llama, config: &babelflow_model::LlamaConfig, ids: &[u32]) -> f64 {
    let lp = logprobs(model, config, ids);
    (0..ids.len() - 1).map(|j| -lp[j][ids[j + 1] as usize]).sum()
}

#[test]
fn perplexity_and_bits_per_char_match_a_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, tables) = tiny_model(dir.path());
    let out = run(
        dir.path(),
        "ppl",
        "perplexity",
        json!({"max_len": 1024}),
        &[("model", &[&model_dir]), ("text", &[&tables[0], &tables[1]])],
    );
    let s = stats(&out);

    let device = Device::flex();
    let (config, model) = babelflow_model::hf::load(&model_dir, &device).unwrap();
    let tok = LoadedTokenizer::load(&model_dir.join("tokenizer.json")).unwrap();
    for (lang, table) in ["en", "sw"].iter().zip(&tables) {
        let (mut nll, mut tokens, mut chars) = (0.0, 0usize, 0usize);
        babelflow_corpus::read_corpus(table, &mut |doc| {
            let mut ids = vec![1u32];
            ids.extend(tok.tokenizer.encode(doc.text.as_str(), false).unwrap().get_ids());
            nll += hand_nll(&model, &config, &ids);
            tokens += ids.len() - 1;
            chars += doc.text.chars().count();
            Ok(())
        })
        .unwrap();
        let ours = &s["per_lang"][lang];
        let ppl = (nll / tokens as f64).exp();
        let bpc = nll / std::f64::consts::LN_2 / chars as f64;
        assert_eq!(ours["tokens"], tokens);
        assert_eq!(ours["chars"], chars);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs();
        assert!(
            close(ours["token_perplexity"].as_f64().unwrap(), ppl),
            "{lang}: {ours} vs ppl {ppl}"
        );
        assert!(
            close(ours["bits_per_char"].as_f64().unwrap(), bpc),
            "{lang}: {ours} vs bpc {bpc}"
        );
        // An untrained model is close to uniform over the vocabulary.
        assert!((ppl.ln() - (config.vocab_size as f64).ln()).abs() < 0.5, "{ppl}");
    }

    // Short windows predict the same tokens with less context.
    let short = run(
        dir.path(),
        "ppl16",
        "perplexity",
        json!({"max_len": 16, "batch_size": 3}),
        &[("model", &[&model_dir]), ("text", &[&tables[0]])],
    );
    assert_eq!(stats(&short)["per_lang"]["en"]["tokens"], s["per_lang"]["en"]["tokens"]);
    // Batches are formed as the text is read, across documents: scoring
    // them 3 or 5 at a time (a batch spanning documents, a last one short)
    // gives what scoring each chunk alone gives.
    let bits = |batch: usize| {
        let out = run(
            dir.path(),
            &format!("ppl16-{batch}"),
            "perplexity",
            json!({"max_len": 16, "batch_size": batch}),
            &[("model", &[&model_dir]), ("text", &[&tables[0], &tables[1]])],
        );
        let s = stats(&out);
        ["en", "sw"].map(|lang| s["per_lang"][lang]["bits_per_char"].as_f64().unwrap())
    };
    let alone = bits(1);
    for batch in [3, 5] {
        let batched = bits(batch);
        for (a, b) in alone.iter().zip(batched) {
            assert!(
                (a - b).abs() <= 1e-5 * a,
                "batch {batch}: {b} vs {a} one chunk at a time"
            );
        }
    }
}

/// `precision: bf16` / `f16` hold the weights in half precision and score
/// the same text within a percent of f32, and say so in the stats.
#[test]
fn half_precision_scores_within_a_percent_of_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, tables) = tiny_model(dir.path());
    let score = |precision: &str| {
        let out = run(
            dir.path(),
            &format!("ppl-{precision}"),
            "perplexity",
            json!({"max_len": 1024, "precision": precision}),
            &[("model", &[&model_dir]), ("text", &[&tables[0]])],
        );
        let s = stats(&out);
        assert_eq!(s["precision"], precision);
        s["per_lang"]["en"]["bits_per_char"].as_f64().unwrap()
    };
    let full = score("f32");
    for precision in ["bf16", "f16"] {
        let half = score(precision);
        assert!(half != full, "{precision}: the same bits as f32 — was it applied?");
        assert!((half - full).abs() <= 0.01 * full, "{precision}: {half} vs f32 {full}");
    }
}

/// The estimate's FLOPs count what the forward computes: chunks batched in
/// reading order, each batch padded to its longest chunk.
#[test]
fn the_estimate_counts_the_padded_positions_the_forward_computes() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, tables) = tiny_model(dir.path());
    let (config, _) = babelflow_model::hf::load(&model_dir, &Device::flex()).unwrap();
    let tok = LoadedTokenizer::load(&model_dir.join("tokenizer.json")).unwrap();
    let estimate = |max_len: usize, batch: usize| {
        let texts: Vec<&std::path::Path> = tables.iter().map(|t| t.as_path()).collect();
        babelflow_stage::testing::estimate_kind(
            kind("perplexity").as_ref(),
            json!({"max_len": max_len, "batch_size": batch, "max_docs": 5}),
            &[("model", &[&model_dir]), ("text", &texts)],
        )
        .unwrap()
        .work
        .expect("the text and the model exist")
    };

    // By hand: the first 5 documents of each table, cut into chunks of 16
    // after a context token, 3 chunks a batch, each batch as wide as its longest.
    let mut lengths = Vec::new();
    for table in &tables {
        let mut n = 0;
        babelflow_corpus::read_corpus(table, &mut |doc| {
            if n < 5 {
                n += 1;
                let ids = tok
                    .tokenizer
                    .encode(doc.text.as_str(), false)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                lengths.extend(
                    babelflow_evaluate::perplexity::chunks(Some(0), &ids, 16)
                        .iter()
                        .map(Vec::len),
                );
            }
            Ok(())
        })
        .unwrap();
    }
    let scored: usize = lengths.iter().map(|l| l - 1).sum();
    let computed: usize = lengths.chunks(3).map(|b| b.len() * b.iter().max().unwrap()).sum();
    assert!(
        computed > scored,
        "short windows in batches of 3 pad: {computed} {scored}"
    );

    let work = estimate(16, 3);
    // The tokens: the 10 documents' characters at the rate measured on them, which is their token count.
    assert_eq!(work.tokens.basis, babelflow_stage::estimate::Basis::Measured);
    assert!(
        (work.tokens.value - scored as f64).abs() <= 1e-9 * scored as f64,
        "{} vs {scored}",
        work.tokens.value
    );
    let per_position = babelflow_model::estimate::forward_flops_per_token(&config, 16);
    let expected = work.tokens.value * computed as f64 / scored as f64 * per_position;
    assert!(
        (work.forward_flops - expected).abs() <= 1e-9 * expected,
        "{} vs {expected}: {}",
        work.forward_flops,
        work.tokens.how
    );
    assert!(
        work.tokens.how.contains("positions per scored token"),
        "{}",
        work.tokens.how
    );
    // One chunk a batch pads nothing: each computes its context position besides those it scores.
    let alone = estimate(16, 1);
    let computed: usize = lengths.iter().sum();
    let expected = alone.tokens.value * computed as f64 / scored as f64 * per_position;
    assert!((alone.forward_flops - expected).abs() <= 1e-9 * expected);
}
