//! Special tokens and chat templates as transformers reads them, on the
//! SmolLM2-layout fixture transformers wrote
//! (`stages/model/tests/fixtures/hf-smollm2`). The expected ids are
//! transformers 5.25's own (`AutoTokenizer.from_pretrained(...)`):
//! `tokenizer("Hello 2024 world")` and
//! `apply_chat_template([user "a", assistant "B"], tokenize=True)`.

use std::path::PathBuf;

use babelflow_tokens::chat::{ChatTemplate, Message};
use babelflow_tokens::hf::LoadedTokenizer;
use babelflow_tokens::specials::{Overrides, Specials};

fn smollm2() -> PathBuf {
    babelflow_stage::testing::package_dir().join("../model/tests/fixtures/hf-smollm2")
}

fn load() -> (LoadedTokenizer, Specials) {
    let tok = LoadedTokenizer::load(&smollm2().join("tokenizer.json")).unwrap();
    let specials = Specials::resolve(&tok, Some(&smollm2()), &Overrides::default()).unwrap();
    (tok, specials)
}

#[test]
fn smollm2s_special_tokens_come_from_its_tokenizer_config() {
    let (_, s) = load();
    assert_eq!(
        s.bos.as_ref().map(|t| (t.text.as_str(), t.id)),
        Some(("<|im_start|>", 1))
    );
    assert_eq!(s.eos.as_ref().map(|t| (t.text.as_str(), t.id)), Some(("<|im_end|>", 2)));
    assert_eq!(s.pad.as_ref().map(|t| t.id), Some(2));
    assert_eq!(s.unk.as_ref().map(|t| t.text.as_str()), Some("<|endoftext|>"));
    assert!(!s.add_bos, "add_bos_token: false");
    assert!(s.prefix().is_empty());
    assert_eq!(
        s.context_token().map(|t| t.id),
        Some(2),
        "documents are scored after EOS"
    );
    assert_eq!(s.stop, vec![2]);
    assert_eq!(s.sources["add_bos"], "tokenizer_config.json `add_bos_token`");
    assert_eq!(s.sources["bos"], "tokenizer_config.json");
    assert!(s.chat_template.as_deref().unwrap().contains("<|im_start|>"));
}

#[test]
fn a_stage_override_wins_and_an_unknown_token_is_refused() {
    let tok = LoadedTokenizer::load(&smollm2().join("tokenizer.json")).unwrap();
    let over = Overrides {
        add_bos: Some(true),
        eos_token: Some("<|endoftext|>".into()),
        ..Overrides::default()
    };
    let s = Specials::resolve(&tok, Some(&smollm2()), &over).unwrap();
    assert_eq!(s.prefix(), vec![1]);
    assert_eq!(s.eos.map(|t| t.id), Some(0));
    let bad = Overrides {
        bos_token: Some("<s>".into()),
        ..Overrides::default()
    };
    let err = Specials::resolve(&tok, Some(&smollm2()), &bad).unwrap_err().to_string();
    assert!(
        err.contains("parameter `bos_token` `<s>` is not a token of this tokenizer"),
        "{err}"
    );
}

#[test]
fn ids_and_chat_ids_equal_transformers() {
    let (tok, s) = load();
    let ids = tok
        .tokenizer
        .encode("Hello 2024 world", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids, [42, 71, 462, 81, 223, 20, 18, 20, 22, 309, 323, 78, 70]);
    let chat = ChatTemplate::new(s.chat_template.as_deref().unwrap(), &s).unwrap();
    let e = chat
        .encode(&tok, &[Message::new("user", "a"), Message::new("assistant", "B")])
        .unwrap();
    let transformers: [u32; 81] = [
        1, 85, 473, 86, 71, 79, 201, 59, 81, 87, 291, 84, 71, 291, 223, 269, 78, 82, 72, 87, 78, 223, 35, 43, 291, 85,
        85, 335, 86, 267, 86, 319, 79, 71, 70, 223, 53, 79, 81, 78, 46, 47, 14, 268, 401, 276, 71, 70, 308, 91, 223,
        42, 87, 73, 73, 318, 223, 40, 67, 367, 2, 201, 1, 87, 85, 312, 201, 67, 2, 201, 1, 303, 85, 335, 86, 267, 86,
        201, 36, 2, 201,
    ];
    assert_eq!(e.ids, transformers);
    // The loss counts the answer "B", its <|im_end|> and the newline after: the last three targets.
    let counted: Vec<u32> = e
        .weights
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0.0)
        .map(|(j, _)| e.ids[j + 1])
        .collect();
    assert_eq!(counted, [36, 2, 201]);
    assert_eq!(chat.end_of_turn(&tok), Some(2));
}

/// A copy of the SmolLM2 fixture's tokenizer files with `edit` applied to
/// (tokenizer_config.json, tokenizer.json).
fn edited(dir: &std::path::Path, edit: impl Fn(&mut serde_json::Value, &mut serde_json::Value)) -> LoadedTokenizer {
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(smollm2().join(name)).unwrap()).unwrap()
    };
    let (mut config, mut tokenizer) = (read("tokenizer_config.json"), read("tokenizer.json"));
    edit(&mut config, &mut tokenizer);
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    LoadedTokenizer::load(&dir.join("tokenizer.json")).unwrap()
}

#[test]
fn a_flag_written_as_a_string_is_refused_with_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let tok = edited(dir.path(), |config, _| config["add_bos_token"] = "false".into());
    let err = Specials::resolve(&tok, Some(dir.path()), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer_config.json: `add_bos_token` is \"false\", not a boolean: write true or false"),
        "{err}"
    );
}

#[test]
fn every_source_that_disagrees_about_bos_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // add_bos_token: false (the fixture's), and a post-processor that adds BOS.
    let tok = edited(dir.path(), |_, tokenizer| {
        tokenizer["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}
        })
    });
    let s = Specials::resolve(&tok, Some(dir.path()), &Overrides::default()).unwrap();
    assert!(!s.add_bos, "tokenizer_config.json wins");
    assert_eq!(s.sources["add_bos"], "tokenizer_config.json `add_bos_token`");
    assert_eq!(
        s.sources["add_bos_ignored"],
        "the tokenizer.json post-processor says true"
    );
    assert_eq!(
        s.describe()["sources"]["add_bos_ignored"],
        "the tokenizer.json post-processor says true"
    );

    // A stage's own add_bos: true over both; the file that said false is recorded.
    let over = Overrides {
        add_bos: Some(true),
        ..Overrides::default()
    };
    let s = Specials::resolve(&tok, Some(dir.path()), &over).unwrap();
    assert!(s.add_bos);
    assert_eq!(
        s.sources["add_bos_ignored"],
        "tokenizer_config.json `add_bos_token` says false"
    );
}
