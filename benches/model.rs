//! Throughput of the LLaMA: forward, forward+backward, a whole AdamW training
//! step, and KV-cached generation (one prompt, and eight of different
//! lengths batched), on any backend this build has.
//!
//!   cargo bench --bench model                                  # d256 L4, CPU
//!   BENCH_CONFIG=small cargo bench --bench model               # d64 L2, quick
//!   BENCH_CONFIG=100m BENCH_DEVICE=vulkan BENCH_PEAK_GFLOPS=67000 \
//!     cargo bench --features vulkan --bench model              # GPU
//!
//! Configs: `small` d64 L2 V2048 batch 4×128; `default` d256 L4 V8192 batch
//! 8×256; `100m` d768 L12 V32000 batch 8×512 (LLaMA shapes, 134 M parameters
//! with untied embeddings). FLOPs per token: 2N forward, 6N forward+backward,
//! plus attention (QKᵀ and AV, 2·layers·seq·d forward), N = non-embedding +
//! head parameters. With BENCH_PEAK_GFLOPS set, the model FLOPs utilisation
//! (MFU) against that peak is printed too. BENCH_MEMORY_STEPS=N also trains
//! N more steps and prints the resident-set size before and after (flat
//! means nothing accumulates across steps).

use std::time::Instant;

use babelflow_model::burn::module::Module;
use babelflow_model::burn::optim::GradientsParams;
use babelflow_model::burn::tensor::{Device, Int, Tensor, TensorData};
use babelflow_model::fused::adamw::AdamW;
use babelflow_model::generate::{generate, generate_batch, Sampling};
use babelflow_model::loss::cross_entropy;
use babelflow_model::{device, Llama, LlamaConfig, Rope};

// The allocator the `babelflow` binary runs with.
#[global_allocator]
static ALLOCATOR: babelflow_model::BlockCache = babelflow_model::BlockCache::new();

/// Token ids from a small LCG (no rand dependency needed for a benchmark).
fn random_ids(batch: usize, seq: usize, vocab: usize, state: &mut u64, device: &Device) -> Tensor<2, Int> {
    let data: Vec<i64> = (0..batch * seq).map(|_| next(state, vocab) as i64).collect();
    Tensor::from_data(TensorData::new(data, [batch, seq]), device)
}

fn next(state: &mut u64, vocab: usize) -> u32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 33) % vocab as u64) as u32
}

struct Bench {
    peak_gflops: Option<f64>,
    iters: usize,
}

impl Bench {
    /// Runs `f` once to warm up (kernel compilation on GPU), then `iters`
    /// times; `f` must end by reading a value back so GPU work is finished.
    fn time(&self, label: &str, tokens: f64, flops_per_token: f64, f: &mut dyn FnMut()) {
        f();
        let start = Instant::now();
        for _ in 0..self.iters {
            f();
        }
        let s = start.elapsed().as_secs_f64() / self.iters as f64;
        let gflops = tokens * flops_per_token / s / 1e9;
        let mfu = self
            .peak_gflops
            .map(|p| format!("  MFU {:.1}%", 100.0 * gflops / p))
            .unwrap_or_default();
        println!(
            "{label:18} {:10.0} tokens/s  {gflops:8.1} GFLOP/s{mfu}  ({s:.3} s/step)",
            tokens / s
        );
    }
}

