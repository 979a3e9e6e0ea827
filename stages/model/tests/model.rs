//! The LLaMA model against an independent reference, HF round trips, and
//! generation with and without the KV cache.

use std::path::PathBuf;

use babelflow_model::generate::{generate, generate_batch, Sampling};
use babelflow_model::hf::{self, DiskDtype};
use babelflow_model::{Llama, LlamaConfig, Rope};
use burn::tensor::{Device, Int, Tensor, TensorData};

fn fixture(name: &str) -> PathBuf {
    babelflow_stage::testing::package_dir()
        .join("tests/fixtures")
        .join(name)
}

fn logits(model: &Llama, config: &LlamaConfig, ids: &[i64], device: &Device) -> Vec<f32> {
    let rope = Rope::new(config, 64, device).unwrap();
    let input: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device);
    model
        .forward(input, &rope, None)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Largest absolute difference; NaN or infinity anywhere fails the test.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().chain(b).all(|x| x.is_finite()), "non-finite logits");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn logits_match_an_independent_numpy_llama() {
    let device = Device::flex();
    // Default rotary embedding with grouped-query attention; LLaMA-3 rope
    // scaling with a tied head. A wrong RoPE layout or GQA grouping fails here.
    for case in ["tiny-gqa", "tiny-llama3-tied"] {
        let (config, model) = hf::load(&fixture(case), &device).unwrap();
        let reference: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(case).join("reference.json")).unwrap()).unwrap();
        let ids: Vec<i64> = reference["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let expected: Vec<f32> = reference["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
            .collect();
        let got = logits(&model, &config, &ids, &device);
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-3, "{case}: max |Δlogit| = {diff}");
    }
}

#[test]
fn save_then_load_gives_identical_logits_and_half_precision_within_tolerance() {
    let device = Device::flex();
    let config = LlamaConfig::tiny(50, 32, 2, 4, 2);
    let model = Llama::init(&config, 0, &device);
    let ids = [1i64, 7, 3, 9, 2];
    let before = logits(&model, &config, &ids, &device);
    let dir = tempfile::tempdir().unwrap();
    for (dtype, tolerance) in [(DiskDtype::F32, 0.0), (DiskDtype::F16, 2e-3), (DiskDtype::Bf16, 2e-2)] {
        let out = dir.path().join(format!("{dtype:?}"));
        hf::save(&out, &config, &model, dtype).unwrap();
        let (loaded_config, loaded) = hf::load(&out, &device).unwrap();
        assert_eq!(loaded_config.hidden_size, 32);
        let after = logits(&loaded, &loaded_config, &ids, &device);
        let diff = max_abs_diff(&before, &after);
        assert!(diff <= tolerance, "{dtype:?}: max |Δlogit| = {diff}");
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
        assert_eq!(cfg["model_type"], "llama");
    }
}

#[test]
fn sharded_checkpoints_load_like_a_single_file() {
    let device = Device::flex();
    let src = fixture("tiny-gqa");
    let dir = tempfile::tempdir().unwrap();
    let (config, model) = hf::load(&src, &device).unwrap();
    // Split the tensors into two shards with an index, as HF does for big models.
    let tensors = hf::named_tensors(&model);
    let names: Vec<String> = tensors.keys().cloned().collect();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = part
            .iter()
            .map(|n| {
                let (shape, data) = &tensors[n];
                (
                    n.clone(),
                    shape.clone(),
                    data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(shard)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), shard.into());
        }
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
    )
    .unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let (_, sharded) = hf::load(dir.path(), &device).unwrap();
    let ids = [1i64, 2, 3];
    assert_eq!(
        max_abs_diff(
            &logits(&model, &config, &ids, &device),
            &logits(&sharded, &config, &ids, &device)
        ),
        0.0
    );
}

#[test]
fn bad_checkpoints_get_clear_errors() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny-gqa/config.json"), dir.path().join("config.json")).unwrap();
    let err = hf::load(dir.path(), &device).err().unwrap().to_string();
    assert!(err.contains("no model.safetensors"), "{err}");

    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tiny-gqa/config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = 24.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        fixture("tiny-gqa/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let err = hf::load(dir.path(), &device).err().unwrap().to_string();
    assert!(
        err.contains("has shape") && err.contains("model.embed_tokens.weight"),
        "{err}"
    );

    cfg["hidden_size"] = 16.into();
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let err = hf::load(dir.path(), &device).err().unwrap().to_string();
    assert!(err.contains("rope_scaling.rope_type `yarn` is not supported"), "{err}");
}

