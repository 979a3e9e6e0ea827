//! Special tokens, read as transformers reads them, in the one place every
//! kind that binds text to a model asks (tokenize, pretrain's data, sft,
//! perplexity, exam, respond, extend-vocab, resize-vocab).
//!
//! Which token is BOS, EOS, PAD or UNK, in this order (the first that
//! says wins; later sources that disagree are recorded, not used):
//! 1. the stage's own parameter (`bos_token`, `eos_token`);
//! 2. `tokenizer_config.json` (`bos_token`, …: a string or an AddedToken
//!    object; `null` means "none");
//! 3. `special_tokens_map.json`;
//! 4. `generation_config.json`, then `config.json` (`bos_token_id`, …; an
//!    `eos_token_id` list names several stop tokens, the first is EOS);
//! 5. the LLaMA defaults: `<s>` / `<|begin_of_text|>` / `<bos>`, `</s>` /
//!    `<|end_of_text|>` / `<eos>` / `<|endoftext|>`, `<unk>`, `<pad>` /
//!    `<|finetune_right_pad_id|>`, whichever the vocabulary has.
//!
//! Whether a text starts with BOS (and ends with EOS) the way the model saw
//! it in training: the stage's `add_bos` / `add_eos`, else
//! `tokenizer_config.json`'s `add_bos_token` / `add_eos_token`, else the
//! tokenizer.json post-processor (a `TemplateProcessing` that puts a
//! special token first or last), else the LLaMA default: BOS yes when the
//! tokenizer has one, EOS no. SmolLM2 (`add_bos_token: false`, no template)
//! gets no BOS; LLaMA-2 and LLaMA-3 (`<s> $A`, `<|begin_of_text|> $A`) do.
//!
//! The chat template is `tokenizer_config.json`'s `chat_template` (a string,
//! or the entry named `default` of a list), else a `chat_template.jinja`
//! file beside it. Stop tokens for generation: EOS, every id of
//! `eos_token_id` in generation_config.json / config.json, and the chat
//! template's end-of-turn token when there is a template.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use babelflow_stage::{ParamSpec, ParamType, Params, StageError};
use serde_json::{json, Value};

use crate::hf::LoadedTokenizer;

pub const BOS_NAMES: &[&str] = &["<s>", "<|begin_of_text|>", "<bos>"];
pub const EOS_NAMES: &[&str] = &["</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"];
const UNK_NAMES: &[&str] = &["<unk>"];
const PAD_NAMES: &[&str] = &["<pad>", "<|finetune_right_pad_id|>"];

/// A special token: its text and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub id: u32,
}

/// The parameters of every kind that binds text to a model, for when the
/// model's files do not say (or say wrong).
pub const PARAMS: [ParamSpec; 3] = [
    ParamSpec::optional(
        "add_bos",
        ParamType::Bool,
        "start texts with BOS (default: as the model's tokenizer does: tokenizer_config.json's add_bos_token, \
         else its post-processor, else yes when it has a BOS token)",
    ),
    ParamSpec::optional(
        "bos_token",
        ParamType::Str,
        "the BOS token's text (default: tokenizer_config.json, special_tokens_map.json, config.json, then the \
         LLaMA names)",
    ),
    ParamSpec::optional(
        "eos_token",
        ParamType::Str,
        "the EOS token's text (default: tokenizer_config.json, special_tokens_map.json, config.json, then the \
         LLaMA names)",
    ),
];

/// The overrides a stage's `PARAMS` give.
pub fn overrides_of(p: &Params) -> Result<Overrides, StageError> {
    Ok(Overrides {
        bos_token: p.opt_str("bos_token")?.map(str::to_string),
        eos_token: p.opt_str("eos_token")?.map(str::to_string),
        add_bos: p.opt_bool("add_bos")?,
        add_eos: None,
    })
}

/// What a stage asks for itself, over the files.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
}

/// The resolved special tokens of a tokenizer (and its model folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Specials {
    pub bos: Option<Token>,
    pub eos: Option<Token>,
    pub pad: Option<Token>,
    pub unk: Option<Token>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// Ids that end a generated answer (EOS first).
    pub stop: Vec<u32>,
    pub chat_template: Option<String>,
    /// For each choice, where it came from; disagreements as `…_ignored`.
    pub sources: BTreeMap<String, String>,
}