fn main() {
    let which = std::env::var("BENCH_CONFIG").unwrap_or_else(|_| {
        if std::env::var_os("BENCH_SMALL").is_some() {
            "small".into()
        } else {
            "default".into()
        }
    });
    let (d, layers, heads, vocab, batch, seq, ffn) = match which.as_str() {
        "small" => (64, 2, 8, 2048, 4, 128, 64 * 8 / 3),
        "100m" => (768, 12, 12, 32000, 8, 512, 2048),
        _ => (256, 4, 8, 8192, 8, 256, 256 * 8 / 3),
    };
    let backend = std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let (device, backend_name) = match device::select(&backend, 0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut config = LlamaConfig::tiny(vocab, d, layers, heads, heads);
    config.intermediate_size = ffn;
    let tokens = (batch * seq) as f64;
    let n = (layers * (4 * d * d + 3 * d * ffn) + vocab * d) as f64;
    let attn = (layers * 2 * seq * d) as f64; // causal half not subtracted
    println!(
        "config {which}: d={d} layers={layers} heads={heads} ffn={ffn} vocab={vocab} batch={batch}x{seq}; \
         N={:.1}M (+{:.1}M embeddings); backend {backend_name}; {} CPU threads",
        n / 1e6,
        (vocab * d) as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |t| t.get())
    );
    let bench = Bench {
        peak_gflops: std::env::var("BENCH_PEAK_GFLOPS").ok().and_then(|s| s.parse().ok()),
        iters: std::env::var("BENCH_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    };

    let rope = Rope::new(&config, seq + 128, &device).expect("rope");
    let model = Llama::init(&config, 0, &device);
    let mut state = 7u64;
    bench.time("forward", tokens, 2.0 * n + 2.0 * attn, &mut || {
        let logits = model.forward(random_ids(batch, seq, vocab, &mut state, &device), &rope, None);
        let _: f32 = logits.mean().into_scalar();
    });

    let ad = device.clone().autodiff();
    let rope_ad = Rope::new(&config, seq, &ad).expect("rope");
    let mut model_ad = Some(Llama::init(&config, 0, &ad));
    let mut state = 11u64;
    let loss_of = |model: &Llama, state: &mut u64| {
        let input = random_ids(batch, seq + 1, vocab, state, &ad);
        let x = input.clone().narrow(1, 0, seq);
        let y = input.narrow(1, 1, seq);
        cross_entropy(model.forward(x, &rope_ad, None), y, None)
    };
    bench.time("forward+backward", tokens, 6.0 * n + 6.0 * attn, &mut || {
        let model = model_ad.as_ref().expect("model");
        let grads = loss_of(model, &mut state).backward();
        let g = model.embed_tokens.val().grad(&grads).expect("embedding gradient");
        let _: f32 = g.sum().into_scalar();
    });
    // The trainer's optimizer (burn's AdamW arithmetic, one pass per parameter).
    let mut optim = AdamW::new(0.9, 0.999, 1e-5, 0.01).init(None);
    bench.time("train step (AdamW)", tokens, 6.0 * n + 6.0 * attn, &mut || {
        let model = model_ad.take().expect("model");
        let loss = loss_of(&model, &mut state);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(3e-4, model, grads);
        let _: f32 = model.norm.weight.val().sum().into_scalar();
        model_ad = Some(model);
    });

    // Memory over a long run: resident-set size after warm-up and after many
    // more steps (BENCH_MEMORY_STEPS, default 0 = skip). Flat means no leak.
    let memory_steps: usize = std::env::var("BENCH_MEMORY_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if memory_steps > 0 {
        let rss_mb = || -> f64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                })
                .map_or(f64::NAN, |kb| kb / 1024.0)
        };
        let mut step = |model_ad: &mut Option<Llama>| {
            let model = model_ad.take().expect("model");
            let loss = loss_of(&model, &mut state);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let model = optim.step(3e-4, model, grads);
            let _: f32 = model.norm.weight.val().sum().into_scalar();
            *model_ad = Some(model);
        };
        for _ in 0..10 {
            step(&mut model_ad);
        }
        let after_warmup = rss_mb();
        for _ in 0..memory_steps {
            step(&mut model_ad);
        }
        println!(
            "memory             RSS {after_warmup:.0} MB after 10 steps, {:.0} MB after {} more",
            rss_mb(),
            memory_steps
        );
    }

    // Generation: one 128-token prompt, 32 new tokens, greedy, KV cache.
    let new_tokens = 32;
    let prompt: Vec<u32> = (0..128).map(|_| next(&mut state, vocab)).collect();
    let trained = model_ad.expect("model").valid();
    let sampling = Sampling {
        max_new_tokens: new_tokens,
        ..Sampling::default()
    };
    bench.time("generate (cached)", new_tokens as f64, 2.0 * n, &mut || {
        let out = generate(&trained, &rope, &prompt, &sampling, true, &device);
        assert_eq!(out.len(), new_tokens);
    });
    // Eight prompts of different lengths at once (left-padded, masked).
    let prompts: Vec<Vec<u32>> = (0..8)
        .map(|i| (0..96 + 4 * i).map(|_| next(&mut state, vocab)).collect())
        .collect();
    bench.time("generate (batch 8)", (8 * new_tokens) as f64, 2.0 * n, &mut || {
        let out = generate_batch(&trained, &rope, &prompts, &sampling, &device);
        assert_eq!(out[7].len(), new_tokens);
    });
}
