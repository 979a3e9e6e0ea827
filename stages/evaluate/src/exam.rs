//! The `exam` kind: multiple-choice accuracy (MMLU, C-Eval) from
//! `ingest-choice` tables. k-shot prompts from the dev split in MMLU's
//! reference layout, shots dropped until the prompt fits the context.
//! Two scorings: the answer letters' log-probabilities after `Answer:`
//! (MMLU's reference evaluation), and each choice's log-likelihood as a
//! continuation, normalised by its length in bytes (so long choices are not
//! penalised for being long).

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::Array;
use babelflow_corpus::{cell, for_each_batch, StringTableWriter};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};

use crate::common::{Loaded, MODEL_INPUT, PRECISION_PARAM, SPECIAL_PARAMS, TOKENIZER_INPUT};
use crate::metrics::EvalMetrics;
use crate::scoring::{last_position_logprobs, next_token_logprobs};

pub struct Exam;

const PARAMS: &[ParamSpec] = &[
    PRECISION_PARAM,
    SPECIAL_PARAMS[0],
    SPECIAL_PARAMS[1],
    SPECIAL_PARAMS[2],
    ParamSpec::with_default(
        "shots",
        ParamType::Int,
        "5",
        "solved dev questions before each question",
    ),
    ParamSpec::with_default("split", ParamType::Str, r#""test""#, "split to score (C-Eval: val)"),
    ParamSpec::with_default("shot_split", ParamType::Str, r#""dev""#, "split the shots come from"),
    ParamSpec::with_default(
        "scoring",
        ParamType::Choice(&["letters", "likelihood", "both"]),
        r#""both""#,
        "answer-letter logits, length-normalised choice likelihood, or both",
    ),
    ParamSpec::with_default("max_len", ParamType::Int, "0", "context in tokens (0: the model's)"),
    ParamSpec::with_default("batch_size", ParamType::Int, "8", "sequences per forward pass"),
];

const INPUTS: &[InputSpec] = &[
    MODEL_INPUT,
    InputSpec {
        name: "questions",
        required: true,
        many: true,
        doc: "questions.parquet tables from ingest-choice",
    },
    TOKENIZER_INPUT,
];

pub const LETTERS: [&str; 8] = ["A", "B", "C", "D", "E", "F", "G", "H"];

#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub id: String,
    pub lang: String,
    pub subject: String,
    pub split: String,
    pub question: String,
    pub choices: Vec<String>,
    /// `A`, `B`, ... (empty when the split has no answers).
    pub answer: String,
}

impl Question {
    /// The question in MMLU's layout, ending in `Answer:`, plus ` X\n\n` when solved.
    pub fn render(&self, solved: bool) -> String {
        let mut s = format!("{}\n", self.question.trim());
        for (letter, choice) in LETTERS.iter().zip(&self.choices) {
            s.push_str(&format!("{letter}. {}\n", choice.trim()));
        }
        s.push_str("Answer:");
        if solved {
            s.push_str(&format!(" {}\n\n", self.answer));
        }
        s
    }
}

/// The prompt for `q` with `shots` solved examples before it.
pub fn prompt(q: &Question, shots: &[&Question]) -> String {
    let mut s = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n",
        q.subject.replace('_', " ")
    );
    for shot in shots {
        s.push_str(&shot.render(true));
    }
    s.push_str(&q.render(false));
    s
}

