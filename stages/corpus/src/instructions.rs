//! The `ingest-instructions` kind: Alpaca / BELLE / Bactrian-X records
//! (`instruction`, `input`, `output`, `id`) and ShareGPT-style conversations
//! → Parquet `id, lang, instruction, input, output, turns`.
//!
//! Bactrian-X ships one `{lang}.json(.gz)` per language with the same ids
//! across languages; without a `lang` parameter the language is read from
//! such a file name. Conversations keep every turn in `turns` (JSON list of
//! `{role, content}`); `instruction`/`output` hold the first exchange.

use std::path::{Path, PathBuf};

use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use serde_json::{json, Value};

use crate::read::{expand_paths, field, for_each_record, Format, RecordError, Utf8Policy};
use crate::table::StringTableWriter;

pub struct IngestInstructions;

pub const INSTRUCTION_COLUMNS: [&str; 6] = ["id", "lang", "instruction", "input", "output", "turns"];

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "format",
        ParamType::Choice(&["auto", "alpaca", "sharegpt"]),
        r#""auto""#,
        "record layout; `auto` looks for `conversations`/`messages`",
    ),
    ParamSpec::optional(
        "lang",
        ParamType::Str,
        "language of every record (default: from a Bactrian-X style file name like sw.json.gz)",
    ),
    ParamSpec::with_default(
        "instruction_field",
        ParamType::Str,
        r#""instruction""#,
        "field of the instruction (BELLE/Alpaca: instruction)",
    ),
    ParamSpec::with_default(
        "input_field",
        ParamType::Str,
        r#""input""#,
        "field of the optional input/context",
    ),
    ParamSpec::with_default("output_field", ParamType::Str, r#""output""#, "field of the response"),
    ParamSpec::with_default(
        "id_field",
        ParamType::Str,
        r#""id""#,
        "field of the record id (default when absent: file name and record number)",
    ),
    ParamSpec::with_default(
        "lenient",
        ParamType::Bool,
        "false",
        "skip and count malformed records instead of failing",
    ),
];

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "files",
    required: true,
    many: true,
    doc: "JSON or JSONL files (.gz/.zst read transparently), globs or folders",
}];

/// `sw.json.gz` → `sw`: a 2–3 letter file stem names a language.
fn lang_from_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy();
    let stem = name.split('.').next()?;
    (2..=3)
        .contains(&stem.len())
        .then(|| stem.to_ascii_lowercase())
        .filter(|s| s.chars().all(|c| c.is_ascii_alphabetic()))
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// ShareGPT (`from`/`value`) or OpenAI (`role`/`content`) turns, roles normalised.
fn turns_of(record: &Value) -> Option<Vec<(String, String)>> {
    let list = record
        .get("conversations")
        .or_else(|| record.get("messages"))?
        .as_array()?;
    list.iter()
        .map(|t| {
            let role = t.get("from").or_else(|| t.get("role"))?.as_str()?;
            let content = t.get("value").or_else(|| t.get("content"))?.as_str()?;
            let role = match role {
                "human" | "user" => "user",
                "gpt" | "assistant" | "bot" | "chatgpt" => "assistant",
                "system" => "system",
                other => other,
            };
            Some((role.to_string(), content.to_string()))
        })
        .collect()
}

impl StageKind for IngestInstructions {
    fn name(&self) -> &'static str {
        "ingest-instructions"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "Alpaca / BELLE / Bactrian-X / ShareGPT instructions → Parquet id, lang, instruction, input, output, turns"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["instructions.parquet".into(), "stats.json".into()]
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let format = p.str("format")?;
        let (fi, fin, fout, fid) = (
            p.str("instruction_field")?,
            p.str("input_field")?,
            p.str("output_field")?,
            p.str("id_field")?,
        );
        let lenient = p.bool("lenient")?;
        let paths: Vec<PathBuf> = ctx.input("files").iter().map(|i| i.path.clone()).collect();
        let files = expand_paths(&paths)?;
        let mut writer = StringTableWriter::create(&ctx.output("instructions.parquet"), &INSTRUCTION_COLUMNS)?;
        let (mut kept, mut skipped) = (0u64, 0u64);
        let mut per_lang = std::collections::BTreeMap::<String, u64>::new();
        for path in &files {
            ctx.check_cancelled()?;
            let lang = match p.opt_str("lang")? {
                Some(l) => l.to_string(),
                None => lang_from_name(path).unwrap_or_else(|| "und".into()),
            };
            let source = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let file_format = match Format::detect(path, Format::Jsonl) {
                Format::Json => Format::Json,
                _ => Format::Jsonl,
            };
            for_each_record(path, file_format, Utf8Policy { strict: true }, &mut |record| {
                let record = match record {
                    Ok(r) => r,
                    Err(RecordError::Malformed { line, message }) if !lenient => {
                        return Err(StageError::input(path, Some(line), message))
                    }
                    Err(_) => {
                        skipped += 1;
                        return Ok(());
                    }
                };
                let conversation = if format == "alpaca" {
                    None
                } else {
                    turns_of(&record.fields)
                };
                let row = match &conversation {
                    Some(turns) => {
                        let first_user = turns.iter().find(|(r, _)| r == "user").map(|(_, c)| c.clone());
                        let first_reply = turns.iter().find(|(r, _)| r == "assistant").map(|(_, c)| c.clone());
                        first_user.zip(first_reply).map(|(i, o)| (i, String::new(), o))
                    }
                    None if format == "sharegpt" => None,
                    None => text(field(&record.fields, fi))
                        .zip(text(field(&record.fields, fout)))
                        .map(|(i, o)| (i, text(field(&record.fields, fin)).unwrap_or_default(), o)),
                };
                let Some((instruction, input, output)) = row else {
                    if lenient {
                        skipped += 1;
                        return Ok(());
                    }
                    let wanted = if format == "sharegpt" || conversation.is_some() {
                        "a conversation with a user turn and an assistant turn".to_string()
                    } else {
                        format!("fields `{fi}` and `{fout}`")
                    };
                    return Err(StageError::input(
                        path,
                        Some(record.line),
                        format!("record lacks {wanted} (set lenient: true to skip)"),
                    ));
                };
                let id = text(field(&record.fields, fid)).unwrap_or_else(|| format!("{source}:{}", record.line));
                let turns: Vec<Value> = conversation
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect();
                let turns = serde_json::to_string(&turns).unwrap_or_else(|_| "[]".into());
                writer.push(&[&id, &lang, &instruction, &input, &output, &turns])?;
                kept += 1;
                *per_lang.entry(lang.clone()).or_default() += 1;
                Ok(())
            })?;
        }
        writer.finish()?;
        let stats = json!({"files": files.len(), "records": kept, "skipped": skipped, "languages": per_lang});
        ctx.write_json("stats.json", &stats)?;
        ctx.note("records", kept);
        Ok(())
    }
}
