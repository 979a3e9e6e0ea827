//! `resize-vocab` on a tiny model, each init through the stage itself: old
//! rows stay bit for bit, new rows have the shape and the statistics the
//! init promises, text-based inits put a new token near the old tokens the
//! text ties it to, every init repeats for a seed, and an init without its
//! text says which input to bind.

use std::path::{Path, PathBuf};

use babelflow_corpus::table::{StringTableWriter, CORPUS_COLUMNS};
use babelflow_model::burn::tensor::Device;
use babelflow_model::hf::{self, DiskDtype};
use babelflow_model::{Llama, LlamaConfig};
use babelflow_stage::testing::{inputs, run_kind};
use babelflow_stage::StageKind;
use serde_json::{json, Value};

const BASE: usize = 40;
/// New words: `nab` stands for w5 + w6, `ncd` for w10 + w11, `rare` never
/// occurs in any text.
const NEW: [&str; 3] = ["nab", "ncd", "rare"];
const A: usize = 5;
const B: usize = 6;
const C: usize = 10;
const D: usize = 11;

fn kind() -> std::sync::Arc<dyn StageKind> {
    babelflow_vocab::kinds().remove(0)
}

/// A whitespace word-level tokenizer: `<unk>`, w1..w39, then `extra`.
fn tokenizer(extra: &[&str]) -> Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for i in 1..BASE {
        vocab.insert(format!("w{i}"), i.into());
    }
    for (i, word) in extra.iter().enumerate() {
        vocab.insert(word.to_string(), (BASE + i).into());
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    /// A random untied model over the base vocabulary, the extended
    /// tokenizer and added_tokens.json (the new words' pieces are left
    /// empty: a row built from the text cannot then be a pieces fallback),
    /// a target corpus and parallel text.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut config = LlamaConfig::tiny(BASE, 64, 1, 4, 2);
        config.tie_word_embeddings = false;
        let model = Llama::init(&config, 0, &Device::flex());
        hf::save(&root.join("base"), &config, &model, DiskDtype::F32).unwrap();
        write_json(&root.join("base/tokenizer.json"), &tokenizer(&[]));
        write_json(&root.join("extended.json"), &tokenizer(&NEW));
        let added: Vec<Value> = NEW
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"id": BASE + i, "token": t, "base_pieces": []}))
            .collect();
        write_json(
            &root.join("added_tokens.json"),
            &json!({"base_vocab_size": BASE, "vocab_size": BASE + NEW.len(), "added": added}),
        );

        // Target text: `nab` stands where w5 and w6 stand (between w20 w21
        // and w22 w23), `ncd` where w10 and w11 do; filler elsewhere.
        let mut rng = 7u64;
        let mut next = |n: usize| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) as usize % n
        };
        let mut corpus = StringTableWriter::create(&root.join("corpus.parquet"), &CORPUS_COLUMNS).unwrap();
        for i in 0..600 {
            let filler: Vec<String> = (0..4).map(|_| format!("w{}", 30 + next(10))).collect();
            let text = match i % 3 {
                0 => format!("w20 w21 {} w22 w23 {}", ["w5", "w6", "nab"][next(3)], filler.join(" ")),
                1 => format!(
                    "w25 w26 {} w27 w28 {}",
                    ["w10", "w11", "ncd"][next(3)],
                    filler.join(" ")
                ),
                _ => filler.join(" "),
            };
            corpus.push(&[&format!("d{i}"), "xx", &text, "test"]).unwrap();
        }
        corpus.finish().unwrap();

        // Parallel text: fillers translate word for word; `w5 w6` on the
        // source side is `nab` on the target side, `w10 w11` is `ncd`.
        let mut parallel = StringTableWriter::create(&root.join("parallel.parquet"), &["source", "target"]).unwrap();
        for i in 0..400 {
            let filler: Vec<String> = (0..5).map(|_| format!("w{}", 12 + next(18))).collect();
            let (source, target) = match i % 3 {
                0 => (
                    format!("{} w5 w6", filler.join(" ")),
                    format!("nab {}", filler.join(" ")),
                ),
                1 => (
                    format!("w10 w11 {}", filler.join(" ")),
                    format!("{} ncd", filler.join(" ")),
                ),
                _ => (filler.join(" "), filler.join(" ")),
            };
            parallel.push(&[&source, &target]).unwrap();
        }
        parallel.finish().unwrap();
        Fixture { _dir: dir, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Runs resize-vocab with `params`, binding corpus and parallel text
    /// when `with_text`; returns the output folder.
    fn resize(&self, out: &str, params: Value, with_text: bool) -> Result<PathBuf, String> {
        let (model, added, tok) = (
            self.path("base"),
            self.path("added_tokens.json"),
            self.path("extended.json"),
        );
        let (corpus, parallel) = (self.path("corpus.parquet"), self.path("parallel.parquet"));
        let (model, added, tok) = ([model.as_path()], [added.as_path()], [tok.as_path()]);
        let mut bound: Vec<(&str, &[&Path])> = vec![("model", &model), ("added", &added), ("tokenizer", &tok)];
        let text = [corpus.as_path()];
        let pairs = [parallel.as_path()];
        if with_text {
            bound.push(("corpus", &text));
            bound.push(("parallel", &pairs));
        }
        let dir = self.path(out);
        run_kind(kind().as_ref(), params, &inputs(&bound), &dir).map_err(|e| e.to_string())?;
        Ok(dir.join("model"))
    }
}

fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// The embedding and the head of a model folder, as (rows, d, values).
fn matrices(dir: &Path) -> Vec<(String, usize, Vec<f32>)> {
    let tensors = hf::named_tensors(&hf::load(dir, &Device::flex()).unwrap().1);
    ["model.embed_tokens.weight", "lm_head.weight"]
        .iter()
        .map(|name| {
            let (shape, values) = &tensors[*name];
            assert_eq!(shape[0], BASE + NEW.len(), "{name}: rows");
            (name.to_string(), shape[1], values.clone())
        })
        .collect()
}

fn row(values: &[f32], d: usize, id: usize) -> &[f32] {
    &values[id * d..(id + 1) * d]
}

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt()
}

#[test]
fn every_init_keeps_old_rows_and_repeats_for_its_seed() {
    let f = Fixture::new();
    let base = matrices_of_base(&f);
    for init in ["mean", "subword-mean", "multivariate", "focus", "aligned"] {
        let params = json!({"init": init, "seed": 3, "focus_dim": 16, "focus_epochs": 2});
        let first = matrices(&f.resize(&format!("{init}-1"), params.clone(), true).unwrap());
        let again = matrices(&f.resize(&format!("{init}-2"), params, true).unwrap());
        for ((name, d, new), (_, _, old)) in first.iter().zip(&base) {
            assert_eq!(&new[..BASE * d], &old[..], "{init}: {name}: old rows changed");
            assert!(new.iter().all(|v| v.is_finite()), "{init}: {name}");
        }
        assert_eq!(first, again, "{init}: the same seed gives the same rows");
        let stats: Value =
            serde_json::from_slice(&std::fs::read(f.path(&format!("{init}-1/stats.json"))).unwrap()).unwrap();
        assert_eq!(stats["init"], init);
        let made: u64 = stats["new_rows_by"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(made, NEW.len() as u64, "{stats}");
        if init == "focus" || init == "aligned" {
            // `rare` never occurs in the text: it falls back (to the mean, having no pieces).
            assert_eq!(stats["new_rows_by"][init], 2, "{stats}");
            assert_eq!(stats["new_rows_by"]["mean (no old pieces)"], 1, "{stats}");
        }
    }
    let tokenizer = std::fs::read(f.path("aligned-1/model/tokenizer.json")).unwrap();
    assert_eq!(
        tokenizer,
        std::fs::read(f.path("extended.json")).unwrap(),
        "the extended tokenizer is copied"
    );
}

fn matrices_of_base(f: &Fixture) -> Vec<(String, usize, Vec<f32>)> {
    let tensors = hf::named_tensors(&hf::load(&f.path("base"), &Device::flex()).unwrap().1);
    ["model.embed_tokens.weight", "lm_head.weight"]
        .iter()
        .map(|name| (name.to_string(), tensors[*name].0[1], tensors[*name].1.clone()))
        .collect()
}

#[test]
fn text_based_inits_put_a_new_token_near_the_old_tokens_the_text_ties_it_to() {
    let f = Fixture::new();
    for init in ["focus", "aligned"] {
        let params = json!({"init": init, "focus_dim": 16, "focus_epochs": 3, "focus_subsample": 0.0});
        for (name, d, values) in matrices(&f.resize(init, params, true).unwrap()) {
            for (new, (x, y), context) in [(BASE, (A, B), 20..24), (BASE + 1, (C, D), 25..29)] {
                let new_row = row(&values, d, new);
                let tied = distance(new_row, row(&values, d, x)).max(distance(new_row, row(&values, d, y)));
                // FOCUS's space also ties a token to the words around it
                // (skip-gram vectors of neighbours grow alike): those share
                // its weight, so only the rest count as unrelated.
                let related = |o: usize| [x, y].contains(&o) || (init == "focus" && context.contains(&o));
                let mut unrelated: Vec<f32> = (1..BASE)
                    .filter(|&o| !related(o))
                    .map(|o| distance(new_row, row(&values, d, o)))
                    .collect();
                unrelated.sort_by(f32::total_cmp);
                let typical = unrelated[unrelated.len() / 2];
                assert!(
                    tied < typical,
                    "{init}: {name}: new row {new} is {tied} from w{x}/w{y}, {typical} from a typical unrelated row"
                );
            }
        }
    }
}

#[test]
fn multivariate_rows_spread_like_the_old_rows_at_the_asked_scale() {
    let f = Fixture::new();
    let base = matrices_of_base(&f);
    let spread = |values: &[f32], d: usize, rows: std::ops::Range<usize>| -> f64 {
        let n = rows.len() as f64;
        (0..d)
            .map(|k| {
                let mean = rows.clone().map(|r| values[r * d + k] as f64).sum::<f64>() / n;
                rows.clone()
                    .map(|r| (values[r * d + k] as f64 - mean).powi(2))
                    .sum::<f64>()
                    / n
            })
            .sum::<f64>()
    };
    let (_, d, old) = &base[0];
    let old_spread = spread(old, *d, 0..BASE);
    let wide = matrices(
        &f.resize("wide", json!({"init": "multivariate", "covariance_scale": 1.0}), false)
            .unwrap(),
    );
    let narrow = matrices(&f.resize("narrow", json!({"init": "multivariate"}), false).unwrap());
    let new = BASE..BASE + NEW.len();
    // Three draws of a 64-d distribution: the total variance is within a
    // factor of 3 of the old rows' (a chi-square of ~190 degrees of freedom).
    let wide_spread = spread(&wide[0].2, *d, new.clone());
    assert!(
        wide_spread > old_spread / 3.0 && wide_spread < old_spread * 3.0,
        "{wide_spread} vs {old_spread}"
    );
    // transformers' scale, 1e-9: the rows are the mean, give or take 1e-4 σ.
    assert!(spread(&narrow[0].2, *d, new) < old_spread * 1e-6);
}

#[test]
fn an_init_without_its_text_names_the_input_to_bind() {
    let f = Fixture::new();
    let err = f.resize("no-corpus", json!({"init": "focus"}), false).unwrap_err();
    assert!(err.contains("`init: focus`") && err.contains("`corpus:`"), "{err}");
    let err = f.resize("no-parallel", json!({"init": "aligned"}), false).unwrap_err();
    assert!(err.contains("`init: aligned`") && err.contains("`parallel:`"), "{err}");
    // Parallel text without the columns it needs is named.
    let mut bad = StringTableWriter::create(&f.path("bad.parquet"), &["english", "other"]).unwrap();
    bad.push(&["a", "b"]).unwrap();
    bad.finish().unwrap();
    let (model, added, tok, bad) = (
        f.path("base"),
        f.path("added_tokens.json"),
        f.path("extended.json"),
        f.path("bad.parquet"),
    );
    let bound = inputs(&[
        ("model", &[model.as_path()]),
        ("added", &[added.as_path()]),
        ("tokenizer", &[tok.as_path()]),
        ("parallel", &[bad.as_path()]),
    ]);
    let err = run_kind(kind().as_ref(), json!({"init": "aligned"}), &bound, &f.path("bad-out"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.parquet") && err.contains("no `source` and `target` columns"),
        "{err}"
    );
}

#[test]
fn a_tokenizer_that_is_not_the_extended_one_is_refused() {
    let f = Fixture::new();
    write_json(&f.path("extended.json"), &tokenizer(&NEW[..2]));
    let err = f.resize("mismatch", json!({}), false).unwrap_err();
    assert!(
        err.contains("has 42 tokens but") && err.contains("vocabulary has 43"),
        "{err}"
    );
}
