//! GGUF out and back in, on files the tests write: a model exported by
//! `export-gguf` and imported by `import-model` is the model it was (F32
//! exactly; F16, BF16 and Q8_0 within their rounding), with the same
//! tokenizer ids and special tokens; and a GGUF whose matrices are stored in
//! every quantised type imports to gguf-py's dequantised values.

mod common;

use std::path::{Path, PathBuf};

use babelflow_model::gguf::file::{write, MetaValue, TensorOut};
use babelflow_model::gguf::quants::dequantize;
use babelflow_model::gguf::{names, GgmlType};
use babelflow_model::{hf, Rope};
use babelflow_tokens::hf::LoadedTokenizer;
use babelflow_tokens::specials::{Overrides, Specials};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{root, smollm2_fixture, stage};
use serde_json::json;

/// export-gguf of `model` as `ty`, then import-model of the file: the new folder.
fn round_trip(dir: &Path, model: &Path, ty: &str) -> PathBuf {
    let exported = stage(
        dir,
        &format!("export-{ty}"),
        "export-gguf",
        json!({"type": ty}),
        &[("model", &[model])],
    );
    let file = exported.join("model.gguf");
    stage(
        dir,
        &format!("import-{ty}"),
        "import-model",
        json!({}),
        &[("checkpoint", &[&file])],
    )
    .join("model")
}

fn logits(model_dir: &Path, ids: &[i64]) -> Vec<f32> {
    let device = Device::flex();
    let (config, model) = hf::load(model_dir, &device).unwrap();
    let rope = Rope::new(&config, ids.len(), &device).unwrap();
    let x: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &device);
    model
        .forward(x, &rope, None)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

fn ids_of(model_dir: &Path, text: &str) -> Vec<u32> {
    let tok = LoadedTokenizer::load(&model_dir.join("tokenizer.json")).unwrap();
    tok.tokenizer.encode(text, false).unwrap().get_ids().to_vec()
}

#[test]
fn a_model_exported_and_imported_is_the_same_model_with_the_same_tokenizer() {
    let fixture = smollm2_fixture();
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("data/samples/mixed/verify.txt")).unwrap();
    let ids: Vec<i64> = ids_of(&fixture, &text)[..24].iter().map(|&i| i as i64).collect();
    let before = logits(&fixture, &ids);
    // (type, largest |Δlogit| allowed)
    // The fixture's logits reach ±15: bf16 keeps 8 bits of mantissa, Q8_0 about 7.
    for (ty, tolerance) in [("f32", 0.0), ("f16", 2e-2), ("bf16", 0.5), ("q8_0", 0.5)] {
        let back = round_trip(dir.path(), &fixture, ty);
        let after = logits(&back, &ids);
        let worst = before
            .iter()
            .zip(&after)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst <= tolerance, "{ty}: max |Δlogit| {worst}");
        assert_eq!(ids_of(&back, &text), ids_of(&fixture, &text), "{ty}: token ids");
        let specials = |d: &Path| {
            let tok = LoadedTokenizer::load(&d.join("tokenizer.json")).unwrap();
            Specials::resolve(&tok, Some(d), &Overrides::default()).unwrap()
        };
        let (a, b) = (specials(&fixture), specials(&back));
        assert_eq!(
            (a.bos, a.eos, a.add_bos, a.chat_template),
            (b.bos, b.eos, b.add_bos, b.chat_template),
            "{ty}"
        );
    }
}

