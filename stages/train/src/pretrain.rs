//! The `pretrain` kind: further pretraining of a LLaMA (from `init-model`,
//! `import-model` or `resize-vocab`) on a token artifact, with AdamW,
//! warmup + cosine/linear decay, gradient clipping and accumulation, a
//! seeded data order, per-language validation, a divergence guard, and
//! metrics in Parquet. The result is an HF model folder.

use std::path::PathBuf;
use std::time::Instant;

use babelflow_model::loss::cross_entropy;
use babelflow_model::{device, hf, Llama, Rope};
use babelflow_stage::{InputSpec, ParamSpec, ParamType, Params, StageContext, StageError, StageKind};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::data::{Order, Windows};
use crate::metrics::MetricsWriter;
use crate::schedule::{Decay, Schedule};

pub struct Pretrain;

const PARAMS: &[ParamSpec] = &[
    ParamSpec::required("steps", ParamType::Int, "optimizer steps"),
    ParamSpec::with_default("batch_size", ParamType::Int, "8", "sequences per micro-batch"),
    ParamSpec::with_default(
        "seq_len",
        ParamType::Int,
        "128",
        "tokens per sequence (documents are packed)",
    ),
    ParamSpec::with_default("grad_accum", ParamType::Int, "1", "micro-batches per optimizer step"),
    ParamSpec::with_default("lr", ParamType::Float, "3e-4", "peak learning rate"),
    ParamSpec::with_default("min_lr", ParamType::Float, "3e-5", "learning rate at the last step"),
    ParamSpec::with_default("warmup_steps", ParamType::Int, "10", "linear warmup steps"),
    ParamSpec::with_default(
        "schedule",
        ParamType::Choice(&["cosine", "linear", "constant"]),
        r#""cosine""#,
        "decay after warmup",
    ),
    ParamSpec::with_default("weight_decay", ParamType::Float, "0.01", "AdamW weight decay"),
    ParamSpec::with_default("beta1", ParamType::Float, "0.9", "AdamW β1"),
    ParamSpec::with_default("beta2", ParamType::Float, "0.95", "AdamW β2"),
    ParamSpec::with_default("eps", ParamType::Float, "1e-8", "AdamW ε"),
    ParamSpec::with_default(
        "grad_clip",
        ParamType::Float,
        "1.0",
        "clip the gradient norm to this (0: off)",
    ),
    ParamSpec::with_default("seed", ParamType::Int, "0", "seed of the data order"),
    ParamSpec::with_default(
        "eval_every",
        ParamType::Int,
        "50",
        "validate every this many steps (and at start and end)",
    ),
    ParamSpec::with_default("eval_batches", ParamType::Int, "4", "batches per validation set"),
];

const INPUTS: &[InputSpec] = &[
    InputSpec {
        name: "model",
        required: true,
        many: false,
        doc: "an HF model folder (init-model, import-model, resize-vocab, or an earlier training)",
    },
    InputSpec {
        name: "tokens",
        required: true,
        many: false,
        doc: "the training token artifact (usually `mix`)",
    },
    InputSpec {
        name: "validation",
        required: false,
        many: true,
        doc: "held-out token artifacts, one per language, for perplexity during training",
    },
];

fn batch_tensor(windows: &[Vec<u32>], device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
    let b = windows.len();
    let t = windows[0].len() - 1;
    let mut x = Vec::with_capacity(b * t);
    let mut y = Vec::with_capacity(b * t);
    for w in windows {
        x.extend(w[..t].iter().map(|&i| i as i64));
        y.extend(w[1..].iter().map(|&i| i as i64));
    }
    (
        Tensor::from_data(TensorData::new(x, [b, t]), device),
        Tensor::from_data(TensorData::new(y, [b, t]), device),
    )
}

fn bin_of(path: &std::path::Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokens.bin")
    } else {
        path.with_file_name("tokens.bin")
    }
}

/// Mean loss over the first `batches` batches of a validation stream.
fn validate(model: &Llama, rope: &Rope, set: &Windows, batch: usize, batches: usize, device: &Device) -> f64 {
    let n = set.len().min(batch * batches).max(1);
    let mut total = 0.0;
    let mut count = 0.0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch) {
        let ws: Vec<Vec<u32>> = chunk.iter().map(|&i| set.window(i)).collect();
        let (x, y) = batch_tensor(&ws, device);
        let loss: f32 = cross_entropy(model.forward(x, rope, None), y, None).into_scalar();
        total += loss as f64 * ws.len() as f64;
        count += ws.len() as f64;
    }
    total / count
}

