#!/usr/bin/env python3
"""The PyTorch-eager side of `cargo bench --bench model`: the same LLaMA
shapes in Hugging Face transformers' LlamaForCausalLM, the same batch, the
same thread count, timed the same way (one warm-up, then the mean of N).

  python3 scripts/bench_pytorch.py                  # default: d256 L4 V8192, 8x256
  python3 scripts/bench_pytorch.py --config small --threads 2 --iters 5

Needs torch and transformers (not a project dependency; install them in a
virtual environment to compare).
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

CONFIGS = {
    # name: (hidden, layers, heads, ffn, vocab, batch, seq) as in benches/model.rs
    "small": (64, 2, 8, 170, 2048, 4, 128),
    "default": (256, 4, 8, 682, 8192, 8, 256),
    "100m": (768, 12, 12, 2048, 32000, 8, 512),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="default", choices=CONFIGS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, layers, heads, ffn, vocab, batch, seq = CONFIGS[args.config]
    config = LlamaConfig(
        hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        intermediate_size=ffn, vocab_size=vocab, max_position_embeddings=2 * seq, tie_word_embeddings=False,
        attn_implementation=args.attn,
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, vocab, (batch, seq))
    tokens = batch * seq
    print(f"config {args.config}: d={d} layers={layers} vocab={vocab} batch={batch}x{seq}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention {args.attn}")

    def timed(label, step):
        step()
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        s = (time.perf_counter() - start) / args.iters
        print(f"{label:24} {tokens / s:8.0f} tokens/s  ({s:.3f} s/step)")

    model.eval()

    def forward():
        with torch.no_grad():
            model(ids).logits.sum().item()

    timed("forward", forward)
    model.train()

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    timed("forward+backward", forward_backward)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        opt.step()

    timed("train step (AdamW)", train_step)


if __name__ == "__main__":
    main()