#[test]
fn a_sentencepiece_style_tokenizer_survives_the_round_trip() {
    // babelflow's own LLaMA-2-style tokenizer (byte fallback, ▁ spaces),
    // on a model initialised for it.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = root().join("data/samples/text/sw.txt");
    let table = stage(d, "corpus", "ingest", json!({"lang": "sw"}), &[("files", &[&text])]).join("corpus.parquet");
    let tok = stage(
        d,
        "tok",
        "train-tokenizer",
        json!({"vocab_size": 400}),
        &[("corpus", &[&table])],
    )
    .join("tokenizer.json");
    let model = stage(
        d,
        "init",
        "init-model",
        json!({"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}),
        &[("tokenizer", &[&tok])],
    )
    .join("model");
    let back = round_trip(d, &model, "f32");
    let sample = std::fs::read_to_string(&text).unwrap();
    assert_eq!(ids_of(&back, &sample), ids_of(&model, &sample));
    let ids: Vec<i64> = ids_of(&model, &sample)[..16].iter().map(|&i| i as i64).collect();
    assert_eq!(logits(&back, &ids), logits(&model, &ids));
}

/// A GGUF whose matrices are stored in each quantised type (gguf-py's
/// reference blocks, cycled to fill them) imports to exactly those values.
#[test]
fn every_quantised_type_imports_to_the_reference_values() {
    let blocks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("stages/model/tests/fixtures/gguf-blocks.json")).unwrap())
            .unwrap();
    let bytes_of = |ty: GgmlType| -> Vec<u8> {
        let hex = blocks[ty.name()]["hex"].as_str().unwrap();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let (d, heads, kv, inter, vocab) = (256u64, 4usize, 2usize, 256u64, 8u64);
    // (llama.cpp name, dims innermost first, type)
    let matrices: [(&str, [u64; 2], GgmlType); 7] = [
        ("blk.0.attn_q.weight", [d, d], GgmlType::Q4_K),
        ("blk.0.attn_k.weight", [d, d / 2], GgmlType::Q5_K),
        ("blk.0.attn_v.weight", [d, d / 2], GgmlType::Q6_K),
        ("blk.0.attn_output.weight", [d, d], GgmlType::Q4_0),
        ("blk.0.ffn_gate.weight", [d, inter], GgmlType::Q4_1),
        ("blk.0.ffn_up.weight", [d, inter], GgmlType::Q5_0),
        ("blk.0.ffn_down.weight", [inter, d], GgmlType::Q5_1),
    ];
    let filled = |ty: GgmlType, n: u64| -> Vec<u8> {
        let unit = bytes_of(ty);
        let need = ty.bytes_for(n as usize).unwrap();
        unit.iter().cycle().take(need).copied().collect()
    };
    let mut infos = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    let mut push = |name: &str, dims: Vec<u64>, ty: GgmlType, bytes: Vec<u8>| {
        infos.push(TensorOut {
            name: name.into(),
            dims,
            ty,
        });
        data.push(bytes);
    };
    push(
        "token_embd.weight",
        vec![d, vocab],
        GgmlType::Q8_0,
        filled(GgmlType::Q8_0, d * vocab),
    );
    push(
        "output_norm.weight",
        vec![d],
        GgmlType::F32,
        vec![0u8; (d * 4) as usize]
            .iter()
            .enumerate()
            .map(|(i, _)| {
                if i % 4 == 3 {
                    0x3f
                } else if i % 4 == 2 {
                    0x80
                } else {
                    0
                }
            })
            .collect(),
    );
    for (name, dims, ty) in &matrices {
        push(name, dims.to_vec(), *ty, filled(*ty, dims[0] * dims[1]));
    }
    for norm in ["blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"] {
        push(norm, vec![d], GgmlType::F16, filled(GgmlType::F16, d));
    }
    let tokens: Vec<MetaValue> = ["<unk>", "<s>", "</s>", "a", "b", "c", "ab", "abc"]
        .iter()
        .map(|t| MetaValue::Str(t.to_string()))
        .collect();
    let u = |v: u64| MetaValue::U32(v as u32);
    let metadata = vec![
        ("general.architecture".to_string(), MetaValue::Str("llama".into())),
        ("llama.embedding_length".into(), u(d)),
        ("llama.block_count".into(), u(1)),
        ("llama.feed_forward_length".into(), u(inter)),
        ("llama.attention.head_count".into(), u(heads as u64)),
        ("llama.attention.head_count_kv".into(), u(kv as u64)),
        ("llama.context_length".into(), u(64)),
        ("tokenizer.ggml.model".into(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::Str("default".into())),
        ("tokenizer.ggml.tokens".into(), MetaValue::Array(tokens)),
        (
            "tokenizer.ggml.merges".into(),
            MetaValue::Array(vec![MetaValue::Str("a b".into()), MetaValue::Str("ab c".into())]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u(1)),
        ("tokenizer.ggml.eos_token_id".into(), u(2)),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quants.gguf");
    write(&file, &metadata, &infos, &mut |i| Ok(data[i].clone())).unwrap();
    let out = stage(
        dir.path(),
        "imported",
        "import-model",
        json!({}),
        &[("checkpoint", &[&file])],
    );

    let weights = safetensors_f32(&out.join("model/model.safetensors"));
    for (i, info) in infos.iter().enumerate() {
        let hf = names::hf_name(&info.name).unwrap();
        let mut want = dequantize(info.ty, &data[i]);
        if let Some(h) = names::permuted_heads(&hf, heads, kv) {
            want = names::unpermute(&want, info.dims[1] as usize, info.dims[0] as usize, h);
        }
        let got = &weights[&hf];
        assert!(
            got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{} ({}) differs after import",
            info.name,
            info.ty.name()
        );
    }
}

/// Every tensor of an f32 safetensors file.
fn safetensors_f32(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let [a, b] = [
                v["data_offsets"][0].as_u64().unwrap() as usize,
                v["data_offsets"][1].as_u64().unwrap() as usize,
            ];
            let data = &bytes[8 + n + a..8 + n + b];
            (
                k,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn a_q8_0_export_names_every_tensor_it_wrote_in_another_type() {
    let dir = tempfile::tempdir().unwrap();
    let out = stage(
        dir.path(),
        "q8",
        "export-gguf",
        json!({"type": "q8_0"}),
        &[("model", &[&smollm2_fixture()])],
    );
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    let file = babelflow_model::gguf::GgufFile::open(&out.join("model.gguf")).unwrap();
    // What the file holds: every matrix not stored Q8_0 is listed, with why.
    let not_q8: Vec<&str> = file
        .tensors
        .iter()
        .filter(|t| t.dims.len() == 2 && t.ty != GgmlType::Q8_0)
        .map(|t| t.name.as_str())
        .collect();
    assert!(!not_q8.is_empty(), "the fixture's 48-wide rows are not whole blocks");
    let listed: Vec<&str> = stats["fallbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["tensor"].as_str().unwrap())
        .collect();
    assert_eq!(listed, not_q8);
    assert_eq!(
        stats["fallbacks"][0]["why"],
        "its rows of 48 values are not whole Q8_0 blocks of 32"
    );
    let counted: u64 = stats["stored_types"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, file.tensors.len());
    assert!(stats["stored_types"]["Q8_0"].as_u64().unwrap() >= 1, "{stats}");
}

/// The study's EXT path: a base tokenizer trained on English, extended on
/// Swahili, a model resized for it, exported to GGUF and imported back.
/// Every added token is reachable (no dead rows), and the imported
/// tokenizer gives the ids the model was trained with, for both styles.
#[test]
fn an_extended_vocabulary_keeps_its_ids_through_gguf() {
    let samples = root().join("data/samples/text");
    for (style, base_vocab) in [("sentencepiece", 500), ("byte-level", 600)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let en_txt = samples.join("en.txt");
        let sw_txt = samples.join("sw.txt");
        let en = stage(d, "en", "ingest", json!({"lang": "en"}), &[("files", &[&en_txt])]).join("corpus.parquet");
        let sw = stage(d, "sw", "ingest", json!({"lang": "sw"}), &[("files", &[&sw_txt])]).join("corpus.parquet");
        let base = stage(
            d,
            "base",
            "train-tokenizer",
            json!({"vocab_size": base_vocab, "style": style}),
            &[("corpus", &[&en])],
        )
        .join("tokenizer.json");
        let ext = stage(
            d,
            "ext",
            "extend-vocab",
            json!({"new_tokens": 1000, "train_vocab_size": 4000, "min_frequency": 1}),
            &[("tokenizer", &[&base]), ("corpus", &[&sw])],
        );
        let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(ext.join("stats.json")).unwrap()).unwrap();
        assert!(stats["added"].as_u64().unwrap() > 100, "{style}: {stats}");
        let init = stage(
            d,
            "init",
            "init-model",
            json!({"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}),
            &[("tokenizer", &[&base])],
        )
        .join("model");
        let added = ext.join("added_tokens.json");
        let ext_tok = ext.join("tokenizer.json");
        let resized = stage(
            d,
            "resized",
            "resize-vocab",
            json!({}),
            &[("model", &[&init]), ("added", &[&added]), ("tokenizer", &[&ext_tok])],
        )
        .join("model");
        let back = round_trip(d, &resized, "f32");
        for text in [&sw_txt, &en_txt] {
            let text = std::fs::read_to_string(text).unwrap();
            let (want, got) = (ids_of(&resized, &text), ids_of(&back, &text));
            assert_eq!(got.len(), want.len(), "{style}: token counts");
            assert_eq!(got, want, "{style}: ids");
        }
    }
}
