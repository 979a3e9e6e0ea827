//! What a training instance will cost, before it runs: parameters (all,
//! and what trains), FLOPs per token, and one process's peak memory as
//! this trainer holds it. The arithmetic follows the kernels:
//!
//! - a token's forward pass is 2 FLOPs per weight of every matrix product
//!   (the blocks' projections and the head; the embedding is a lookup),
//!   plus attention's two products over the whole `t × t` square
//!   (4·t·heads·head_dim per layer), plus each LoRA adapter's 2·r·(in+out);
//! - the backward pass is 2 FLOPs per weight for the input's gradient of
//!   every product (they all lie between the loss and something that
//!   trains), attention's backward (twice its forward), and 2 more per
//!   weight that trains for its own gradient (a frozen weight has none);
//! - activation checkpointing runs the blocks' forward a second time.
//!
//! Full training is thus 6·N + 12·L·t·d per token (Kaplan et al.'s 6N plus
//! attention over the full square); LoRA is about 4·N.

use babelflow_model::config::LlamaConfig;
use babelflow_model::estimate::{
    attention_flops_per_token, disk_dtype, forward_flops_per_token, model_facts, model_input_facts, model_of,
    product_weights,
};
use babelflow_model::hf::expected_tensors;
use babelflow_model::hf::DiskDtype;
use babelflow_stage::estimate::{Basis, Count, Facts, FitOption, Memory, Work};
use babelflow_stage::{Estimate, EstimateContext};
use burn::module::{ParamGroup, ParamId};
use burn::tensor::DType;

use crate::memory::{activations_bytes, Kernels};
use crate::trainable::{Mode, Trainable, PROJECTIONS};
use crate::trainer::Settings;

/// What one training step of one process holds and computes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCost {
    pub parameters: u64,
    pub trainable_parameters: u64,
    pub memory: Memory,
    /// Forward + backward (+ recomputation) FLOPs per trained token.
    pub train_flops_per_token: f64,
    /// Forward FLOPs per token (validation, evaluation).
    pub forward_flops_per_token: f64,
}

/// One matrix or vector of the model: its checkpoint name, element count,
/// and (for a matrix) its input and output sizes.
struct Tensor {
    path: String,
    elements: u64,
    /// (in, out) of a projection, `None` for vectors and the embeddings.
    product: Option<(u64, u64)>,
}

fn tensors(config: &LlamaConfig) -> Vec<Tensor> {
    expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let elements = shape.iter().map(|&s| s as u64).product();
            let product =
                (shape.len() == 2 && name != "model.embed_tokens.weight").then(|| (shape[1] as u64, shape[0] as u64));
            Tensor {
                path: babelflow_model::hf::module_path(&name),
                elements,
                product,
            }
        })
        .collect()
}

/// What exists only for a moment at the step's peak, when the backward
/// pass begins: the gradient of the logits (as large as the logits), and a
/// head held in bf16 widened to f32 for its product.
fn transient_bytes(config: &LlamaConfig, trainable: &Trainable, rows: usize, seq_len: usize) -> u64 {
    let (v, d) = (config.vocab_size as u64, config.hidden_size as u64);
    let logits_gradient = (rows * seq_len) as u64 * v * 4;
    let head_trains = matches!(trainable.mode, Mode::Full | Mode::Embeddings) && trainable.freeze.is_empty();
    let widened_head = if trainable.frozen_dtype == DType::BF16 && !head_trains {
        v * d * 4
    } else {
        0
    };
    logits_gradient + widened_head
}