/// The JSON files beside a tokenizer.json that say something about its tokens.
struct Files {
    tokenizer_config: Option<(PathBuf, Value)>,
    special_tokens_map: Option<(PathBuf, Value)>,
    generation_config: Option<(PathBuf, Value)>,
    config: Option<(PathBuf, Value)>,
    template_file: Option<(PathBuf, String)>,
}

fn read_json(path: PathBuf) -> Result<Option<(PathBuf, Value)>, StageError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| StageError::io(&path, e))?;
    let value = serde_json::from_str(&text).map_err(|e| StageError::input(&path, None, format!("not JSON: {e}")))?;
    Ok(Some((path, value)))
}

impl Files {
    fn read(dir: Option<&Path>) -> Result<Files, StageError> {
        let Some(dir) = dir else {
            return Ok(Files {
                tokenizer_config: None,
                special_tokens_map: None,
                generation_config: None,
                config: None,
                template_file: None,
            });
        };
        let template = dir.join("chat_template.jinja");
        let template_file = if template.is_file() {
            let text = std::fs::read_to_string(&template).map_err(|e| StageError::io(&template, e))?;
            Some((template, text))
        } else {
            None
        };
        Ok(Files {
            tokenizer_config: read_json(dir.join("tokenizer_config.json"))?,
            special_tokens_map: read_json(dir.join("special_tokens_map.json"))?,
            generation_config: read_json(dir.join("generation_config.json"))?,
            config: read_json(dir.join("config.json"))?,
            template_file,
        })
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A token as tokenizer_config.json / special_tokens_map.json write it:
/// `"<s>"`, `{"content": "<s>", ...}`, or `null`.
fn token_text(value: &Value) -> Option<Option<String>> {
    match value {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s.clone())),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(|s| Some(s.to_string())),
        _ => None,
    }
}

/// Ids of an `*_token_id` entry: a number or a list of numbers.
fn token_ids(value: &Value) -> Vec<u32> {
    match value {
        Value::Number(n) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        Value::Array(items) => items.iter().filter_map(|v| v.as_u64().map(|id| id as u32)).collect(),
        _ => Vec::new(),
    }
}

