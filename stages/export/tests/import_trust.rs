//! What `import-model` must never get silently wrong. Damaged and mistaken
//! checkpoints: each a located error that says what is wrong with the file,
//! never an import of garbage (one row per case: how the file was damaged,
//! starting from a GGUF that `export-gguf` wrote or the HF fixture, and
//! what the message must say). And settings: `dtype:` is applied to an HF
//! folder, not dropped.

mod common;

use std::path::{Path, PathBuf};

use babelflow_model::gguf::file::GgufFile;
use common::{smollm2_fixture as fixture, stage, try_stage};
use serde_json::json;

/// A sound GGUF of the fixture, its bytes and its tensor table.
struct Sound {
    bytes: Vec<u8>,
    /// (name, byte position of its offset field, offset)
    tensors: Vec<(String, usize, u64)>,
}

fn sound_gguf(dir: &Path) -> Sound {
    let out = stage(
        dir,
        "export",
        "export-gguf",
        json!({"type": "f32"}),
        &[("model", &[&fixture()])],
    );
    let path = out.join("model.gguf");
    let file = GgufFile::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let tensors = file
        .tensors
        .iter()
        .map(|t| {
            // A tensor description: name length, name, dim count, dims, type, offset.
            let mut named = (t.name.len() as u64).to_le_bytes().to_vec();
            named.extend_from_slice(t.name.as_bytes());
            let at = bytes.windows(named.len()).position(|w| w == named).unwrap();
            let field = at + named.len() + 4 + 8 * t.dims.len() + 4;
            assert_eq!(
                u64::from_le_bytes(bytes[field..field + 8].try_into().unwrap()),
                t.offset
            );
            (t.name.clone(), field, t.offset)
        })
        .collect();
    Sound { bytes, tensors }
}

/// A sound GGUF of the fixture, as a file.
fn sound_file(dir: &Path) -> PathBuf {
    let path = dir.join("sound.gguf");
    std::fs::write(&path, sound_gguf(dir).bytes).unwrap();
    path
}

fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A mistake: the checkpoint it leaves (written under `dir`) and what the
/// import's error must say (every fragment).
struct Case {
    mistake: &'static str,
    make: fn(&Sound, &Path) -> (PathBuf, Vec<String>),
}

