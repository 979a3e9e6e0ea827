//! The LLaMA family against transformers itself: each layout babelflow
//! accepts has a tiny random checkpoint written by transformers
//! (`fixtures/make_hf_fixtures.py`), whose logits babelflow must reproduce
//! to 1e-5 as `numpy.allclose` counts it (|Δ| ≤ 1e-5 + 1e-5·|logit|: the
//! fixtures' logits reach ±15, where f32 rounding alone is about 1e-6 of
//! the value) and whose loss to 1e-5; each layout it refuses, a test that
//! the refusal names the field.

use std::path::PathBuf;

use babelflow_model::hf;
use babelflow_model::loss::cross_entropy;
use babelflow_model::{LlamaConfig, Rope};
use burn::tensor::{Device, Int, Tensor, TensorData};

fn fixture(name: &str) -> PathBuf {
    babelflow_stage::testing::package_dir()
        .join("tests/fixtures")
        .join(name)
}

struct Reference {
    ids: Vec<Vec<i64>>,
    logits: Vec<f32>,
    loss: Vec<f64>,
}

fn reference(case: &str) -> Reference {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(case).join("reference.json")).unwrap()).unwrap();
    let ids = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect())
        .collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    let loss = v["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    Reference { ids, logits, loss }
}

/// Every layout babelflow accepts, as transformers wrote it.
const ACCEPTED: &[(&str, &str)] = &[
    ("hf-llama", "LlamaForCausalLM, GQA, untied"),
    ("hf-llama3-tied", "LLaMA-3.x rope scaling, tied head"),
    ("hf-head-dim", "head_dim different from hidden_size / heads"),
    ("hf-bias", "attention_bias and mlp_bias"),
    ("hf-rope-linear", "linear rope scaling"),
    ("hf-rope-dynamic", "dynamic NTK rope, past max_position_embeddings"),
    ("hf-mistral", "MistralForCausalLM without a sliding window"),
    ("hf-smollm2", "SmolLM2's layout: tied, GQA 3/1, head_dim 16"),
];

#[test]
fn every_accepted_layout_matches_transformers_logits_and_loss() {
    let device = Device::flex();
    let mut report = Vec::new();
    for (case, what) in ACCEPTED {
        let (config, model) = hf::load(&fixture(case), &device).unwrap_or_else(|e| panic!("{case}: {e}"));
        let r = reference(case);
        let n = r.ids[0].len();
        // Exactly the sequence's length: the `dynamic` table depends on it,
        // as transformers' does.
        let rope = Rope::new(&config, n, &device).unwrap();
        // The worst |Δ| / (1e-5 + 1e-5·|reference|): at most 1 passes.
        let mut worst_logit = 0f32;
        let mut worst_ratio = 0f32;
        let mut worst_loss = 0f64;
        for (row, ids) in r.ids.iter().enumerate() {
            let input: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids.clone(), [1, n]), &device);
            let logits = model.forward(input, &rope, None);
            if row == 0 {
                let got = logits.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                assert_eq!(got.len(), r.logits.len(), "{case}");
                for (a, b) in got.iter().zip(&r.logits) {
                    assert!(a.is_finite(), "{case}: non-finite logit");
                    worst_logit = worst_logit.max((a - b).abs());
                    worst_ratio = worst_ratio.max((a - b).abs() / (1e-5 + 1e-5 * b.abs()));
                }
            }
            let [_, t, v] = logits.dims();
            let inputs = logits.narrow(1, 0, t - 1).reshape([1, t - 1, v]);
            let targets: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids[1..].to_vec(), [1, n - 1]), &device);
            let loss: f32 = cross_entropy(inputs, targets, None).into_scalar();
            worst_loss = worst_loss.max((loss as f64 - r.loss[row]).abs());
        }
        let bad = if worst_ratio <= 1.0 && worst_loss <= 1e-5 {
            ""
        } else {
            "  <-- over 1e-5"
        };
        report.push(format!(
            "{case} ({what}): max |Δlogit| {worst_logit:.2e} ({:.0} % of the allowance), |Δloss| {worst_loss:.2e}{bad}",
            worst_ratio * 100.0
        ));
    }
    let report = report.join("\n");
    eprintln!("{report}");
    assert!(
        !report.contains("over 1e-5"),
        "babelflow differs from transformers:\n{report}"
    );
}

/// Round trip: what babelflow saves loads back, with the biases and the
/// architecture it read.
#[test]
fn saved_layouts_keep_their_biases_architecture_and_rope() {
    let device = Device::flex();
    for case in ["hf-bias", "hf-mistral", "hf-rope-dynamic"] {
        let (config, model) = hf::load(&fixture(case), &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        hf::save(dir.path(), &config, &model, hf::DiskDtype::F32).unwrap();
        let (again, _) = hf::load(dir.path(), &device).unwrap();
        assert_eq!(again.attention_bias, config.attention_bias, "{case}");
        assert_eq!(again.architecture(), config.architecture(), "{case}");
        assert_eq!(again.rope_scaling().unwrap(), config.rope_scaling().unwrap(), "{case}");
        assert_eq!(again.rope_theta, config.rope_theta, "{case}");
    }
}

/// (what the config says, the error that must name it)
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "rope_parameters",
        r#"{"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}"#,
        "rope_scaling.rope_type `yarn` is not supported",
    ),
    (
        "architectures",
        r#"["Qwen2ForCausalLM"]"#,
        "architectures: `Qwen2ForCausalLM` is not a layout babelflow computes",
    ),
    ("hidden_act", r#""gelu""#, "hidden_act `gelu` is not supported"),
];

#[test]
fn every_refused_layout_is_named_in_the_error() {
    for (field, value, message) in REFUSED {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(fixture("hf-llama").join("config.json")).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
        config[*field] = serde_json::from_str(value).unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let err = LlamaConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(message), "{field}: {err}");
    }
}

#[test]
fn a_sequence_longer_than_mistrals_sliding_window_is_refused() {
    let (mut config, _) = hf::load(&fixture("hf-mistral"), &Device::flex()).unwrap();
    config.sliding_window = Some(8);
    assert!(Rope::new(&config, 8, &Device::flex()).is_ok());
    let err = Rope::new(&config, 12, &Device::flex()).err().unwrap();
    assert!(err.contains("exceed the model's sliding_window (8)"), "{err}");
}

/// Loading straight into a precision holds every weight in it, with the
/// values a cast after an f32 load gives.
#[test]
fn loading_in_bf16_holds_bf16_weights_equal_to_a_cast() {
    use babelflow_model::precision::Precision;
    use burn::tensor::DType;
    let device = Device::flex();
    let (_, direct) = hf::load_in(&fixture("hf-bias"), &device, DType::BF16).unwrap();
    let (_, f32_model) = hf::load(&fixture("hf-bias"), &device).unwrap();
    let cast = Precision::Bf16.apply(f32_model);
    let q = |m: &babelflow_model::Llama| m.layers[0].self_attn.q_proj.bias.as_ref().unwrap().val();
    assert_eq!(direct.embed_tokens.val().dtype(), DType::BF16);
    assert_eq!(q(&direct).dtype(), DType::BF16);
    assert_eq!(direct.norm.weight.val().dtype(), DType::BF16);
    let bytes = |t: Tensor<2>| t.into_data().as_bytes().to_vec();
    assert_eq!(bytes(direct.embed_tokens.val()), bytes(cast.embed_tokens.val()));
}
