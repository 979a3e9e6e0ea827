//! The `respond` kind: the model answers an instruction set (LLM-Eval
//! style: instruction + reference answer), and each answer is scored
//! without a judge — chrF against the reference, labelled as the
//! reference-based stand-in it is — and checked for code-switching. The
//! generations Parquet is what a `judge` stage reads.

use std::collections::BTreeMap;

use babelflow_corpus::template::Template;
use babelflow_corpus::{read_instructions, StringTableWriter};
use babelflow_model::generate::{generate_batch, Sampling};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};

use crate::chrf::Stats;
use crate::codeswitch::Detector;
use crate::common::{Loaded, MODEL_INPUT, PRECISION_PARAM, SPECIAL_PARAMS, TOKENIZER_INPUT};
use crate::metrics::EvalMetrics;
use babelflow_tokens::chat::{messages_of, ChatTemplate};

pub struct Respond;

const PARAMS: &[ParamSpec] = &[
    PRECISION_PARAM,
    SPECIAL_PARAMS[0],
    SPECIAL_PARAMS[1],
    SPECIAL_PARAMS[2],
    ParamSpec::with_default(
        "template",
        ParamType::Str,
        r#""bactrian""#,
        "alpaca, bactrian, belle, chat (the model's own chat template, with its generation prompt), or a template \
         string (as the model was tuned with)",
    ),
    ParamSpec::with_default("max_new_tokens", ParamType::Int, "128", "tokens per answer at most").positive(),
    ParamSpec::with_default("temperature", ParamType::Float, "0.0", "0: greedy"),
    ParamSpec::with_default("top_k", ParamType::Int, "0", "sample from the k likeliest (0: off)"),
    ParamSpec::with_default("top_p", ParamType::Float, "1.0", "nucleus sampling mass (1: off)"),
    ParamSpec::with_default("repetition_penalty", ParamType::Float, "1.0", "> 1 discourages repeats"),
    ParamSpec::with_default(
        "seed",
        ParamType::Int,
        "0",
        "sampling seed (prompt i of a batch uses seed + i)",
    ),
    ParamSpec::with_default("batch_size", ParamType::Int, "8", "prompts generated together"),
    ParamSpec::with_default(
        "max_examples",
        ParamType::Int,
        "0",
        "instructions per language (0: all)",
    ),
    ParamSpec::with_default(
        "source_lang",
        ParamType::Str,
        r#""en""#,
        "the language the base model knows best (code-switching into it is flagged)",
    ),
];

const INPUTS: &[InputSpec] = &[
    MODEL_INPUT,
    InputSpec {
        name: "instructions",
        required: true,
        many: true,
        doc: "instructions.parquet tables with reference answers (ingest-instructions)",
    },
    TOKENIZER_INPUT,
];

pub const GENERATION_COLUMNS: [&str; 9] = [
    "id",
    "lang",
    "instruction",
    "input",
    "prompt",
    "response",
    "reference",
    "chrf",
    "code_switched",
];