impl Specials {
    /// Resolves the special tokens of `tok`, whose folder (the model
    /// folder, or the tokenizer.json's own) is `dir`.
    pub fn resolve(tok: &LoadedTokenizer, dir: Option<&Path>, overrides: &Overrides) -> Result<Specials, StageError> {
        let files = Files::read(dir)?;
        let mut sources = BTreeMap::new();
        let lookup = |text: &str| {
            tok.tokenizer.token_to_id(text).map(|id| Token {
                text: text.to_string(),
                id,
            })
        };
        let by_id = |id: u32| tok.tokenizer.id_to_token(id).map(|text| Token { text, id });

        let mut resolve_one =
            |role: &str, wanted: Option<&String>, names: &[&str]| -> Result<Option<Token>, StageError> {
                let key = format!("{role}_token");
                if let Some(text) = wanted {
                    let found = lookup(text).ok_or_else(|| StageError::Param {
                        name: key.clone(),
                        message: format!("`{text}` is not a token of this tokenizer"),
                    })?;
                    sources.insert(role.to_string(), format!("the stage's `{key}`"));
                    return Ok(Some(found));
                }
                let mut chosen: Option<(Option<Token>, String)> = None;
                let mut note =
                    |token: Option<Token>, from: String, sources: &mut BTreeMap<String, String>| match &chosen {
                        None => chosen = Some((token, from)),
                        Some((c, _)) if c.as_ref().map(|t| t.id) != token.as_ref().map(|t| t.id) => {
                            let said = token.map_or("none".to_string(), |t| format!("{} (id {})", t.text, t.id));
                            sources.insert(format!("{role}_ignored"), format!("{from} says {said}"));
                        }
                        Some(_) => {}
                    };
                for (path, value) in [&files.tokenizer_config, &files.special_tokens_map]
                    .into_iter()
                    .flatten()
                {
                    if let Some(text) = value.get(&key).and_then(token_text) {
                        let token = match &text {
                            Some(t) => Some(lookup(t).ok_or_else(|| {
                                StageError::input(
                                    path,
                                    None,
                                    format!("`{key}` is `{t}`, which the tokenizer does not have"),
                                )
                            })?),
                            None => None,
                        };
                        note(token, file_name(path), &mut sources);
                    }
                }
                for (path, value) in [&files.generation_config, &files.config].into_iter().flatten() {
                    if let Some(&id) = value
                        .get(format!("{role}_token_id"))
                        .map(token_ids)
                        .unwrap_or_default()
                        .first()
                    {
                        note(by_id(id), file_name(path), &mut sources);
                    }
                }
                if chosen.is_none() {
                    if let Some(t) = names.iter().find_map(|n| lookup(n)) {
                        chosen = Some((Some(t), "the LLaMA defaults".into()));
                    }
                }
                Ok(match chosen {
                    Some((token, from)) => {
                        sources.insert(role.to_string(), from);
                        token
                    }
                    None => None,
                })
            };
        let bos = resolve_one("bos", overrides.bos_token.as_ref(), BOS_NAMES)?;
        let eos = resolve_one("eos", overrides.eos_token.as_ref(), EOS_NAMES)?;
        let pad = resolve_one("pad", None, PAD_NAMES)?;
        let unk = resolve_one("unk", None, UNK_NAMES)?;

        let template_adds = post_processor_adds(tok);
        // A flag that is not a boolean (`"false"` is a string, and true in
        // Python) is refused: reading it either way would be a guess.
        let config_flag = |name: &str| -> Result<Option<bool>, StageError> {
            let Some((path, value)) = &files.tokenizer_config else {
                return Ok(None);
            };
            match value.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(StageError::input(
                    path,
                    None,
                    format!("`{name}` is {other}, not a boolean: write true or false (without quotes)"),
                )),
            }
        };
        let add_bos_config = config_flag("add_bos_token")?;
        let add_eos_config = config_flag("add_eos_token")?;
        // The first source that says wins; every later one that says
        // otherwise is recorded as `add_…_ignored`.
        let mut flag = |role: &str, over: Option<bool>, config: Option<bool>, template: Option<bool>, default: bool| {
            let said = [
                (over, format!("the stage's `add_{role}`")),
                (config, format!("tokenizer_config.json `add_{role}_token`")),
                (template, "the tokenizer.json post-processor".to_string()),
            ];
            let mut chosen: Option<bool> = None;
            let mut ignored = Vec::new();
            for (value, from) in said {
                match (value, chosen) {
                    (Some(v), None) => {
                        chosen = Some(v);
                        sources.insert(format!("add_{role}"), from);
                    }
                    (Some(v), Some(c)) if v != c => ignored.push(format!("{from} says {v}")),
                    _ => {}
                }
            }
            if !ignored.is_empty() {
                sources.insert(format!("add_{role}_ignored"), ignored.join("; "));
            }
            chosen.unwrap_or_else(|| {
                sources.insert(format!("add_{role}"), "the LLaMA default".to_string());
                default
            })
        };
        let add_bos = flag(
            "bos",
            overrides.add_bos,
            add_bos_config,
            template_adds.map(|(first, _)| first),
            bos.is_some(),
        );
        let add_eos = flag(
            "eos",
            overrides.add_eos,
            add_eos_config,
            template_adds.map(|(_, last)| last),
            false,
        );
        if add_bos && bos.is_none() {
            return Err(StageError::failed(format!(
                "BOS is to be added ({}) but the tokenizer has no BOS token (looked for {}); set `bos_token`, \
                 or `add_bos: false`",
                sources["add_bos"],
                BOS_NAMES.join(", ")
            )));
        }