impl StageKind for Pretrain {
    fn name(&self) -> &'static str {
        "pretrain"
    }
    fn code_version(&self) -> &'static str {
        "1"
    }
    fn summary(&self) -> &'static str {
        "further-pretrain a LLaMA on a token stream (AdamW, warmup + decay, per-language validation)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn inputs(&self) -> &'static [InputSpec] {
        INPUTS
    }
    fn outputs(&self, _params: &Params) -> Vec<String> {
        vec!["model".into(), "metrics.parquet".into(), "stats.json".into()]
    }
    fn check(&self, params: &Params) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for name in [
            "steps",
            "batch_size",
            "seq_len",
            "grad_accum",
            "eval_every",
            "eval_batches",
        ] {
            if params.i64(name).is_ok_and(|v| v <= 0) {
                problems.push((name.to_string(), "must be positive".to_string()));
            }
        }
        problems
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = ctx.params;
        let (steps, batch, seq_len, accum) = (
            p.usize("steps")?,
            p.usize("batch_size")?,
            p.usize("seq_len")?,
            p.usize("grad_accum")?,
        );
        let fail = |e: babelflow_model::ModelError| StageError::failed(e.to_string());
        let (device, backend) = device::select(&ctx.device.backend, ctx.device.index).map_err(fail)?;
        let ad = device.clone().autodiff();
        let model_dir = ctx.single_input("model")?.path.clone();
        let (config, mut model) = hf::load(&model_dir, &ad).map_err(fail)?;
        let train = Windows::open(&bin_of(&ctx.single_input("tokens")?.path), seq_len)?;
        if train.vocab_size() as usize > config.vocab_size {
            return Err(StageError::failed(format!(
                "the tokens come from a tokenizer of {} ids but the model has {} embeddings (extend the model with resize-vocab)",
                train.vocab_size(),
                config.vocab_size
            )));
        }
        let validation: Vec<Windows> = ctx
            .input("validation")
            .iter()
            .map(|item| Windows::open(&bin_of(&item.path), seq_len))
            .collect::<Result<_, _>>()?;
        let rope = Rope::new(&config, seq_len, &ad).map_err(StageError::failed)?;
        let rope_eval = Rope::new(&config, seq_len, &device).map_err(StageError::failed)?;
        let schedule = Schedule {
            lr: p.f64("lr")?,
            min_lr: p.f64("min_lr")?,
            warmup_steps: p.usize("warmup_steps")?,
            total_steps: steps,
            decay: match p.str("schedule")? {
                "linear" => Decay::Linear,
                "constant" => Decay::Constant,
                _ => Decay::Cosine,
            },
        };
        let clip = p.f64("grad_clip")?;
        let mut optim = AdamWConfig::new()
            .with_beta_1(p.f64("beta1")? as f32)
            .with_beta_2(p.f64("beta2")? as f32)
            .with_epsilon(p.f64("eps")? as f32)
            .with_weight_decay(p.f64("weight_decay")? as f32)
            .with_grad_clipping((clip > 0.0).then_some(burn::grad_clipping::GradientClippingConfig::Norm(clip as f32)))
            .init();
        let mut order = Order::new(train.len(), p.i64("seed")? as u64);
        let mut metrics = MetricsWriter::create(&ctx.output("metrics.parquet"))?;
        let (eval_every, eval_batches) = (p.usize("eval_every")?, p.usize("eval_batches")?);
        let evaluate = |model: &Llama,
                        step: usize,
                        tokens: u64,
                        metrics: &mut MetricsWriter|
         -> Result<Vec<(String, f64)>, StageError> {
            let plain = model.valid();
            let mut out = Vec::new();
            for set in &validation {
                let loss = validate(&plain, &rope_eval, set, batch, eval_batches, &device);
                metrics.push(step as u64, tokens, "val_loss", &set.lang, loss)?;
                metrics.push(step as u64, tokens, "val_ppl", &set.lang, loss.exp())?;
                out.push((set.lang.clone(), loss));
            }
            Ok(out)
        };
        let initial = evaluate(&model, 0, 0, &mut metrics)?;

        let tokens_per_step = (batch * seq_len * accum) as u64;
        let mut position = 0usize;
        let mut last_loss = f64::NAN;
        let started = Instant::now();
        for step in 0..steps {
            ctx.check_cancelled()?;
            let lr = schedule.at(step);
            let t0 = Instant::now();
            let mut acc = GradientsAccumulator::<Llama>::new();
            let mut step_loss = 0.0;
            for _ in 0..accum {
                let ws: Vec<Vec<u32>> = (0..batch)
                    .map(|_| {
                        let w = train.window(order.at(position));
                        position += 1;
                        w
                    })
                    .collect();
                let (x, y) = batch_tensor(&ws, &ad);
                let loss = cross_entropy(model.forward(x, &rope, None), y, None) / accum as f64;
                let value: f32 = loss.clone().into_scalar();
                if !value.is_finite() {
                    return Err(StageError::failed(format!(
                        "the loss became {value} at step {} (lower the learning rate or check the data); nothing of this run is kept",
                        step + 1
                    )));
                }
                step_loss += value as f64;
                acc.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
            }
            model = optim.step(lr, model, acc.grads());
            last_loss = step_loss;
            let seen = (step as u64 + 1) * tokens_per_step;
            let tps = tokens_per_step as f64 / t0.elapsed().as_secs_f64();
            metrics.push(step as u64 + 1, seen, "loss", "", step_loss)?;
            metrics.push(step as u64 + 1, seen, "lr", "", lr)?;
            metrics.push(step as u64 + 1, seen, "tokens_per_s", "", tps)?;
            ctx.progress(
                step as u64 + 1,
                Some(steps as u64),
                &format!("loss {step_loss:.3}, {tps:.0} tokens/s"),
            );
            if (step + 1) % eval_every == 0 && step + 1 != steps {
                evaluate(&model, step + 1, seen, &mut metrics)?;
            }
        }
        let final_val = evaluate(&model, steps, steps as u64 * tokens_per_step, &mut metrics)?;
        metrics.finish()?;

        let out = ctx.output("model");
        hf::save(&out, &config, &model.valid(), hf::DiskDtype::F32).map_err(fail)?;
        let tok = model_dir.join("tokenizer.json");
        if tok.is_file() {
            std::fs::copy(&tok, out.join("tokenizer.json")).map_err(|e| StageError::io(&tok, e))?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = serde_json::json!({
            "steps": steps,
            "tokens": steps as u64 * tokens_per_step,
            "final_loss": last_loss,
            "tokens_per_s": (steps as u64 * tokens_per_step) as f64 / seconds,
            "seconds": seconds,
            "backend": backend,
            "validation_loss_start": initial.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "validation_loss_end": final_val.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        });
        ctx.write_json("stats.json", &stats)?;
        ctx.note("backend", backend);
        ctx.note("final_loss", last_loss);
        Ok(())
    }
}