impl StageKind for Respond {
    fn name(&self) -> &'static str {
        "respond"
    }
    fn code_version(&self) -> &'static str {
        // 3: fused flex attention, projections, RMSNorm, RoPE (and AdamW, for training): values differ in the last bits.
        // 4: BOS and stop tokens as transformers reads them; `template: chat`.
        // 5: Chichewa (ny) known as a Latin-script language for code-switching.
        "5"
    }
    fn summary(&self) -> &'static str {
        "generate answers to instructions; chrF against references and code-switching rates"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec![
            "generations.parquet".into(),
            "metrics.parquet".into(),
            "stats.json".into(),
        ]
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Ok(t) = params.str("template") {
            if let Err(e) = Template::parse(t) {
                problems.push(("template".into(), e.to_string()));
            }
        }
        problems
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::respond(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let template = Template::parse(p.str("template")?).map_err(|e| StageError::failed(e.to_string()))?;
        let max_examples = p.usize("max_examples")?;
        let source = p.str("source_lang")?;
        let m = Loaded::from_context(ctx)?;
        let chat = match template {
            Template::Chat => Some(ChatTemplate::of_model(&m.specials, &m.name)?),
            _ => None,
        };
        // Stop at EOS, at every eos_token_id the model's configs list, and
        // at the chat template's end of turn.
        let mut stop = m.specials.stop.clone();
        if let Some(eot) = chat.as_ref().and_then(|c| c.end_of_turn(&m.tokenizer)) {
            if !stop.contains(&eot) {
                stop.push(eot);
            }
        }
        if stop.is_empty() {
            return Err(StageError::failed(
                "the model has no EOS or end-of-turn token, so an answer could not end; set `eos_token`",
            ));
        }
        let prefix = m.specials.prefix();
        let sampling = Sampling {
            temperature: p.f64("temperature")?,
            top_k: p.usize("top_k").ok().filter(|&k| k > 0),
            top_p: p.f64("top_p").ok().filter(|&x| x < 1.0),
            repetition_penalty: p.f64("repetition_penalty")?,
            max_new_tokens: p.usize("max_new_tokens")?,
            stop_tokens: stop.clone(),
            seed: p.i64("seed")? as u64,
        };

        let mut rows = Vec::new();
        let mut per_lang_count = BTreeMap::<String, usize>::new();
        for item in ctx.input("instructions") {
            for row in read_instructions(&item.path)? {
                let n = per_lang_count.entry(row.lang.clone()).or_default();
                if max_examples == 0 || *n < max_examples {
                    *n += 1;
                    rows.push(row);
                }
            }
        }
        let detector = Detector::default();
        let mut generations = StringTableWriter::create(&ctx.output("generations.parquet"), &GENERATION_COLUMNS)?;
        #[derive(Default)]
        struct Lang {
            chrf: Stats,
            n: u64,
            switched: u64,
            letters: u64,
            off_letters: u64,
            tokens: u64,
        }
        let mut langs = BTreeMap::<String, Lang>::new();
        let total = rows.len() as u64;
        let batch = p.usize("batch_size")?.max(1);
        let mut done = 0u64;
        for chunk in rows.chunks(batch) {
            ctx.check_cancelled()?;
            let prompts: Vec<String> = chunk
                .iter()
                .map(|r| match &chat {
                    Some(chat) => chat
                        .render(&messages_of(&r.instruction, &r.input, None, &[]), true)
                        .map_err(StageError::failed),
                    None => Ok(template.prompt(&r.instruction, &r.input)),
                })
                .collect::<Result<_, StageError>>()?;
            // A chat template writes its own BOS; a text prompt gets the model's.
            let ids: Vec<Vec<u32>> = prompts
                .iter()
                .map(|text| {
                    let head = if chat.is_some() { &[][..] } else { &prefix[..] };
                    Ok(head.iter().copied().chain(m.encode(text)?).collect())
                })
                .collect::<Result<_, StageError>>()?;
            let longest = ids.iter().map(Vec::len).max().unwrap_or(1);
            let room = m.config.max_position_embeddings.saturating_sub(longest).max(1);
            let mut s = sampling.clone();
            s.max_new_tokens = s.max_new_tokens.min(room);
            let rope = m.rope(longest + s.max_new_tokens)?;
            let outputs = generate_batch(&m.model, &rope, &ids, &s, &m.device);
            m.sample_device_memory();
            for ((row, prompt), new) in chunk.iter().zip(&prompts).zip(outputs) {
                let body: Vec<u32> = new.into_iter().filter(|t| !stop.contains(t)).collect();
                let response = m
                    .tokenizer
                    .tokenizer
                    .decode(&body, true)
                    .map_err(|e| StageError::failed(format!("decoding: {e}")))?;
                let response = response.trim().to_string();
                let stats = Stats::of(&response, &row.output);
                let verdict = detector.judge(&response, &row.lang, source);
                let l = langs.entry(row.lang.clone()).or_default();
                l.chrf.add(&stats);
                l.n += 1;
                l.switched += verdict.mixed() as u64;
                l.letters += verdict.letters as u64;
                l.off_letters += verdict.off_target_letters as u64;
                l.tokens += body.len() as u64;
                generations.push(&[
                    &row.id,
                    &row.lang,
                    &row.instruction,
                    &row.input,
                    prompt,
                    &response,
                    &row.output,
                    &format!("{:.4}", stats.score()),
                    if verdict.mixed() { "true" } else { "false" },
                ])?;
                done += 1;
            }
            ctx.progress(done, Some(total), "responses");
        }
        generations.finish()?;

        let mut metrics = EvalMetrics::default();
        let mut stats = serde_json::Map::new();
        for (lang, l) in &langs {
            let chrf = l.chrf.score();
            let switch_rate = l.switched as f64 / l.n.max(1) as f64;
            let off_share = l.off_letters as f64 / l.letters.max(1) as f64;
            metrics.push(lang, "respond", "chrf_reference_based", chrf, l.n);
            metrics.push(lang, "respond", "code_switch_rate", switch_rate, l.n);
            metrics.push(lang, "respond", "off_target_char_share", off_share, l.n);
            metrics.push(
                lang,
                "respond",
                "mean_response_tokens",
                l.tokens as f64 / l.n.max(1) as f64,
                l.n,
            );
            stats.insert(
                lang.clone(),
                serde_json::json!({
                    "responses": l.n, "chrf_reference_based": chrf, "code_switch_rate": switch_rate,
                    "off_target_char_share": off_share,
                }),
            );
        }
        metrics.write(&ctx.output("metrics.parquet"), &m.name, ctx.instance)?;
        ctx.write_json(
            "stats.json",
            &serde_json::json!({
                "model": m.name, "backend": m.backend, "precision": m.precision, "template": p.str("template")?,
                "scores": "reference-based (chrF); bind a `judge` stage for LLM-Eval scores",
                "special_tokens": m.specials.describe(), "stop_ids": stop,
                "memory": m.memory(ctx),
                "per_lang": stats,
            }),
        )?;
        Ok(())
    }
}