/// The questions of an `ingest-choice` table. A question with fewer than 2
/// or more than 8 choices, or an answer that is not one of its letters, is
/// an error naming the file and the question.
pub fn read_questions(path: &std::path::Path) -> Result<Vec<Question>, StageError> {
    let mut out = Vec::new();
    for_each_batch(path, "an ingest-choice table", &mut |b| {
        let (id, lang, subject) = (b.text("id")?, b.text("lang")?, b.text("subject")?);
        let (split, question, answer) = (b.text("split")?, b.text("question")?, b.text("answer")?);
        let choices = b
            .batch
            .column_by_name("choices")
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| b.error("no list column `choices`"))?;
        for r in 0..b.num_rows() {
            let list = babelflow_corpus::parquet_in::to_utf8(&choices.value(r))
                .map_err(|e| b.error(format!("column `choices`: {e}")))?
                .ok_or_else(|| b.error("column `choices` is not a list of text"))?;
            let q = Question {
                id: id.value(r).into(),
                lang: lang.value(r).into(),
                subject: subject.value(r).into(),
                split: split.value(r).into(),
                question: question.value(r).into(),
                choices: (0..list.len()).map(|i| list.value(i).to_string()).collect(),
                answer: cell(answer, r).trim().to_string(),
            };
            let n = q.choices.len();
            if !(2..=LETTERS.len()).contains(&n) {
                return Err(b.error(format!(
                    "question `{}` has {n} choices; 2 to {} are supported",
                    q.id,
                    LETTERS.len()
                )));
            }
            if !q.answer.is_empty() && !LETTERS[..n].contains(&q.answer.as_str()) {
                return Err(b.error(format!(
                    "question `{}` has answer `{}`, not one of {}",
                    q.id,
                    q.answer,
                    LETTERS[..n].join(", ")
                )));
            }
            out.push(q);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Index of the largest score (the first on ties).
pub fn argmax(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if *s > scores[best] {
            best = i;
        }
    }
    best
}

/// One question, ready to score.
pub(crate) struct Item {
    q: Question,
    /// `BOS prompt`.
    pub(crate) prompt: Vec<u32>,
    /// `BOS prompt + " " + choice`, one per choice, and each choice's byte length.
    pub(crate) continuations: Vec<(Vec<u32>, usize)>,
    shots_used: usize,
}

/// Solved questions of `shot_split` by (language, subject): where shots come from.
pub(crate) type ShotPool<'a> = BTreeMap<(String, String), Vec<&'a Question>>;

pub(crate) fn shot_pool<'a>(all: &'a [Question], shot_split: &str) -> ShotPool<'a> {
    all.iter()
        .filter(|q| q.split == shot_split && !q.answer.is_empty())
        .fold(BTreeMap::new(), |mut acc, q| {
            acc.entry((q.lang.clone(), q.subject.clone())).or_default().push(q);
            acc
        })
}

/// Each question's prompt with up to `shots` shots of its language and
/// subject, and its continuations, in ids after `prefix` (BOS or
/// nothing); shots are dropped until the longest fits `max_len`. Returns
/// the items and how many questions did not fit even with no shots.
pub(crate) fn build_items(
    questions: &[&Question],
    pool: &ShotPool,
    shots: usize,
    max_len: usize,
    prefix: &[u32],
    encode: impl Fn(&str) -> Result<Vec<u32>, StageError>,
) -> Result<(Vec<Item>, usize), StageError> {
    let with_prefix = |text: &str| -> Result<Vec<u32>, StageError> {
        let mut ids = prefix.to_vec();
        ids.extend(encode(text)?);
        Ok(ids)
    };
    let mut items = Vec::new();
    let mut too_long = 0;
    for &q in questions {
        let candidates = pool
            .get(&(q.lang.clone(), q.subject.clone()))
            .cloned()
            .unwrap_or_default();
        let mut k = shots.min(candidates.len());
        let built = loop {
            let text = prompt(q, &candidates[..k]);
            let ids = with_prefix(&text)?;
            let mut continuations = Vec::new();
            for c in &q.choices {
                let cont = format!(" {}", c.trim());
                continuations.push((with_prefix(&format!("{text}{cont}"))?, cont.len()));
            }
            let longest = continuations
                .iter()
                .map(|c| c.0.len())
                .max()
                .unwrap_or(0)
                .max(ids.len());
            if longest <= max_len {
                break Some((ids, continuations, k));
            }
            if k == 0 {
                break None;
            }
            k -= 1;
        };
        match built {
            Some((prompt, continuations, shots_used)) => items.push(Item {
                q: q.clone(),
                prompt,
                continuations,
                shots_used,
            }),
            None => too_long += 1,
        }
    }
    Ok((items, too_long))
}