fn gguf_with(dir: &Path, bytes: &[u8]) -> PathBuf {
    let path = dir.join("damaged.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

const CASES: &[Case] = &[
    Case {
        mistake: "an empty .gguf file",
        make: |_, dir| (gguf_with(dir, b""), vec!["empty file (0 bytes)".into()]),
    },
    Case {
        mistake: "a file with GGML's old magic",
        make: |s, dir| {
            let mut b = s.bytes.clone();
            b[..4].copy_from_slice(b"GGML");
            (
                gguf_with(dir, &b),
                vec!["not a GGUF file (magic `GGML`, expected `GGUF`)".into()],
            )
        },
    },
    Case {
        mistake: "a header that claims an absurd tensor count",
        make: |s, dir| {
            let mut b = s.bytes.clone();
            set_u64(&mut b, 8, 17214436811902163250);
            (
                gguf_with(dir, &b),
                vec!["the header lists 17214436811902163250 tensors, and the".into()],
            )
        },
    },
    Case {
        mistake: "a header that claims one tensor more than it describes",
        make: |s, dir| {
            let mut b = s.bytes.clone();
            let n = s.tensors.len() as u64;
            set_u64(&mut b, 8, n + 1);
            let last = &s.tensors.last().unwrap().0;
            (
                gguf_with(dir, &b),
                vec![format!(
                    "the header lists {} tensors; reading tensor {} (after `{last}`)",
                    n + 1,
                    n + 1
                )],
            )
        },
    },
    Case {
        mistake: "a tensor offset moved by 4 bytes (misaligned)",
        make: |s, dir| {
            let mut b = s.bytes.clone();
            let (name, field, offset) = &s.tensors[3];
            set_u64(&mut b, *field, offset + 4);
            (
                gguf_with(dir, &b),
                vec![format!(
                    "tensor `{name}`: its data offset is {}, expected {offset} (not a multiple of general.alignment (32))",
                    offset + 4
                )],
            )
        },
    },
    Case {
        mistake: "a tensor offset pointing at the tensor before it",
        make: |s, dir| {
            let mut b = s.bytes.clone();
            let (_, _, before) = &s.tensors[4];
            let (name, field, offset) = &s.tensors[5];
            set_u64(&mut b, *field, *before);
            (
                gguf_with(dir, &b),
                vec![format!(
                    "tensor `{name}`: its data offset is {before}, expected {offset} (inside the tensors before it)"
                )],
            )
        },
    },
    Case {
        mistake: "a file cut short inside the last tensor",
        make: |s, dir| {
            let b = &s.bytes[..s.bytes.len() - 100];
            let name = &s.tensors.last().unwrap().0;
            (
                gguf_with(dir, b),
                vec![
                    format!("tensor `{name}`: its 192 bytes at data offset"),
                    format!(
                        "run past the end of the file ({} bytes): the file is cut short",
                        b.len()
                    ),
                ],
            )
        },
    },
    Case {
        mistake: "pickled PyTorch weights given as the checkpoint",
        make: |_, dir| {
            let path = dir.join("pytorch_model.bin");
            std::fs::write(&path, b"PK\x03\x04 not read").unwrap();
            (
                path,
                vec!["pickled PyTorch weights; babelflow reads safetensors, not pickles".into()],
            )
        },
    },
    Case {
        mistake: "a folder with only pytorch_model.bin",
        make: |_, dir| {
            let folder = dir.join("pickled");
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::copy(fixture().join("config.json"), folder.join("config.json")).unwrap();
            std::fs::write(folder.join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
            (
                folder,
                vec!["only pytorch_model.bin: pickled PyTorch weights; babelflow reads safetensors".into()],
            )
        },
    },
    Case {
        mistake: "a config whose bos_token_id is past the vocabulary",
        make: |_, dir| {
            let folder = dir.join("bad-bos");
            std::fs::create_dir_all(&folder).unwrap();
            for e in std::fs::read_dir(fixture()).unwrap().flatten() {
                std::fs::copy(e.path(), folder.join(e.file_name())).unwrap();
            }
            let mut config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
            config["bos_token_id"] = json!(5000);
            let vocab = config["vocab_size"].as_u64().unwrap();
            std::fs::write(folder.join("config.json"), config.to_string()).unwrap();
            (
                folder,
                vec![format!(
                    "bos_token_id 5000 is not a token of this model (vocab_size {vocab}"
                )],
            )
        },
    },
];

#[test]
fn damaged_or_mistaken_checkpoints_are_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let sound = sound_gguf(dir.path());
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let work = dir.path().join(format!("case-{i}"));
        std::fs::create_dir_all(&work).unwrap();
        let (checkpoint, says) = (case.make)(&sound, &work);
        let (_, result) = try_stage(
            &work,
            "out",
            "import-model",
            json!({}),
            &[("checkpoint", &[&checkpoint])],
        );
        match result {
            Ok(()) => failures.push(format!("{}: imported without an error", case.mistake)),
            Err(e) if !says.iter().all(|part| e.to_string().contains(part)) => {
                failures.push(format!("{}:\n  said: {e}\n  want: {}", case.mistake, says.join(" … ")))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_gguf_imports_tokenizer_summary_counts_tokens_and_merges_apart() {
    let dir = tempfile::tempdir().unwrap();
    let file = GgufFile::open(&sound_file(dir.path())).unwrap();
    let tok = babelflow_model::gguf::vocab::to_hf(&file).unwrap();
    let fixture_tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("tokenizer.json")).unwrap()).unwrap();
    let merges = fixture_tok["model"]["merges"].as_array().unwrap().len();
    let tokens = file.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap().len();
    assert_ne!(tokens, merges, "the fixture tells the two counts apart");
    assert!(
        tok.summary.contains(&format!("{tokens} tokens, {merges} merges")),
        "{}",
        tok.summary
    );
}

/// A plan knows a GGUF's shape before importing it: the config its header
/// implies, the one the import writes.
#[test]
fn a_ggufs_shape_is_known_before_it_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let path = sound_file(dir.path());
    let estimate = babelflow_stage::testing::estimate_kind(
        common::kind("import-model").as_ref(),
        json!({}),
        &[("checkpoint", &[&path])],
    )
    .unwrap();
    let planned = estimate.outputs["model"].model.clone().expect("the GGUF's shape");
    let imported = stage(
        dir.path(),
        "import",
        "import-model",
        json!({}),
        &[("checkpoint", &[&path])],
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(imported.join("model/config.json")).unwrap()).unwrap();
    // Every field the plan states is the one the import writes (the import
    // adds HF's bookkeeping: architectures, model_type, use_cache, …).
    let stated = planned.config.as_object().unwrap();
    assert!(stated.contains_key("num_key_value_heads") && stated.contains_key("vocab_size"));
    for (key, value) in stated.iter().filter(|(_, v)| !v.is_null()) {
        assert_eq!(value, &written[key], "{key}");
    }
}

#[test]
fn a_gguf_bound_as_a_tokenizer_says_to_import_it() {
    let dir = tempfile::tempdir().unwrap();
    let sound = sound_gguf(dir.path());
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, &sound.bytes).unwrap();
    let err = babelflow_tokens::hf::LoadedTokenizer::load(&path).err().unwrap();
    assert!(
        err.to_string()
            .contains("a GGUF model file, not a tokenizer.json: bring it in with an `import-model` stage"),
        "{err}"
    );
}

/// Every tensor of a safetensors file: (dtype, raw bytes).
fn stored(path: &Path) -> std::collections::BTreeMap<String, (String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| (name, (format!("{:?}", v.dtype()), v.data().to_vec())))
        .collect()
}

fn import(dir: &Path, name: &str, params: serde_json::Value) -> PathBuf {
    stage(dir, name, "import-model", params, &[("checkpoint", &[&fixture()])]).join("model")
}

#[test]
fn dtype_bf16_on_an_hf_folder_stores_bf16_and_the_default_copies_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let original = stored(&fixture().join("model.safetensors"));
    assert!(original.values().all(|(dtype, _)| dtype == "F32"), "the fixture is f32");

    let bf16 = import(dir.path(), "bf16", json!({"dtype": "bf16"}));
    let converted = stored(&bf16.join("model.safetensors"));
    assert_eq!(converted.len(), original.len());
    for (name, (dtype, bytes)) in &converted {
        assert_eq!(dtype, "BF16", "{name}");
        // Round to nearest even, as torch's `.to(torch.bfloat16)`.
        let want: Vec<u8> = original[name]
            .1
            .chunks_exact(4)
            .flat_map(|c| half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
            .collect();
        assert_eq!(bytes, &want, "{name}");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(bf16.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["dtype"], "bfloat16", "transformers 5 reads `dtype`");
    babelflow_model::hf::load(&bf16, &burn::tensor::Device::flex()).unwrap();

    let as_stored = import(dir.path(), "default", json!({}));
    assert_eq!(stored(&as_stored.join("model.safetensors")), original);
}
