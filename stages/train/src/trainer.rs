//! The training loop both `pretrain` and `sft` run: seeded example order,
//! micro-batches with gradient accumulation, AdamW with warmup + decay and
//! norm clipping, per-language validation every N steps, checkpoints every
//! N steps that a restarted run resumes from, a divergence guard, and
//! per-step metrics.

use std::time::Instant;

use babelflow_model::fused::adamw::AdamW;
use babelflow_model::fused::norm::fixed_order_squared_norm;
use babelflow_model::loss::cross_entropy;
use babelflow_model::{Llama, Rope};
use babelflow_stage::distributed::shard;
use babelflow_stage::{Collective, ParamSpec, ParamType, Params, StageContext, StageError};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::checkpoint::{Checkpoints, Position};
use crate::data::{Order, Windows};
use crate::metrics::Metrics;
use crate::recompute::{loss_and_gradients, MicroBatch};
use crate::schedule::{Decay, Schedule};
use crate::start::Start;
use crate::sync::{check_replicas, sum_gradients};

/// Optimizer, schedule, validation and checkpoint parameters, shared by the
/// training kinds. Each declares its range; the engine checks it before
/// anything runs (a negative learning rate never reaches the loop).
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec::required("steps", ParamType::Int, "optimizer steps").positive(),
    ParamSpec::with_default(
        "batch_size",
        ParamType::Int,
        "8",
        "sequences per micro-batch, over all ranks together (each trains on its slice)",
    )
    .positive(),
    ParamSpec::with_default("grad_accum", ParamType::Int, "1", "micro-batches per optimizer step").positive(),
    ParamSpec::with_default("lr", ParamType::Float, "3e-4", "peak learning rate").positive(),
    ParamSpec::with_default("min_lr", ParamType::Float, "3e-5", "learning rate at the last step").non_negative(),
    ParamSpec::with_default("warmup_steps", ParamType::Int, "10", "linear warmup steps").non_negative(),
    ParamSpec::with_default(
        "schedule",
        ParamType::Choice(&["cosine", "linear", "constant"]),
        r#""cosine""#,
        "decay after warmup",
    ),
    ParamSpec::with_default("weight_decay", ParamType::Float, "0.01", "AdamW weight decay").non_negative(),
    ParamSpec::with_default("beta1", ParamType::Float, "0.9", "AdamW β1").from_below(0.0, 1.0),
    ParamSpec::with_default("beta2", ParamType::Float, "0.95", "AdamW β2").from_below(0.0, 1.0),
    ParamSpec::with_default("eps", ParamType::Float, "1e-8", "AdamW ε").positive(),
    ParamSpec::with_default(
        "grad_clip",
        ParamType::Float,
        "1.0",
        "clip the gradient norm to this (0: off)",
    )
    .non_negative(),
    ParamSpec::with_default(
        "seed",
        ParamType::Int,
        "0",
        "seed of the data order and of LoRA's adapters",
    ),
    ParamSpec::with_default(
        "eval_every",
        ParamType::Int,
        "50",
        "validate every this many steps (and at start and end)",
    )
    .positive(),
    ParamSpec::with_default("eval_batches", ParamType::Int, "4", "batches per validation set").positive(),
    ParamSpec::with_default(
        "save_dtype",
        ParamType::Choice(&["f32", "bf16", "f16", "input"]),
        r#""f32""#,
        "dtype of the saved model; `input`: the input model's (config.json `torch_dtype`)",
    ),
    ParamSpec::with_default(
        "checkpoint_activations",
        ParamType::Bool,
        "false",
        "keep only each decoder block's input and recompute the block in the backward pass (less memory, about a third more compute)",
    ),
    ParamSpec::with_default(
        "checkpoint_every",
        ParamType::Int,
        "100",
        "save a resumable checkpoint every this many steps (0: never)",
    )
    .non_negative(),
];