#[test]
fn generation_with_the_kv_cache_equals_generation_without() {
    let device = Device::flex();
    let (config, model) = hf::load(&fixture("tiny-gqa"), &device).unwrap();
    let rope = Rope::new(&config, 64, &device).unwrap();
    let s = Sampling {
        max_new_tokens: 12,
        ..Sampling::default()
    };
    let prompt = [1u32, 5, 9];
    let cached = generate(&model, &rope, &prompt, &s, true, &device);
    let uncached = generate(&model, &rope, &prompt, &s, false, &device);
    assert_eq!(cached.len(), 12);
    assert_eq!(cached, uncached);

    let sampled = Sampling {
        temperature: 0.8,
        top_k: Some(10),
        top_p: Some(0.9),
        seed: 5,
        ..s.clone()
    };
    assert_eq!(
        generate(&model, &rope, &prompt, &sampled, true, &device),
        generate(&model, &rope, &prompt, &sampled, true, &device),
        "the same seed samples the same tokens"
    );
    let stop = Sampling {
        stop_tokens: vec![cached[2]],
        ..s
    };
    assert_eq!(
        generate(&model, &rope, &prompt, &stop, true, &device),
        cached[..3].to_vec()
    );
}

#[test]
fn batched_prompts_of_different_lengths_generate_what_each_would_alone() {
    let device = Device::flex();
    let (config, model) = hf::load(&fixture("tiny-gqa"), &device).unwrap();
    let rope = Rope::new(&config, 64, &device).unwrap();
    let prompts = vec![vec![1, 5, 9, 2, 7, 3], vec![1, 4], vec![1, 8, 8, 6]];
    let s = Sampling {
        max_new_tokens: 8,
        ..Sampling::default()
    };
    let batched = generate_batch(&model, &rope, &prompts, &s, &device);
    for (prompt, got) in prompts.iter().zip(&batched) {
        assert_eq!(
            got,
            &generate(&model, &rope, prompt, &s, true, &device),
            "prompt {prompt:?}"
        );
    }
    // Each row stops at its own stop token.
    let stop = Sampling {
        stop_tokens: vec![batched[1][2]],
        ..s
    };
    let stopped = generate_batch(&model, &rope, &prompts, &stop, &device);
    let first = batched[1].iter().position(|&t| t == batched[1][2]).unwrap();
    assert_eq!(stopped[1], batched[1][..=first].to_vec());
}

/// Evaluation in bf16 or f16: the weights are converted (half the memory),
/// the logits come back in f32, close to the f32 model's, and cached
/// generation runs.
#[test]
fn half_precision_evaluation_stays_close_to_f32() {
    use babelflow_model::Precision;
    use burn::tensor::DType;
    let device = Device::flex();
    let (config, model) = hf::load(&fixture("tiny-gqa"), &device).unwrap();
    let ids = [1i64, 7, 3, 9, 2, 11, 4];
    let full = logits(&model, &config, &ids, &device);
    for (precision, dtype, tolerance) in [
        (Precision::F16, DType::F16, 2e-2),
        (Precision::Bf16, DType::BF16, 1.5e-1),
    ] {
        let half = precision.apply(model.clone());
        assert_eq!(half.embed_tokens.val().dtype(), dtype);
        assert_eq!(half.layers[0].self_attn.q_proj.weight.val().dtype(), dtype);
        let rope = Rope::new(&config, 64, &device).unwrap();
        let input: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &device);
        let out = half.forward(input, &rope, None);
        assert_eq!(out.dtype(), DType::F32, "{precision:?}: logits are returned in f32");
        let got = out.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let diff = max_abs_diff(&full, &got);
        eprintln!("{precision:?}: max |Δlogit| = {diff}");
        assert!(diff <= tolerance, "{precision:?}: max |Δlogit| = {diff}");
        let s = Sampling {
            max_new_tokens: 6,
            ..Sampling::default()
        };
        assert_eq!(generate(&half, &rope, &[1, 5, 9], &s, true, &device).len(), 6);
    }
}
