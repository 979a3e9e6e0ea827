#!/usr/bin/env python3
"""The PyTorch side of scripts/bench-real-shape.sh: one measurement of an HF
LLaMA folder in transformers' LlamaForCausalLM (eager PyTorch, SDPA
attention), f32, printed as one JSON line.

  python3 scripts/bench_real_shape.py MODEL_DIR MODE [--batch 4 --seq 256 --steps 5 --threads 2]

MODE: full | lora | embeddings (an AdamW training step: all weights; PEFT
LoRA r8 alpha 16 on q/k/v/o, as babelflow's defaults; only the embeddings
and head) or eval (a forward pass over the batch under torch.no_grad(), the
perplexity). The first step is a warm-up; tokens/s is the median of the
rest. Peak RSS is the process's (ru_maxrss), loading included, as GNU time
reports babelflow's. Needs torch, transformers and peft (a venv: see the
script).
"""
import argparse
import json
import resource
import statistics
import time

import torch
from transformers import LlamaForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("mode", choices=["full", "lora", "embeddings", "eval"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    vocab = model.config.vocab_size
    if args.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    elif args.mode == "embeddings":
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().weight.requires_grad_(True)
        model.get_output_embeddings().weight.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01) if trainable else None
    seconds = []
    for step in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch, args.seq + 1))
        start = time.perf_counter()
        if args.mode == "eval":
            model.eval()
            with torch.no_grad():
                model(ids[:, :-1], labels=ids[:, :-1]).loss.item()
        else:
            model.train()
            loss = model(ids[:, :-1], labels=ids[:, :-1]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
        if step > 0:
            seconds.append(time.perf_counter() - start)
    print(json.dumps({
        "side": "pytorch", "mode": args.mode, "torch": torch.__version__,
        "tokens_per_s": args.batch * args.seq / statistics.median(seconds),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
