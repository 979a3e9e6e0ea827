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

/// f32 values one block keeps per token, for sequences of `seq_len`.
fn block_floats_per_token(config: &LlamaConfig, trainable: &Trainable, seq_len: usize) -> usize {
    let (d, hd, h, kv, inter, _) = config.dims();
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
    norms_attention_swiglu + kept_inputs + adapter_ranks
}

/// Estimated bytes of activations kept for the backward pass of one
/// micro-batch of `rows` sequences of `seq_len` tokens.
pub fn activations_bytes(
    config: &LlamaConfig,
    trainable: &Trainable,
    rows: usize,
    seq_len: usize,
    checkpointed: bool,
) -> u64 {
    let tokens = (rows * seq_len) as u64;
    let layers = config.num_hidden_layers as u64;
    let block = block_floats_per_token(config, trainable, seq_len) as u64;
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
            activations_bytes(&config, &Trainable::new(Mode::Full, DType::F32), 1, 128, false),
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
            activations_bytes(&config, &Trainable::new(lora.clone(), DType::F32), 1, 128, false),
            (32 * block + head) * 128 * 4
        );
        // Checkpointed: each block's input, one block being recomputed, the head.
        assert_eq!(
            activations_bytes(&config, &Trainable::new(lora, DType::F32), 1, 128, true),
            (32 * d + block + head) * 128 * 4
        );
    }
}
