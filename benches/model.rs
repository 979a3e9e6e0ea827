//! Forward and forward+backward throughput of the LLaMA on CPU (burn flex).
//!
//!   cargo bench --bench model
//!   BENCH_SMALL=1 cargo bench --bench model     # d64 L2 V2048, quick
//!
//! Config (the design's training-shaped one, with attention): d_model 256,
//! 4 layers, 8 heads, vocabulary 8192, batch 8 × 256 tokens. Prints tokens/s
//! and achieved GFLOP/s counting 2N (forward) or 6N (forward+backward) FLOPs
//! per token plus attention, N = non-embedding + head parameters.

use std::time::Instant;

use babelflow_model::burn::tensor::{Device, Int, Tensor, TensorData};
use babelflow_model::loss::cross_entropy;
use babelflow_model::{Llama, LlamaConfig, Rope};

/// Token ids from a small LCG (no rand dependency needed for a benchmark).
fn random_ids(batch: usize, seq: usize, vocab: usize, state: &mut u64, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = (0..batch * seq)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 33) % vocab as u64) as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [batch, seq]), device)
}

fn main() {
    let small = std::env::var_os("BENCH_SMALL").is_some();
    let (d, layers, vocab, batch, seq) = if small {
        (64, 2, 2048, 4, 128)
    } else {
        (256, 4, 8192, 8, 256)
    };
    let mut config = LlamaConfig::tiny(vocab, d, layers, 8, 8);
    config.intermediate_size = d * 8 / 3;
    let tokens = (batch * seq) as f64;
    let n = (layers * (4 * d * d + 3 * d * config.intermediate_size) + vocab * d) as f64;
    let attn = (layers * 2 * seq * d) as f64; // QKᵀ and AV per token (forward), causal half ignored
    println!(
        "config: d={d} layers={layers} vocab={vocab} batch={batch}x{seq}; N={:.1}M; {} threads",
        n / 1e6,
        std::thread::available_parallelism().map_or(1, |t| t.get())
    );

    let device = Device::flex();
    let rope = Rope::new(&config, seq, &device).unwrap();
    let model = Llama::init(&config, &device);
    let mut state = 7u64;
    let time = |label: &str, flops_per_token: f64, f: &mut dyn FnMut()| {
        f();
        let iters = 3;
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        let s = start.elapsed().as_secs_f64() / iters as f64;
        println!(
            "{label:18} {:9.0} tokens/s  {:6.1} GFLOP/s  ({:.3} s/step)",
            tokens / s,
            tokens * flops_per_token / s / 1e9,
            s
        );
    };
    time("forward", 2.0 * n + 2.0 * attn, &mut || {
        let logits = model.forward(random_ids(batch, seq, vocab, &mut state, &device), &rope, None);
        let _: f32 = logits.mean().into_scalar();
    });

    let ad = device.clone().autodiff();
    let rope_ad = Rope::new(&config, seq, &ad).unwrap();
    let model_ad = Llama::init(&config, &ad);
    let mut state = 11u64;
    time("forward+backward", 6.0 * n + 6.0 * attn, &mut || {
        let input = random_ids(batch, seq + 1, vocab, &mut state, &ad);
        let x = input.clone().narrow(1, 0, seq);
        let y = input.narrow(1, 1, seq);
        let loss = cross_entropy(model_ad.forward(x, &rope_ad, None), y, None);
        let grads = loss.backward();
        let g = model_ad.embed_tokens.val().grad(&grads);
        assert!(g.is_some());
    });
}