/// One micro-batch: `rows × cols` inputs and targets, and the loss weights
/// (1 for positions that count) when not every position does.
pub struct Batch {
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub weights: Option<Vec<f32>>,
    pub rows: usize,
    pub cols: usize,
    /// Tokens this batch trains on (for tokens seen and tokens/s).
    pub tokens: usize,
}

impl Batch {
    /// The positions the loss counts: the weights' sum, or all of them.
    pub fn counted_positions(&self) -> f64 {
        match &self.weights {
            Some(w) => w.iter().map(|&x| x as f64).sum::<f64>(),
            None => (self.rows * self.cols) as f64,
        }
    }
}

/// What a training kind trains on: a fixed set of examples, batched.
pub trait Examples {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn batch(&self, indices: &[usize]) -> Batch;
}

pub struct Settings {
    pub steps: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub schedule: Schedule,
    pub clip: f64,
    pub seed: u64,
    pub eval_every: usize,
    pub eval_batches: usize,
    pub checkpoint_every: usize,
    pub checkpoint_activations: bool,
    optimizer: AdamW,
}

impl Settings {
    pub fn from_params(p: &Params) -> Result<Self, StageError> {
        let steps = p.usize("steps")?;
        let clip = p.f64("grad_clip")?;
        Ok(Settings {
            steps,
            batch_size: p.usize("batch_size")?,
            grad_accum: p.usize("grad_accum")?,
            schedule: Schedule {
                lr: p.f64("lr")?,
                min_lr: p.f64("min_lr")?,
                warmup_steps: p.usize("warmup_steps")?,
                total_steps: steps,
                decay: match p.str("schedule")? {
                    "linear" => Decay::Linear,
                    "constant" => Decay::Constant,
                    _ => Decay::Cosine,
                },
            },
            clip,
            seed: p.i64("seed")? as u64,
            eval_every: p.usize("eval_every")?,
            eval_batches: p.usize("eval_batches")?,
            checkpoint_every: p.usize("checkpoint_every")?,
            checkpoint_activations: p.bool("checkpoint_activations")?,
            optimizer: AdamW::new(
                p.f64("beta1")? as f32,
                p.f64("beta2")? as f32,
                p.f64("eps")? as f32,
                p.f64("weight_decay")? as f32,
            ),
        })
    }
}

/// What a finished run hands back to its kind.
pub struct Outcome {
    pub model: Llama,
    pub metrics: Metrics,
    pub initial_validation: Vec<(String, f64)>,
    pub final_validation: Vec<(String, f64)>,
    pub last_loss: f64,
    pub tokens: u64,
    pub seconds: f64,
    /// The step a checkpoint let this run start from.
    pub resumed_from: Option<usize>,
    /// Ranks that trained together, and the seconds their gradient
    /// all-reduce took (0 for one process).
    pub world_size: usize,
    pub allreduce_seconds: f64,
    /// Of `seconds`, the optimizer's updates (AdamW over what trains).
    pub optimizer_seconds: f64,
    /// The GPU's peak memory, sampled after every step (nothing on the CPU).
    pub device_peak: babelflow_model::device::DevicePeak,
}

/// A batch's inputs, targets and loss weights as tensors on `device`.
pub fn tensors(batch: Batch, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Option<Tensor<2>>) {
    let shape = [batch.rows, batch.cols];
    (
        Tensor::from_data(TensorData::new(batch.inputs, shape), device),
        Tensor::from_data(TensorData::new(batch.targets, shape), device),
        batch
            .weights
            .map(|w| Tensor::from_data(TensorData::new(w, shape), device)),
    )
}

/// Mean loss per token over the first `batch × batches` windows of `set`,
/// and how many windows that was.
fn validate(model: &Llama, rope: &Rope, set: &Windows, batch: usize, batches: usize, device: &Device) -> (f64, usize) {
    let n = set.len().min(batch * batches).max(1);
    let mut total = 0.0;
    let mut count = 0.0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(batch) {
        let (x, y, _) = tensors(set.batch(chunk), device);
        let loss: f32 = cross_entropy(model.forward(x, rope, None), y, None).into_scalar();
        total += loss as f64 * chunk.len() as f64;
        count += chunk.len() as f64;
    }
    (total / count, n)
}

