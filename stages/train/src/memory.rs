//! What a training step holds beyond its weights: an estimate of the
//! activations the backward pass keeps, from the model's shape, the batch,
//! which projections train, and whether blocks are recomputed. It counts
//! the tensors the CPU kernels save (`fused/`): per block and token
//! - the block input (saved by the first RMSNorm) and the attention's
//!   residual sum (saved by the second): 2·d;
//! - the attention's rotated queries, keys and values and its softmax
//!   probabilities: d + 2·kv_heads·head_dim + heads·t;
//! - SwiGLU's gate and up: 2·intermediate;
//! - the input of each projection whose weight trains or has an adapter
//!   (one buffer shared by q/k/v, one by gate/up; the attention output for
//!   o; SwiGLU's output for down), and each adapter's rank-r intermediate;
//!
//! and for the head, the final norm's input and the logits (d + vocab).
//! Checkpointed, only each block's input stays (d per block and token), plus
//! one block's tensors while it is recomputed.
//!
//! On a GPU the model runs burn's composed operations instead (the fused
//! kernels are CPU-only), whose autodiff keeps more per block and token:
//! the keys and values expanded to every query head for grouped-query
//! attention, 2·(heads − kv_heads)·head_dim; SiLU's sigmoid and its
//! product, 2·intermediate; the softmax's exponentials beside its output,
//! heads·t. Measured on lavapipe (d512, 8 layers, GQA 8/4, 2 steps), the
//! device's peak grows by 379 MiB per 1 024 tokens at t = 64, against 266
//! counted for the fused kernels and 383 with these.

use babelflow_model::LlamaConfig;

use crate::trainable::{Mode, Trainable, PROJECTIONS};

/// Which projection inputs a step keeps: the weight trains, or it has an adapter.
fn keeps_input(trainable: &Trainable, projection: &str) -> (bool, usize) {
    match &trainable.mode {
        Mode::Full => (true, 0),
        Mode::Embeddings | Mode::NewEmbeddings => (false, 0),
        Mode::Lora { rank, targets, .. } => {
            let adapted = targets.iter().any(|t| t == projection);
            (adapted, if adapted { *rank } else { 0 })
        }
    }
}

/// Which implementation of the block runs, and so what autodiff keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The CPU's fused kernels (`fused/`).
    Fused,
    /// burn's composed operations, on a GPU.
    Composed,
}

impl Kernels {
    /// What runs on `backend`, the name a device was opened as
    /// (`babelflow_model::device::select`: `cpu (flex)`, `wgpu:0`), or a
    /// resolved recipe backend (`cpu`, `vulkan`).
    pub fn on(backend: &str) -> Kernels {
        if backend == "cpu" || backend == "flex" || backend.starts_with("cpu ") {
            Kernels::Fused
        } else {
            Kernels::Composed
        }
    }
}

/// f32 values one block keeps per token, for sequences of `seq_len`.
fn block_floats_per_token(config: &LlamaConfig, trainable: &Trainable, seq_len: usize, kernels: Kernels) -> usize {
    let (d, hd, h, kv, inter, _) = config.dims();
    let composed = match kernels {
        Kernels::Fused => 0,
        Kernels::Composed => 2 * (h - kv) * hd + 2 * inter + h * seq_len,
    };
    let keeps = |projections: &[&str]| projections.iter().any(|p| keeps_input(trainable, p).0);
    let adapter_ranks: usize = PROJECTIONS.iter().map(|p| keeps_input(trainable, p).1).sum();
    let norms_attention_swiglu = 2 * d + (d + 2 * kv * hd + h * seq_len) + 2 * inter;
    let inputs = [
        (keeps(&["q_proj", "k_proj", "v_proj"]), d),
        (keeps(&["o_proj"]), h * hd),
        (keeps(&["gate_proj", "up_proj"]), d),
        (keeps(&["down_proj"]), inter),
    ];
    let kept_inputs: usize = inputs.iter().filter(|(kept, _)| *kept).map(|(_, n)| n).sum();
    norms_attention_swiglu + kept_inputs + adapter_ranks + composed
}