        let chat_template = chat_template(&files, &mut sources)?;
        let mut stop: Vec<u32> = eos.iter().map(|t| t.id).collect();
        for (_, value) in [&files.generation_config, &files.config].into_iter().flatten() {
            for id in value.get("eos_token_id").map(token_ids).unwrap_or_default() {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        Ok(Specials {
            bos,
            eos,
            pad,
            unk,
            add_bos,
            add_eos,
            stop,
            chat_template,
            sources,
        })
    }

    /// The special tokens a model is read with: its folder's files decide;
    /// only when the folder has no tokenizer.json of its own (and one is
    /// bound, at `tokenizer_path`) does that tokenizer's folder.
    pub fn for_model(
        tok: &LoadedTokenizer,
        model_dir: &Path,
        tokenizer_path: &Path,
        overrides: &Overrides,
    ) -> Result<Specials, StageError> {
        let folder = if model_dir.join("tokenizer.json").is_file() {
            Some(model_dir)
        } else {
            tokenizer_path.parent()
        };
        Specials::resolve(tok, folder, overrides)
    }

    /// The `BOS` (when added) for the start of a text.
    pub fn prefix(&self) -> Vec<u32> {
        match (&self.bos, self.add_bos) {
            (Some(b), true) => vec![b.id],
            _ => Vec::new(),
        }
    }

    /// The token a whole document is scored from: BOS when the model's
    /// texts start with it, else EOS (documents follow one another after an
    /// EOS in pretraining, as GPT-2-style models like SmolLM2 were trained),
    /// else none (the first token is then not scored).
    pub fn context_token(&self) -> Option<&Token> {
        if self.add_bos {
            self.bos.as_ref()
        } else {
            self.eos.as_ref()
        }
    }

    /// The padding id for batches: PAD, else EOS, else 0 (never a loss position).
    pub fn pad_id(&self) -> u32 {
        self.pad.as_ref().or(self.eos.as_ref()).map_or(0, |t| t.id)
    }

    /// What the stage used, for its stats.json.
    pub fn describe(&self) -> Value {
        let t = |t: &Option<Token>| t.as_ref().map(|t| json!({"text": t.text, "id": t.id}));
        json!({
            "bos": t(&self.bos),
            "eos": t(&self.eos),
            "pad": t(&self.pad),
            "unk": t(&self.unk),
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
            "stop_ids": self.stop,
            "chat_template": self.chat_template.is_some(),
            "sources": self.sources,
        })
    }
}

/// (adds a special token first, adds one last) per the tokenizer.json's
/// `TemplateProcessing` post-processor (alone or inside a `Sequence`), or
/// `None` when it has none.
fn post_processor_adds(tok: &LoadedTokenizer) -> Option<(bool, bool)> {
    let text = tok.tokenizer.to_string(false).ok()?;
    let json: Value = serde_json::from_str(&text).ok()?;
    let mut processors = vec![json.get("post_processor")?.clone()];
    if processors[0]["type"] == "Sequence" {
        processors = processors[0]["processors"].as_array().cloned().unwrap_or_default();
    }
    let template = processors.iter().find(|p| p["type"] == "TemplateProcessing")?;
    let single = template["single"].as_array()?;
    let special = |piece: Option<&Value>| piece.is_some_and(|p| p.get("SpecialToken").is_some());
    Some((special(single.first()), special(single.last())))
}

fn chat_template(files: &Files, sources: &mut BTreeMap<String, String>) -> Result<Option<String>, StageError> {
    if let Some((path, config)) = &files.tokenizer_config {
        match config.get("chat_template") {
            Some(Value::String(t)) => {
                sources.insert("chat_template".into(), file_name(path));
                return Ok(Some(t.clone()));
            }
            Some(Value::Array(named)) => {
                let default = named
                    .iter()
                    .find(|e| e["name"] == "default")
                    .or(named.first())
                    .and_then(|e| e["template"].as_str());
                if let Some(t) = default {
                    sources.insert(
                        "chat_template".into(),
                        format!("{} (the `default` entry)", file_name(path)),
                    );
                    return Ok(Some(t.to_string()));
                }
            }
            _ => {}
        }
    }
    Ok(files.template_file.as_ref().map(|(path, text)| {
        sources.insert("chat_template".into(), file_name(path));
        text.clone()
    }))
}
