//! The GGUF block formats against llama.cpp's own reference (gguf-py's
//! `dequantize`, `fixtures/make_gguf_blocks.py`): every value bit for bit,
//! and the same blocks through a GGUF file babelflow writes and reads back.

use babelflow_model::gguf::file::{write, MetaValue, TensorOut};
use babelflow_model::gguf::quants::dequantize;
use babelflow_model::gguf::{GgmlType, GgufFile};

struct Case {
    ty: GgmlType,
    bytes: Vec<u8>,
    expected: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let path = babelflow_stage::testing::package_dir().join("tests/fixtures/gguf-blocks.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    GgmlType::ALL
        .into_iter()
        .filter_map(|ty| {
            let entry = json.get(ty.name())?;
            let hex = entry["hex"].as_str().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let expected = entry["bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| f32::from_bits(b.as_u64().unwrap() as u32))
                .collect();
            Some(Case { ty, bytes, expected })
        })
        .collect()
}

#[test]
fn every_block_format_dequantises_bit_for_bit_as_gguf_py() {
    let cases = cases();
    let covered: Vec<&str> = cases.iter().map(|c| c.ty.name()).collect();
    assert_eq!(
        covered,
        ["F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "BF16"]
    );
    for c in &cases {
        let got = dequantize(c.ty, &c.bytes);
        assert_eq!(got.len(), c.expected.len(), "{}", c.ty.name());
        for (i, (a, b)) in got.iter().zip(&c.expected).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{} value {i}: {a} vs {b}", c.ty.name());
        }
    }
}

#[test]
fn a_gguf_file_written_with_every_type_reads_back_the_same() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.gguf");
    let metadata = vec![
        ("general.architecture".to_string(), MetaValue::Str("llama".into())),
        ("general.alignment".to_string(), MetaValue::U32(32)),
        (
            "test.list".to_string(),
            MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(7)]),
        ),
        ("test.flag".to_string(), MetaValue::Bool(true)),
        ("test.pi".to_string(), MetaValue::F32(3.25)),
    ];
    let infos: Vec<TensorOut> = cases
        .iter()
        .map(|c| TensorOut {
            name: format!("t.{}", c.ty.name()),
            dims: vec![c.expected.len() as u64],
            ty: c.ty,
        })
        .collect();
    write(&path, &metadata, &infos, &mut |i| Ok(cases[i].bytes.clone())).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(
        f.get("test.list").unwrap(),
        &MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(7)])
    );
    assert_eq!(f.get("test.flag").and_then(MetaValue::as_bool), Some(true));
    assert_eq!(f.get("test.pi").and_then(MetaValue::as_f64), Some(3.25));
    for c in &cases {
        let t = f.tensor(&format!("t.{}", c.ty.name())).unwrap();
        assert_eq!(t.ty, c.ty);
        let got = f.dequantize(t).unwrap();
        assert!(
            got.iter().zip(&c.expected).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}",
            c.ty.name()
        );
    }
}

#[test]
fn broken_files_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    std::fs::write(&path, b"GGML0000").unwrap();
    let err = GgufFile::open(&path).err().unwrap().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
    // A truncated file: the header promises a tensor the data does not hold.
    let infos = [TensorOut {
        name: "w".into(),
        dims: vec![64],
        ty: GgmlType::Q8_0,
    }];
    write(&path, &[], &infos, &mut |_| Ok(vec![0u8; 68])).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..len as usize - 40]).unwrap();
    let err = GgufFile::open(&path).err().unwrap().to_string();
    assert!(
        err.contains("tensor `w`") && err.contains("past the end of the file"),
        "{err}"
    );
    // An unsupported type is named.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(1).position(|w| w == b"w").unwrap() + 1 + 4 + 8;
    bytes[at..at + 4].copy_from_slice(&11u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = GgufFile::open(&path).err().unwrap().to_string();
    assert!(
        err.contains("tensor `w`: ggml type 11 (Q3_K) is not one babelflow reads"),
        "{err}"
    );
}