/// The cost of a step of `rows` sequences of `seq_len` tokens on one process.
pub fn step_cost(
    config: &LlamaConfig,
    base_vocab_size: Option<usize>,
    trainable: &Trainable,
    rows: usize,
    seq_len: usize,
    checkpointed: bool,
    kernels: Kernels,
) -> StepCost {
    let d = config.hidden_size as u64;
    let frozen_bytes = trainable.frozen_dtype.size() as u64;
    let freeze = (!trainable.freeze.is_empty())
        .then(|| ParamGroup::from_any_regexes(trainable.freeze.clone()).ok())
        .flatten();
    let frozen_by_regex = |path: &str| freeze.as_ref().is_some_and(|g| g.matches(&ParamId::new(), Some(path)));
    let added_rows = base_vocab_size.map_or(0, |b| (config.vocab_size as u64).saturating_sub(b as u64));
    let (mut parameters, mut trainable_parameters, mut weights_bytes) = (0u64, 0u64, 0u64);
    let products = product_weights(config);
    let (mut trained_products, mut adapters) = (0u64, 0u64);
    let head_path = if config.tie_word_embeddings {
        "embed_tokens"
    } else {
        "lm_head.weight"
    };
    for t in tensors(config) {
        parameters += t.elements;
        let is_embedding = t.path == "embed_tokens" || t.path == "lm_head.weight";
        let trains = !frozen_by_regex(&t.path)
            && match &trainable.mode {
                Mode::Full => true,
                Mode::Embeddings => is_embedding,
                Mode::NewEmbeddings | Mode::Lora { .. } => false,
            };
        let mut trained_here = if trains { t.elements } else { 0 };
        if trainable.mode == Mode::NewEmbeddings && is_embedding {
            trained_here = added_rows * d;
        }
        if let (Mode::Lora { rank, targets, .. }, Some((i, o))) = (&trainable.mode, t.product) {
            if targets.iter().any(|p| t.path.ends_with(&format!(".{p}.weight"))) {
                let adapter = *rank as u64 * (i + o);
                adapters += adapter;
                trainable_parameters += adapter;
                weights_bytes += 4 * adapter;
            }
        }
        trainable_parameters += trained_here;
        let frozen_here = t.elements - trained_here;
        // Vectors stay f32 whatever the precision; so do trained rows.
        let frozen_dtype_bytes = if t.product.is_some() || t.path == "embed_tokens" {
            frozen_bytes
        } else {
            4
        };
        weights_bytes += 4 * trained_here + frozen_dtype_bytes * frozen_here;
        // The head's product: its weight's gradient when (part of) it trains.
        let is_head = t.path == head_path;
        if t.product.is_some() || is_head {
            trained_products += trained_here;
        }
    }
    let attention_forward = attention_flops_per_token(config, seq_len);
    let head_product = (config.vocab_size as u64 * d) as f64;
    let forward = 2.0 * products as f64 + attention_forward + 2.0 * adapters as f64;
    let backward = 2.0 * products as f64 + 2.0 * attention_forward + 2.0 * (trained_products + 2 * adapters) as f64;
    let recompute = if checkpointed {
        forward - 2.0 * head_product
    } else {
        0.0
    };
    StepCost {
        parameters,
        trainable_parameters,
        memory: Memory {
            weights_bytes,
            gradients_bytes: 4 * trainable_parameters,
            optimizer_state_bytes: 8 * trainable_parameters,
            activations_bytes: activations_bytes(config, trainable, rows, seq_len, checkpointed, kernels)
                + transient_bytes(config, trainable, rows, seq_len),
        },
        train_flops_per_token: forward + backward + recompute,
        forward_flops_per_token: forward_flops_per_token(config, seq_len),
    }
}

/// The training run: `steps` × `grad_accum` micro-batches of `batch`
/// sequences (over all processes) of `seq_len`, validation passes over
/// `validation_rows` sequences at each evaluation.
pub struct RunShape {
    pub steps: usize,
    pub batch: usize,
    pub grad_accum: usize,
    pub seq_len: usize,
    pub checkpointed: bool,
    /// The CPU's fused kernels, or a GPU's composed operations.
    pub kernels: Kernels,
    pub processes: usize,
    /// Sequences one evaluation reads over all validation sets.
    pub validation_rows: usize,
    pub evaluations: usize,
    /// Resumable checkpoints written during the run.
    pub checkpoints: usize,
    /// Bytes of the saved model per parameter.
    pub save_bytes_per_parameter: u64,
    /// Bytes of the input model's files per parameter.
    pub read_bytes_per_parameter: u64,
}

