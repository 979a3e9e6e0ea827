//! The `export-gguf` kind: a model artifact (an HF folder babelflow made or
//! imported) → `model.gguf`, which llama.cpp, Ollama and LM Studio load.
//! The conversion is `babelflow_model::gguf::export`; this crate binds it to
//! the special tokens as the tokens crate resolves them (the one place that
//! reads tokenizer_config.json and friends), so the GGUF's BOS/EOS and
//! `add_bos_token` are what every other stage used.

use std::sync::Arc;

use babelflow_model::gguf::export::{export, parse_type, TYPES};
use babelflow_model::gguf::vocab::SpecialIds;
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use babelflow_tokens::hf::LoadedTokenizer;
use babelflow_tokens::specials::{Overrides, Specials};

pub struct ExportGguf;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::with_default(
        "type",
        ParamType::Choice(TYPES),
        r#""f16""#,
        "how matrices are stored: f32, f16, bf16 or q8_0 (norms and biases stay f32, as llama.cpp's converter does)",
    ),
    ParamSpec::optional(
        "name",
        ParamType::Str,
        "general.name in the file (default: the instance's name)",
    ),
];

const INPUTS: &[InputSpec] = &[InputSpec {
    name: "model",
    required: true,
    many: false,
    doc: "an HF model folder (a training stage's, import-model's, init-model's, resize-vocab's)",
}];

impl StageKind for ExportGguf {
    fn name(&self) -> &'static str {
        "export-gguf"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "a model as a GGUF file for llama.cpp (F32, F16, BF16, Q8_0), with its tokenizer"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model.gguf".into(), "stats.json".into()]
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let dir = &ctx.single_input("model")?.path;
        let ty = parse_type(ctx.params.str("type")?).ok_or_else(|| StageError::failed("unknown type"))?;
        let (_, tok) = LoadedTokenizer::for_model(dir, None)?;
        let s = Specials::resolve(&tok, Some(dir), &Overrides::default())?;
        let specials = SpecialIds {
            bos: s.bos.as_ref().map(|t| t.id),
            eos: s.eos.as_ref().map(|t| t.id),
            unk: s.unk.as_ref().map(|t| t.id),
            pad: s.pad.as_ref().map(|t| t.id),
            add_bos: s.add_bos,
            add_eos: s.add_eos,
            chat_template: s.chat_template.clone(),
        };
        let name = ctx.params.opt_str("name")?.unwrap_or(ctx.instance).to_string();
        let out = ctx.output("model.gguf");
        let written = export(dir, &out, ty, &name, &specials, &|done, total| {
            ctx.progress(done as u64, Some(total as u64), "writing tensors")
        })
        .map_err(|e| StageError::failed(e.to_string()))?;
        let types: Vec<String> = written.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
        ctx.log(&format!(
            "wrote {} tensors, {:.1} MB (asked {}; stored {})",
            written.tensors,
            written.bytes as f64 / 1e6,
            ctx.params.str("type")?,
            types.join(", ")
        ));
        // Say which tensors are not in the asked type, and why, grouped.
        let mut groups: std::collections::BTreeMap<(&str, &str), Vec<&str>> = Default::default();
        for (tensor, stored, why) in &written.fallbacks {
            groups.entry((stored, why)).or_default().push(tensor);
        }
        for ((stored, why), names) in groups {
            ctx.log(&format!(
                "{} tensors written {stored}, not {}, because {why}: {}",
                names.len(),
                ctx.params.str("type")?,
                names.join(", ")
            ));
        }
        let fallbacks: Vec<serde_json::Value> = written
            .fallbacks
            .iter()
            .map(|(tensor, stored, why)| serde_json::json!({"tensor": tensor, "stored": stored, "why": why}))
            .collect();
        ctx.write_json(
            "stats.json",
            &serde_json::json!({"type": ctx.params.str("type")?, "tensors": written.tensors, "bytes": written.bytes,
                                "stored_types": written.types, "fallbacks": fallbacks,
                                "special_tokens": s.describe()}),
        )?;
        Ok(())
    }
}

/// The stage kinds this crate provides.
pub fn kinds() -> Vec<Arc<dyn StageKind>> {
    vec![Arc::new(ExportGguf)]
}
