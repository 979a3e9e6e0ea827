//! The ceiling a training step's matrix products can reach on this machine:
//! the gemm crate's f32 product (the one babelflow's fused ops call, over
//! the same rayon pool) timed at each product of one AdamW step of a LLaMA
//! shape, and the step's FLOPs over the sum of those times. A training step
//! can only be slower than this (it also normalises, rotates, takes
//! softmaxes and updates weights); `scripts/bench-real-shape.sh` prints the
//! step's achieved GFLOP/s beside it.
//!
//!   RAYON_NUM_THREADS=2 cargo bench --bench gemm_ceiling                 # SmolLM2-135M, 4×256
//!   GEMM_SHAPE=576,1536,9,3,49152 GEMM_TOKENS=1024 cargo bench --bench gemm_ceiling
//!
//! GEMM_SHAPE is hidden, intermediate, heads, kv_heads, vocab (head_dim =
//! hidden / heads); GEMM_TOKENS the rows of a micro-batch.

use std::time::Instant;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|v| v.trim().parse().expect("comma-separated integers"))
        .collect()
}

/// Seconds per `m × k · k × n` product, the best of a few after a warm-up.
fn seconds(m: usize, n: usize, k: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let run = |c: &mut Vec<f32>| unsafe {
        // SAFETY: row-major buffers of exactly the sizes the strides describe.
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    };
    run(&mut c);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        run(&mut c);
        best = best.min(start.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let shape = env_list("GEMM_SHAPE", "576,1536,9,3,49152");
    let [d, inter, heads, kv_heads, vocab] = shape[..] else {
        panic!("GEMM_SHAPE: hidden,intermediate,heads,kv_heads,vocab")
    };
    let tokens = env_list("GEMM_TOKENS", "1024")[0];
    let layers = env_list("GEMM_LAYERS", "30")[0];
    let kv = kv_heads * (d / heads);
    // (out, in) of every projection of a block, then the head.
    let block = [(d, d), (kv, d), (kv, d), (d, d), (inter, d), (inter, d), (d, inter)];
    let mut flops = 0.0;
    let mut time = 0.0;
    println!(
        "gemm ceiling: d={d} intermediate={inter} heads={heads}/{kv_heads} vocab={vocab}, {tokens} tokens, \
         {} threads",
        rayon::current_num_threads()
    );
    for (i, &(out, inp)) in block.iter().chain(std::iter::once(&(vocab, d))).enumerate() {
        let repeat = if i < block.len() { layers as f64 } else { 1.0 };
        // Forward y = x·Wᵀ, backward ∂x = ∂y·W and ∂W = ∂yᵀ·x: three products.
        let products = [(tokens, out, inp), (tokens, inp, out), (out, inp, tokens)];
        for (m, n, k) in products {
            let s = seconds(m, n, k);
            let f = 2.0 * (m * n * k) as f64;
            println!("  {m:>6} x {k:>6} · {k:>6} x {n:>6}: {:7.1} GFLOP/s", f / s / 1e9);
            flops += f * repeat;
            time += s * repeat;
        }
    }
    println!(
        "ceiling for a full training step's products: {:.1} GFLOP/s ({:.2} s of products per step)",
        flops / time / 1e9,
        time
    );
}