/// Estimated bytes of activations kept for the backward pass of one
/// micro-batch of `rows` sequences of `seq_len` tokens.
pub fn activations_bytes(
    config: &LlamaConfig,
    trainable: &Trainable,
    rows: usize,
    seq_len: usize,
    checkpointed: bool,
    kernels: Kernels,
) -> u64 {
    let tokens = (rows * seq_len) as u64;
    let layers = config.num_hidden_layers as u64;
    let block = block_floats_per_token(config, trainable, seq_len, kernels) as u64;
    let head = (config.hidden_size + config.vocab_size) as u64;
    let per_token = if checkpointed {
        layers * config.hidden_size as u64 + block + head
    } else {
        layers * block + head
    };
    per_token * tokens * 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    #[test]
    fn the_estimate_counts_what_the_kernels_keep_by_hand() {
        let config = LlamaConfig::llama_2_7b();
        let (d, inter, h, t) = (4096u64, 11008u64, 32u64, 128u64);
        // Full training: every projection keeps its input.
        let full = 2 * d + d + 2 * d + h * t + 2 * inter + d + d + d + inter;
        let head = d + 32000;
        assert_eq!(
            activations_bytes(
                &config,
                &Trainable::new(Mode::Full, DType::F32),
                1,
                128,
                false,
                Kernels::Fused
            ),
            (32 * full + head) * 128 * 4
        );
        // LoRA r8 on q/k/v/o: the shared q/k/v input, o's input, four rank-8 intermediates.
        let lora = Mode::Lora {
            rank: 8,
            alpha: 16.0,
            targets: vec!["q_proj".into(), "k_proj".into(), "v_proj".into(), "o_proj".into()],
        };
        let block = 2 * d + d + 2 * d + h * t + 2 * inter + d + d + 4 * 8;
        assert_eq!(
            activations_bytes(
                &config,
                &Trainable::new(lora.clone(), DType::F32),
                1,
                128,
                false,
                Kernels::Fused
            ),
            (32 * block + head) * 128 * 4
        );
        // Checkpointed: each block's input, one block being recomputed, the head.
        assert_eq!(
            activations_bytes(&config, &Trainable::new(lora, DType::F32), 1, 128, true, Kernels::Fused),
            (32 * d + block + head) * 128 * 4
        );
    }

    #[test]
    fn the_composed_gpu_path_keeps_expanded_keys_silu_and_exponentials_by_hand() {
        // A grouped-query 7B shape: 32 query heads over 8 key/value heads.
        let config = LlamaConfig {
            num_key_value_heads: Some(8),
            ..LlamaConfig::llama_2_7b()
        };
        let (d, inter, h, kv, hd, t) = (4096u64, 11008u64, 32u64, 8u64, 128u64, 128u64);
        let full = Trainable::new(Mode::Full, DType::F32);
        let fused_block = 2 * d + d + 2 * kv * hd + h * t + 2 * inter + d + d + d + inter;
        let composed_block = fused_block + 2 * (h - kv) * hd + 2 * inter + h * t;
        let head = d + 32000;
        assert_eq!(
            activations_bytes(&config, &full, 1, 128, false, Kernels::Composed),
            (32 * composed_block + head) * 128 * 4
        );
        assert_eq!(
            activations_bytes(&config, &full, 1, 128, false, Kernels::Fused),
            (32 * fused_block + head) * 128 * 4
        );
        // Checkpointed, the extras are one recomputed block's.
        assert_eq!(
            activations_bytes(&config, &full, 1, 128, true, Kernels::Composed),
            (32 * d + composed_block + head) * 128 * 4
        );
    }

    #[test]
    fn the_cpu_runs_the_fused_kernels_and_anything_else_the_composed_ones() {
        for cpu in ["cpu", "flex", "cpu (flex)", "cpu (flex; no usable GPU adapter)"] {
            assert_eq!(Kernels::on(cpu), Kernels::Fused, "{cpu}");
        }
        for gpu in ["wgpu", "vulkan", "cuda", "wgpu:0", "vulkan:1"] {
            assert_eq!(Kernels::on(gpu), Kernels::Composed, "{gpu}");
        }
    }
}