/// The global L2 norm of the gradients (before clipping). On `flex` each
/// parameter's part is summed in a fixed order ([`fixed_order_squared_norm`]),
/// so the metric is the same bit for bit whenever the gradients are;
/// elsewhere the parts are summed on the device and read back once.
fn grad_norm(model: &Llama, grads: &GradientsParams) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        fixed: f64,
        on_device: Option<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let Some(g) = self.grads.get::<D>(param.id) else { return };
            match fixed_order_squared_norm(&g) {
                Some(part) => self.fixed += part,
                None => {
                    let part = g.square().sum();
                    self.on_device = Some(match self.on_device.take() {
                        Some(acc) => acc + part,
                        None => part,
                    });
                }
            }
        }
    }
    let mut v = SumSquares {
        grads,
        fixed: 0.0,
        on_device: None,
    };
    model.visit(&mut v);
    let on_device = v.on_device.map_or(0.0, |s| s.into_scalar::<f32>() as f64);
    (v.fixed + on_device).sqrt()
}

/// The error of a run that diverged at `step`, saying what is kept.
fn diverged(checkpoints: &Checkpoints, what: String, step: usize) -> StageError {
    let kept = match checkpoints.saved_step() {
        Some(at) => format!("the checkpoint of step {at} is kept and the next run resumes from it"),
        None => "no checkpoint was written".to_string(),
    };
    StageError::failed(format!(
        "{what} at step {step} (lower the learning rate or check the data); nothing of this step was saved; {kept}"
    ))
}

/// True when every weight is a finite number (one pass over the model).
fn weights_finite(model: &Llama) -> bool {
    struct AllFinite {
        ok: bool,
    }
    impl ModuleVisitor for AllFinite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.ok {
                self.ok = param.val().is_finite().all().into_scalar::<bool>();
            }
        }
    }
    let mut v = AllFinite { ok: true };
    model.visit(&mut v);
    v.ok
}

/// One rank's share of a micro-batch of the global batch `indices`: its
/// rows, and the factor that turns its mean loss into its part of the
/// global mean (exactly 1 for one process, which is then unchanged).
fn my_share(examples: &dyn Examples, indices: &[usize], world: &dyn Collective) -> (Batch, Option<f64>) {
    if world.world_size() == 1 {
        return (examples.batch(indices), None);
    }
    let rows = shard(indices.len(), world.rank(), world.world_size());
    let mine = examples.batch(&indices[rows]);
    // A mean divides by its counted positions, at least 1 (as
    // `cross_entropy` clamps them): this rank's, and the global batch's,
    // which the ranks' counts sum to.
    let mut global = [mine.counted_positions()];
    world.sum_f64(&mut global);
    let scale = mine.counted_positions().max(1.0) / global[0].max(1.0);
    (mine, Some(scale))
}