impl StageKind for Exam {
    fn name(&self) -> &'static str {
        "exam"
    }
    fn code_version(&self) -> &'static str {
        // 3: fused flex attention, projections, RMSNorm, RoPE (and AdamW, for training): values differ in the last bits.
        // 4: BOS only where the model's tokenizer adds one.
        // 5: the letters' log-softmax over the last positions alone (the same
        //    values, but not proven the same bits on every backend).
        "5"
    }
    fn summary(&self) -> &'static str {
        "multiple-choice accuracy (MMLU / C-Eval), k-shot, by answer letters or choice likelihood"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec![
            "metrics.parquet".into(),
            "predictions.parquet".into(),
            "stats.json".into(),
        ]
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if params.i64("shots").is_ok_and(|v| v < 0) {
            problems.push(("shots".into(), "must be 0 or more".into()));
        }
        if params.i64("batch_size").is_ok_and(|v| v <= 0) {
            problems.push(("batch_size".into(), "must be positive".into()));
        }
        problems
    }

    fn estimate(&self, ctx: &babelflow_stage::EstimateContext) -> babelflow_stage::Estimate {
        crate::estimate::exam(ctx)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let (shots, batch) = (p.usize("shots")?, p.usize("batch_size")?);
        let (split, shot_split) = (p.str("split")?, p.str("shot_split")?);
        let scoring = p.str("scoring")?;
        let (by_letters, by_likelihood) = (scoring != "likelihood", scoring != "letters");
        let m = Loaded::from_context(ctx)?;
        let max_len = match p.usize("max_len")? {
            0 => m.config.max_position_embeddings,
            n => n,
        };
        // BOS only where the model's tokenizer adds one (see `specials`).
        let prefix = m.specials.prefix();

        let mut all = Vec::new();
        for item in ctx.input("questions") {
            all.extend(read_questions(&item.path)?);
        }
        let pool = shot_pool(&all, shot_split);
        let targets: Vec<&Question> = all.iter().filter(|q| q.split == split).collect();
        let unanswered = targets.iter().filter(|q| q.answer.is_empty()).count();
        if targets.len() == unanswered {
            return Err(StageError::failed(format!(
                "no answered questions in split `{split}` ({} questions read, {unanswered} without answers there)",
                all.len()
            )));
        }
        let letter_ids: Vec<u32> = LETTERS
            .iter()
            .map(|l| {
                m.encode(&format!("Answer: {l}"))
                    .map(|ids| ids.last().copied().unwrap_or(0))
            })
            .collect::<Result<_, _>>()?;
        let answered: Vec<&Question> = targets.into_iter().filter(|q| !q.answer.is_empty()).collect();
        let (items, too_long) = build_items(&answered, &pool, shots, max_len, &prefix, |text| m.encode(text))?;

        let rope = m.rope(max_len)?;
        let started = std::time::Instant::now();
        let mut letter_pred = vec![None; items.len()];
        let mut likelihood_pred = vec![None; items.len()];
        // Positions the forward passes compute: each pass pads to its longest.
        let mut positions = 0;
        let mut computed = |seqs: &[&[u32]]| positions += seqs.len() * seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if by_letters {
            for (c, chunk) in items.chunks(batch).enumerate() {
                ctx.check_cancelled()?;
                let seqs: Vec<&[u32]> = chunk.iter().map(|it| it.prompt.as_slice()).collect();
                computed(&seqs);
                for (i, row) in last_position_logprobs(&m.model, &rope, &seqs, &m.device)
                    .into_iter()
                    .enumerate()
                {
                    let n = chunk[i].q.choices.len().min(LETTERS.len());
                    let scores: Vec<f64> = letter_ids[..n].iter().map(|&id| row[id as usize] as f64).collect();
                    letter_pred[c * batch + i] = Some(argmax(&scores));
                }
                m.sample_device_memory();
            }
        }
        if by_likelihood {
            // Every (question, choice) continuation, batched together.
            let flat: Vec<(usize, usize)> = items
                .iter()
                .enumerate()
                .flat_map(|(i, it)| (0..it.continuations.len()).map(move |c| (i, c)))
                .collect();
            let mut scores: Vec<Vec<f64>> = items.iter().map(|it| vec![0.0; it.continuations.len()]).collect();
            for chunk in flat.chunks(batch) {
                ctx.check_cancelled()?;
                let seqs: Vec<&[u32]> = chunk
                    .iter()
                    .map(|&(i, c)| items[i].continuations[c].0.as_slice())
                    .collect();
                computed(&seqs);
                for (&(i, c), lp) in chunk.iter().zip(next_token_logprobs(&m.model, &rope, &seqs, &m.device)) {
                    // Position j predicts id j+1; the choice's ids start where the
                    // joint tokenization leaves the prompt's.
                    let (prompt, cont) = (&items[i].prompt, &items[i].continuations[c].0);
                    let shared = prompt.iter().zip(cont).take_while(|(a, b)| a == b).count();
                    let start = shared.max(1) - 1;
                    let total: f64 = lp[start..].iter().map(|&x| x as f64).sum();
                    scores[i][c] = total / items[i].continuations[c].1.max(1) as f64;
                }
                m.sample_device_memory();
            }
            for (i, s) in scores.iter().enumerate() {
                likelihood_pred[i] = Some(argmax(s));
            }
        }

        let seconds = started.elapsed().as_secs_f64();
        // Accuracy per (lang, subject) and per lang.
        #[derive(Default, Clone, Copy)]
        struct Tally {
            n: u64,
            letters: u64,
            likelihood: u64,
        }
        let mut tallies = BTreeMap::<(String, String), Tally>::new();
        let mut table = StringTableWriter::create(
            &ctx.output("predictions.parquet"),
            &[
                "id",
                "lang",
                "subject",
                "answer",
                "by_letters",
                "by_likelihood",
                "shots",
            ],
        )?;
        let letter = |p: Option<usize>| p.map(|i| LETTERS[i].to_string()).unwrap_or_default();
        for (i, it) in items.iter().enumerate() {
            let (l, k) = (letter(letter_pred[i]), letter(likelihood_pred[i]));
            for key in [
                (it.q.lang.clone(), it.q.subject.clone()),
                (it.q.lang.clone(), String::new()),
            ] {
                let t = tallies.entry(key).or_default();
                t.n += 1;
                t.letters += (l == it.q.answer) as u64;
                t.likelihood += (k == it.q.answer) as u64;
            }
            table.push(&[
                &it.q.id,
                &it.q.lang,
                &it.q.subject,
                &it.q.answer,
                &l,
                &k,
                &it.shots_used.to_string(),
            ])?;
        }
        table.finish()?;
        let mut metrics = EvalMetrics::default();
        let mut stats = serde_json::Map::new();
        for ((lang, subject), t) in &tallies {
            let task = if subject.is_empty() {
                "exam".to_string()
            } else {
                format!("exam:{subject}")
            };
            let mut entry = serde_json::Map::new();
            if by_letters {
                let acc = t.letters as f64 / t.n as f64;
                metrics.push(lang, &task, "accuracy_letters", acc, t.n);
                entry.insert("accuracy_letters".into(), acc.into());
            }
            if by_likelihood {
                let acc = t.likelihood as f64 / t.n as f64;
                metrics.push(lang, &task, "accuracy_likelihood", acc, t.n);
                entry.insert("accuracy_likelihood".into(), acc.into());
            }
            entry.insert("questions".into(), t.n.into());
            stats.insert(format!("{lang}/{task}"), entry.into());
        }
        metrics.write(&ctx.output("metrics.parquet"), &m.name, ctx.instance)?;
        ctx.write_json(
            "stats.json",
            &serde_json::json!({
                "model": m.name, "backend": m.backend, "precision": m.precision, "shots": shots, "split": split,
                "scored": items.len(), "skipped_unanswered": unanswered, "skipped_too_long": too_long,
                "seconds": seconds, "questions_per_s": items.len() as f64 / seconds.max(1e-9),
                "positions": positions, "results": stats, "memory": m.memory(ctx), "special_tokens": m.specials.describe(),
            }),
        )?;
        ctx.note("questions", items.len());
        Ok(())
    }
}
