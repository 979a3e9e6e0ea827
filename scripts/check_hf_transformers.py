#!/usr/bin/env python3
"""Checks that a model babelflow trained loads in Hugging Face transformers
and scores held-out text exactly as babelflow said it did.

For a `pretrain` instance of a recipe that has run, this loads the trained
model folder with `LlamaForCausalLM.from_pretrained`, recomputes the mean
next-token loss on the same validation windows the stage used (the first
`batch_size * eval_batches` windows of `seq_len + 1` tokens of each
`validation` token artifact) and compares it with `validation_loss_end` in
the stage's stats.json. Exits 1 when any language differs by more than
--tolerance. Needs torch, transformers and pyyaml.

  python3 scripts/check_hf_transformers.py pipelines/.babelflow quickstart
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoModelForCausalLM

HEADER_LEN = 64


def read_tokens(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:8] != b"BFTOKENS":
        sys.exit(f"{path}: not a babelflow token file")
    id_bytes = int.from_bytes(raw[12:16], "little")
    dtype = np.uint16 if id_bytes == 2 else np.uint32
    return np.frombuffer(raw[HEADER_LEN:], dtype=dtype).astype(np.int64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path, help="the recipe's store folder (.babelflow)")
    ap.add_argument("recipe", help="the recipe's name")
    ap.add_argument("--instance", default="pretrain", help="the training instance")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()

    # Lock files are keyed by recipe name and path: <name>-<hash>.lock.yaml.
    locks = sorted((args.store / "recipes").glob(f"{args.recipe}-*.lock.yaml"))
    locks = locks or sorted((args.store / "recipes").glob(f"{args.recipe}.lock.yaml"))
    if len(locks) != 1:
        sys.exit(f"expected one lock file of recipe {args.recipe} in {args.store}/recipes, found {[str(l) for l in locks]}")
    lock = yaml.safe_load(locks[0].read_text())
    instances = lock["instances"]
    train = instances[args.instance]
    art = args.store / "artifacts" / train["fingerprint"]
    stats = json.loads((art / "stats.json").read_text())
    params = train["params"]
    # pretrain windows are seq_len long; sft validates on windows of max_len.
    seq_len = params.get("seq_len", params.get("max_len"))
    batch, eval_batches = params["batch_size"], params["eval_batches"]

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(str(art / "model"), dtype=torch.float32).to(device).eval()
    print(f"loaded {art / 'model'} in transformers: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {device}")

    worst = 0.0
    for entry in train["inputs"]["validation"]:
        upstream = instances[entry["instance"]]
        ids = read_tokens(args.store / "artifacts" / upstream["fingerprint"] / entry["output"])
        n = max(1, min((len(ids) - 1) // seq_len, batch * eval_batches))
        windows = np.stack([ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])
        x = torch.from_numpy(windows[:, :-1]).to(device)
        y = torch.from_numpy(windows[:, 1:]).to(device)
        with torch.no_grad():
            logits = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
        lang = upstream["params"].get("lang") or entry["instance"].split("@")[-1]
        if lang not in stats["validation_loss_end"]:
            lang = entry["instance"].split("@")[-1]
        if lang not in stats["validation_loss_end"] and len(stats["validation_loss_end"]) == 1:
            lang = next(iter(stats["validation_loss_end"]))
        ours = stats["validation_loss_end"][lang]
        diff = abs(ours - loss)
        worst = max(worst, diff)
        print(f"{lang}: transformers loss {loss:.6f}, babelflow {ours:.6f}, |diff| {diff:.2e} over {n} windows")
    ok = worst <= args.tolerance
    print("OK: the model loads in transformers and its losses match" if ok else f"MISMATCH: worst {worst:.2e} > {args.tolerance}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