/// Trains `model` (prepared by `Trainable`, on `start`'s autodiff device)
/// on `examples`, resuming from the instance's checkpoint when there is one.
///
/// On several ranks (`ctx.world`), every rank runs this loop on its slice
/// of each global batch; gradients are summed before each optimizer step
/// (`sync`), so every rank steps the same model. Rank 0 validates and
/// writes checkpoints; all ranks read them, so a run may resume on another
/// number of ranks (the data cursor counts global examples).
pub fn train(
    ctx: &StageContext,
    settings: &Settings,
    start: &Start,
    mut model: Llama,
    examples: &dyn Examples,
) -> Result<Outcome, StageError> {
    let (device, rope, rope_eval, validation) = (&start.device, &start.rope, &start.rope_eval, &start.validation);
    let world = ctx.world.as_ref();
    let (rank, ranks) = (world.rank(), world.world_size());
    let ad = device.clone().autodiff();
    let s = settings;
    if s.batch_size < ranks {
        return Err(StageError::failed(format!(
            "batch_size {} is smaller than the {ranks} ranks: each rank needs at least one sequence of the global batch",
            s.batch_size
        )));
    }
    let mut optim: ModuleOptimizer = s.optimizer.clone().init((s.clip > 0.0).then_some(s.clip as f32));
    let checkpoints = Checkpoints::new(ctx.resume_dir);
    let mut metrics = Metrics::default();
    let evaluate = |model: &Llama, step: usize, tokens: u64, metrics: &mut Metrics| -> Vec<(String, f64)> {
        if rank != 0 {
            // Rank 0 reports; the others wait for it at the next all-reduce.
            return Vec::new();
        }
        let plain = model.valid();
        let mut out = Vec::new();
        for set in validation {
            let (loss, windows) = validate(&plain, rope_eval, set, s.batch_size, s.eval_batches, device);
            metrics.push(step as u64, tokens, "val_loss", &set.lang, loss);
            metrics.push(step as u64, tokens, "val_ppl", &set.lang, loss.exp());
            let chars = set.chars_of_first(windows);
            if chars > 0.0 {
                let predicted = (windows * set.seq_len()) as f64;
                let bits = loss * predicted / chars / std::f64::consts::LN_2;
                metrics.push(step as u64, tokens, "val_bits_per_char", &set.lang, bits);
            }
            out.push((set.lang.clone(), loss));
        }
        out
    };

    let mut pos = Position {
        step: 0,
        cursor: 0,
        last_loss: f64::NAN,
        seconds: 0.0,
        optimizer_seconds: 0.0,
        tokens: 0,
        initial_validation: Vec::new(),
    };
    let mut resumed_from = None;
    // Rank 0 reads first (it may set a damaged checkpoint aside), then the rest.
    let mut loaded = None;
    for turn in [true, false] {
        if (rank == 0) == turn {
            loaded = Some(checkpoints.load(model.clone(), optim.clone(), &|m| ctx.warn(m)));
        }
        world.barrier();
    }
    match loaded.expect("every rank took its turn")? {
        Some(r) => {
            ctx.log(&format!("resuming from the checkpoint at step {}", r.position.step));
            (model, optim, pos, metrics.rows) = (r.model, r.optim, r.position, r.metrics);
            resumed_from = Some(pos.step);
        }
        None => {
            ctx.log("no checkpoint to resume: training from step 0");
            pos.initial_validation = evaluate(&model, 0, 0, &mut metrics)
        }
    }
    let mut at = [pos.step as f64, -(pos.step as f64)];
    world.max_f64(&mut at);
    if at[0] != -at[1] {
        return Err(StageError::failed(format!(
            "the ranks found different checkpoints (steps {} to {}): is the store's resume folder shared by every node?",
            -at[1], at[0]
        )));
    }

    let device_peak = babelflow_model::device::DevicePeak::new(device);
    let mut order = Order::new(examples.len(), s.seed);
    let (earlier_seconds, started) = (pos.seconds, Instant::now());
    let mut allreduce_seconds = 0.0;
    while pos.step < s.steps {
        // Together: a rank that stopped alone would leave the others waiting.
        if world.any(ctx.cancel.is_cancelled()) {
            return Err(StageError::Cancelled);
        }
        let step = pos.step;
        let lr = s.schedule.at(step);
        let t0 = Instant::now();
        let mut acc = GradientsAccumulator::<Llama>::new();
        let mut step_loss = 0.0;
        let mut step_tokens = 0;
        let mut bad_loss = None;
        for _ in 0..s.grad_accum {
            let indices: Vec<usize> = (0..s.batch_size).map(|k| order.at(pos.cursor + k)).collect();
            pos.cursor += s.batch_size;
            let (batch, share) = my_share(examples, &indices, world);
            step_tokens += batch.tokens;
            let (inputs, targets, weights) = tensors(batch, &ad);
            let micro = MicroBatch {
                inputs,
                targets,
                weights,
            };
            let scale = |mut loss: Tensor<1>| {
                if let Some(share) = share {
                    loss = loss * share;
                }
                loss / s.grad_accum as f64
            };
            let value = loss_and_gradients(
                &model,
                micro,
                (rope, rope_eval),
                s.checkpoint_activations,
                scale,
                &mut acc,
            );
            if !value.is_finite() {
                bad_loss = Some(value);
                break;
            }
            step_loss += value as f64;
        }
        let mut totals = [step_loss, step_tokens as f64, f64::from(u8::from(bad_loss.is_some()))];
        world.sum_f64(&mut totals);
        let (step_loss, step_tokens) = (totals[0], totals[1] as usize);
        if totals[2] > 0.0 {
            let value = bad_loss.map_or("NaN or infinite on another rank".to_string(), |v| v.to_string());
            return Err(diverged(&checkpoints, format!("the loss became {value}"), step + 1));
        }
        let mut grads = acc.grads();
        if ranks > 1 {
            let seconds;
            (grads, seconds) = sum_gradients(world, &model, grads, device);
            allreduce_seconds += seconds;
        }
        let norm = grad_norm(&model, &grads);
        if !norm.is_finite() {
            // Stepped with, these gradients would turn the weights into NaN,
            // and the next checkpoint would save them.
            return Err(diverged(
                &checkpoints,
                format!("the gradient norm became {norm}"),
                step + 1,
            ));
        }
        // Gradients, optimizer state and what the backward left in the
        // pools are all held here: the step's high-water mark.
        device_peak.sample();
        let updating = Instant::now();
        model = optim.step(lr, model, grads);
        // On a GPU backend this is the time to queue the update, not to run it.
        pos.optimizer_seconds += updating.elapsed().as_secs_f64();
        pos.step += 1;
        pos.last_loss = step_loss;
        pos.tokens += step_tokens as u64;
        let tps = step_tokens as f64 / t0.elapsed().as_secs_f64();
        let (st, seen) = (pos.step as u64, pos.tokens);
        metrics.push(st, seen, "loss", "", step_loss);
        metrics.push(st, seen, "lr", "", lr);
        metrics.push(st, seen, "grad_norm", "", norm);
        metrics.push(st, seen, "tokens_per_s", "", tps);
        ctx.progress(
            st,
            Some(s.steps as u64),
            &format!("loss {step_loss:.3}, {tps:.0} tokens/s"),
        );
        if pos.step.is_multiple_of(s.eval_every) && pos.step != s.steps {
            check_replicas(world, &model, pos.step)?;
            evaluate(&model, pos.step, seen, &mut metrics);
        }
        if s.checkpoint_every > 0 && pos.step.is_multiple_of(s.checkpoint_every) && pos.step != s.steps {
            // Only a sound state is worth resuming: finite loss and gradients
            // were checked above, the weights the step produced are here.
            if !weights_finite(&model) {
                return Err(diverged(
                    &checkpoints,
                    "a weight became NaN or infinite".into(),
                    pos.step,
                ));
            }
            pos.seconds = earlier_seconds + started.elapsed().as_secs_f64();
            if rank == 0 {
                checkpoints.save(&model, &optim, &pos, &metrics.rows)?;
            }
        }
    }
    check_replicas(world, &model, s.steps)?;
    if ranks > 1 {
        metrics.push(pos.step as u64, pos.tokens, "allreduce_s", "", allreduce_seconds);
    }
    let final_validation = evaluate(&model, s.steps, pos.tokens, &mut metrics);
    Ok(Outcome {
        model,
        metrics,
        initial_validation: pos.initial_validation,
        final_validation,
        last_loss: pos.last_loss,
        tokens: pos.tokens,
        seconds: earlier_seconds + started.elapsed().as_secs_f64(),
        resumed_from,
        world_size: ranks,
        allreduce_seconds,
        optimizer_seconds: pos.optimizer_seconds,
        device_peak,
    })
}