/// The work of a training run, with the changes that would lower its memory.
pub fn training_work(
    config: &LlamaConfig,
    base_vocab_size: Option<usize>,
    trainable: &Trainable,
    run: &RunShape,
    tokens_how: String,
) -> Work {
    let rows = run.batch.div_ceil(run.processes.max(1));
    let cost = step_cost(
        config,
        base_vocab_size,
        trainable,
        rows,
        run.seq_len,
        run.checkpointed,
        run.kernels,
    );
    let tokens = (run.steps * run.grad_accum * run.batch * run.seq_len) as f64;
    let validation_tokens = (run.evaluations * run.validation_rows * run.seq_len) as f64;
    let peak = |trainable: &Trainable, rows: usize, checkpointed: bool| {
        step_cost(
            config,
            base_vocab_size,
            trainable,
            rows,
            run.seq_len,
            checkpointed,
            run.kernels,
        )
        .memory
        .total_bytes()
    };
    let mut fit_options = Vec::new();
    let now = cost.memory.total_bytes();
    let mut offer = |change: String, peak_bytes: u64| {
        if peak_bytes < now {
            fit_options.push(FitOption { change, peak_bytes });
        }
    };
    if !run.checkpointed {
        offer("checkpoint_activations: true".into(), peak(trainable, rows, true));
    }
    let frozen_something = trainable.mode != Mode::Full || !trainable.freeze.is_empty();
    if frozen_something && trainable.frozen_dtype == DType::F32 {
        let bf16 = Trainable {
            frozen_dtype: DType::BF16,
            ..trainable.clone()
        };
        offer("precision: bf16".into(), peak(&bf16, rows, run.checkpointed));
    }
    if trainable.mode == Mode::Full {
        let lora = Trainable {
            mode: Mode::Lora {
                rank: 8,
                alpha: 16.0,
                targets: PROJECTIONS[..4].iter().map(|s| s.to_string()).collect(),
            },
            frozen_dtype: DType::BF16,
            ..trainable.clone()
        };
        offer(
            "trainable: lora (rank 8 on q/k/v/o), precision: bf16, checkpoint_activations: true".into(),
            peak(&lora, rows, true),
        );
    }
    if rows > 1 {
        offer(
            format!(
                "batch_size: {} with grad_accum: {} (same tokens per step)",
                run.processes.max(1),
                run.grad_accum * rows
            ),
            peak(trainable, 1, run.checkpointed),
        );
    }
    let checkpoint_bytes = cost.memory.weights_bytes + cost.memory.optimizer_state_bytes;
    Work {
        tokens: Count::new(tokens, Basis::Params, tokens_how),
        train_flops: tokens * cost.train_flops_per_token,
        forward_flops: validation_tokens * cost.forward_flops_per_token,
        parameters: cost.parameters,
        trainable_parameters: cost.trainable_parameters,
        memory: cost.memory,
        fit_options,
        io_bytes: cost.parameters * (run.read_bytes_per_parameter + run.save_bytes_per_parameter)
            + run.checkpoints as u64 * checkpoint_bytes,
        hidden_size: config.hidden_size,
        forward_rows: 0,
        // The f32 gradients of what trains, summed once per optimizer step
        // (`sync.rs`: after accumulation, in buckets).
        all_reduce_bytes: if run.processes > 1 {
            (run.steps as u64) * 4 * cost.trainable_parameters
        } else {
            0
        },
        optimizer_updates: run.steps as f64 * cost.trainable_parameters as f64,
    }
}

/// Occurrences of a multiple of `every` in 1..steps (what happens every N
/// steps but not at the last one).
fn between(steps: usize, every: usize) -> usize {
    if every == 0 || steps == 0 {
        0
    } else {
        (steps - 1) / every
    }
}

/// A training kind's estimate: `model` keeps its shape; the work from the
/// parameters, the model's shape and the validation sets' sizes.
pub fn estimate_training(
    ctx: &EstimateContext,
    seq_len: usize,
    tokens_how: &str,
) -> Result<Estimate, babelflow_stage::StageError> {
    let p = ctx.params;
    let settings = Settings::from_params(p)?;
    let mut trainable = Trainable::from_params(p)?;
    let mut estimate = Estimate::default();
    let Some(model) = ctx.input("model").first() else {
        return Ok(estimate);
    };
    let Some((config, base_vocab_size)) = model_of(model) else {
        estimate.unknown = Some("the input model's shape is not known before it exists".into());
        return Ok(estimate);
    };
    // As `output.rs` saves: `input` is the input folder's dtype.
    let read = model_input_facts(model).map_or(DiskDtype::F32, |m| disk_dtype(&m));
    let save = match p.str("save_dtype")? {
        "input" => read,
        name => DiskDtype::parse(name).unwrap_or(DiskDtype::F32),
    };
    // The tokenizer the trained folder will hold: the `tokenizer` input's, else the model's.
    let tokenizer = match ctx.input("tokenizer").first() {
        Some(t) => t.path.as_deref().and_then(babelflow_model::estimate::tokenizer_file),
        None => babelflow_model::estimate::model_tokenizer(model),
    };
    estimate.outputs.insert(
        "model".into(),
        Facts {
            model: model_facts(&config, save, base_vocab_size, tokenizer),
            ..Facts::default()
        },
    );
    if trainable.mode == Mode::NewEmbeddings {
        if base_vocab_size.is_none() {
            estimate.unknown = Some("`new-embeddings` on a model resize-vocab did not make".into());
            return Ok(estimate);
        }
        trainable.base_rows = base_vocab_size;
    }
    let batch = settings.batch_size;
    let validation_rows: usize = ctx
        .input("validation")
        .iter()
        .map(|set| {
            let cap = batch * settings.eval_batches;
            match &set.facts.tokens {
                Some(tokens) => cap.min(((tokens.value as usize) / seq_len.max(1)).max(1)),
                None => cap,
            }
        })
        .sum();
    let run = RunShape {
        steps: settings.steps,
        batch,
        grad_accum: settings.grad_accum,
        seq_len,
        checkpointed: settings.checkpoint_activations,
        kernels: if ctx.on_gpu { Kernels::Composed } else { Kernels::Fused },
        processes: ctx.processes,
        validation_rows,
        evaluations: 2 + between(settings.steps, settings.eval_every),
        checkpoints: between(settings.steps, settings.checkpoint_every),
        save_bytes_per_parameter: save.bytes(),
        read_bytes_per_parameter: read.bytes(),
    };
    let how = format!(
        "{} steps × {} micro-batch{} × {batch} × {seq_len} {tokens_how}",
        settings.steps,
        settings.grad_accum,
        if settings.grad_accum == 1 { "" } else { "es" },
    );
    estimate.work = Some(training_work(&config, base_vocab_size, &trainable, &run, how));
    Ok(estimate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora_qkvo() -> Mode {
        Mode::Lora {
            rank: 8,
            alpha: 16.0,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
        }
    }

    const N_7B: u64 = 6_738_415_616;
    // Per layer: q, k, v, o (4096²) and gate, up, down (4096·11008).
    const BLOCK_PRODUCTS: u64 = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008);
    const HEAD: u64 = 32000 * 4096;

    /// One step of one 512-token sequence of LLaMA-2-7B.
    fn cost_7b(mode: Mode, frozen_dtype: DType, checkpointed: bool) -> StepCost {
        let trainable = Trainable::new(mode, frozen_dtype);
        step_cost(
            &LlamaConfig::llama_2_7b(),
            None,
            &trainable,
            1,
            512,
            checkpointed,
            Kernels::Fused,
        )
    }

    #[test]
    fn llama_2_7b_has_its_published_parameter_count() {
        let cost = cost_7b(Mode::Full, DType::F32, false);
        assert_eq!(cost.parameters, N_7B);
        assert_eq!(cost.trainable_parameters, N_7B);
    }

    #[test]
    fn full_training_is_six_flops_per_weight_plus_attention_by_hand() {
        let t = 512.0;
        let cost = cost_7b(Mode::Full, DType::F32, false);
        let products = (BLOCK_PRODUCTS + HEAD) as f64;
        let attention = 4.0 * 32.0 * t * 32.0 * 128.0;
        assert_eq!(cost.forward_flops_per_token, 2.0 * products + attention);
        assert_eq!(cost.train_flops_per_token, 6.0 * products + 3.0 * attention);
        // Weights, gradients, AdamW's two moments: 16 bytes per parameter.
        let m = &cost.memory;
        assert_eq!(
            (m.weights_bytes, m.gradients_bytes, m.optimizer_state_bytes),
            (4 * N_7B, 4 * N_7B, 8 * N_7B)
        );
    }

    #[test]
    fn lora_r8_trains_the_adapters_and_holds_the_base_in_bf16_by_hand() {
        let cost = cost_7b(lora_qkvo(), DType::BF16, false);
        // q, k, v, o of 32 layers: 8·(4096 + 4096) each.
        let adapters = 32 * 4 * 8 * (4096 + 4096);
        assert_eq!(adapters, 8_388_608);
        assert_eq!(cost.trainable_parameters, adapters);
        // Matrices and the embeddings in bf16, the 65 norm vectors in f32, adapters in f32.
        let vectors = 65 * 4096;
        let m = &cost.memory;
        assert_eq!(m.weights_bytes, 2 * (N_7B - vectors) + 4 * vectors + 4 * adapters);
        assert_eq!(
            (m.gradients_bytes, m.optimizer_state_bytes),
            (4 * adapters, 8 * adapters)
        );
        let products = (BLOCK_PRODUCTS + HEAD) as f64;
        let attention = 4.0 * 32.0 * 512.0 * 32.0 * 128.0;
        // Forward, ∂x of everything, attention's backward, and the adapters' forward, ∂x and ∂W.
        let expected = 4.0 * products + 3.0 * attention + 6.0 * adapters as f64;
        assert_eq!(cost.train_flops_per_token, expected);
    }

    #[test]
    fn embeddings_only_trains_both_vocabulary_matrices_by_hand() {
        let cost = cost_7b(Mode::Embeddings, DType::F32, false);
        assert_eq!(cost.trainable_parameters, 2 * HEAD);
        let products = (BLOCK_PRODUCTS + HEAD) as f64;
        let attention = 4.0 * 32.0 * 512.0 * 32.0 * 128.0;
        // Only the head's product has a weight gradient (the embedding is a lookup).
        assert_eq!(
            cost.train_flops_per_token,
            4.0 * products + 3.0 * attention + 2.0 * HEAD as f64
        );
        assert_eq!(cost.memory.optimizer_state_bytes, 8 * 2 * HEAD);
    }

    #[test]
    fn new_embeddings_train_only_the_added_rows() {
        let mut config = LlamaConfig::llama_2_7b();
        config.vocab_size = 49953; // Chinese-LLaMA's extended vocabulary
        let cost = step_cost(
            &config,
            Some(32000),
            &Trainable::new(Mode::NewEmbeddings, DType::BF16),
            1,
            512,
            false,
            Kernels::Fused,
        );
        assert_eq!(cost.trainable_parameters, 2 * 17953 * 4096);
    }

    #[test]
    fn checkpointing_recomputes_the_blocks_forward() {
        let whole = cost_7b(lora_qkvo(), DType::BF16, false);
        let checkpointed = cost_7b(lora_qkvo(), DType::BF16, true);
        let blocks_forward = whole.forward_flops_per_token - 2.0 * HEAD as f64 + 2.0 * (32 * 4 * 8 * 8192) as f64;
        assert_eq!(
            checkpointed.train_flops_per_token,
            whole.train_flops_per_token + blocks_forward
        );
        assert!(checkpointed.memory.activations_bytes < whole.memory.activations_bytes / 4);
    }

    #[test]
    fn freeze_patterns_take_weights_out_of_what_trains() {
        let mut t = Trainable::new(Mode::Full, DType::F32);
        t.freeze = vec![r"^layers\.[0-9]\.".into()];
        let cost = step_cost(&LlamaConfig::llama_2_7b(), None, &t, 1, 512, false, Kernels::Fused);
        let per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096;
        assert_eq!(cost.trainable_parameters, N_7B - 10 * per_layer);
    }

    #[test]
    fn processes_sum_the_trained_gradients_once_a_step() {
        let run = |processes: usize| RunShape {
            steps: 10,
            batch: 8,
            grad_accum: 4,
            seq_len: 512,
            checkpointed: true,
            kernels: Kernels::Fused,
            processes,
            validation_rows: 0,
            evaluations: 0,
            checkpoints: 0,
            save_bytes_per_parameter: 2,
            read_bytes_per_parameter: 2,
        };
        let config = LlamaConfig::llama_2_7b();
        let lora = Trainable::new(lora_qkvo(), DType::BF16);
        let adapters = step_cost(&config, None, &lora, 1, 512, true, Kernels::Fused).trainable_parameters;
        let work = |processes| training_work(&config, None, &lora, &run(processes), String::new());
        // f32 gradients of the adapters alone, once per optimizer step
        // (not per micro-batch): 10 × 4 bytes × 4.2 M.
        assert_eq!(work(2).all_reduce_bytes, 10 * 4 * adapters);
        assert_eq!(work(1).all_reduce_bytes, 0);
    }
}
