"""Writes a random bf16 HF checkpoint of a real model's shape, with a
word-level tokenizer.json of its vocabulary size, for memory and speed
measurements that need real sizes but no download.

    python3 scripts/make_synthetic_checkpoint.py smollm2-135m OUT_DIR
    python3 scripts/make_synthetic_checkpoint.py tinyllama-1.1b OUT_DIR
    python3 scripts/make_synthetic_checkpoint.py bench-d256 OUT_DIR
    python3 scripts/make_synthetic_checkpoint.py llama-2-7b OUT_DIR   # 13.5 GB

Needs numpy. Weights are normal(0, 0.02), drawn and written shard by
shard (at most ~1 GB each, with model.safetensors.index.json), so writing
even the 7B checkpoint needs a few gigabytes of memory at most.
"""
import json
import os
import sys

import numpy as np

SHAPES = {
    # benches/model.rs's `default` config: d256, 4 layers, 8 heads, V8192.
    "bench-d256": dict(vocab_size=8192, hidden_size=256, intermediate_size=682, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False,
                       rope_theta=10000.0, max_position_embeddings=512),
    # HuggingFaceTB/SmolLM2-135M: tied, GQA 9/3, head_dim 64.
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         rope_theta=100000.0, max_position_embeddings=8192),
    # TinyLlama/TinyLlama-1.1B: untied, GQA 32/4.
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False,
                           rope_theta=10000.0, max_position_embeddings=2048),
    # meta-llama/Llama-2-7b-hf: untied, full multi-head attention.
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False,
                       rope_theta=10000.0, max_position_embeddings=4096),
}


def bf16(rng, shape):
    """Random normal(0, 0.02) as bfloat16 bits (numpy has no bf16 type)."""
    x = (rng.standard_normal(shape, dtype=np.float32) * 0.02).view(np.uint32)
    return (x >> 16).astype(np.uint16)


def tensors(cfg):
    d, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // h
    yield "model.embed_tokens.weight", (v, d)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        for name, shape in [
            ("input_layernorm.weight", (d,)), ("post_attention_layernorm.weight", (d,)),
            ("self_attn.q_proj.weight", (h * hd, d)), ("self_attn.k_proj.weight", (kv * hd, d)),
            ("self_attn.v_proj.weight", (kv * hd, d)), ("self_attn.o_proj.weight", (d, h * hd)),
            ("mlp.gate_proj.weight", (i, d)), ("mlp.up_proj.weight", (i, d)), ("mlp.down_proj.weight", (d, i)),
        ]:
            yield f"{p}.{name}", shape
    yield "model.norm.weight", (d,)
    if not cfg["tie_word_embeddings"]:
        yield "lm_head.weight", (v, d)


def write_safetensors(path, arrays):
    """The safetensors layout by hand (numpy has no bf16 dtype to save)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for tname, a in arrays.items():
        header[tname] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in arrays.values():
            f.write(a.tobytes())


def main():
    name, out = sys.argv[1], sys.argv[2]
    cfg = dict(SHAPES[name], rms_norm_eps=1e-5, hidden_act="silu", bos_token_id=1, eos_token_id=2,
               architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    # Shards of at most ~1 GB, planned from the shapes, each written as soon
    # as it is drawn: one shard in memory at a time.
    plan, size = [[]], 0
    for tname, shape in tensors(cfg):
        nbytes = int(np.prod(shape)) * 2
        if plan[-1] and size + nbytes > 1 << 30:
            plan.append([])
            size = 0
        plan[-1].append((tname, shape))
        size += nbytes
    n, weight_map, total = len(plan), {}, 0
    for k, names in enumerate(plan):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        shard = {}
        for tname, shape in names:
            arr = np.ones(shape, np.float32).view(np.uint32) >> 16 if len(shape) == 1 else None
            shard[tname] = arr.astype(np.uint16) if arr is not None else bf16(rng, shape)
            total += shard[tname].size
            weight_map[tname] = fname
        write_safetensors(os.path.join(out, fname), shard)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total * 2}, "weight_map": weight_map}, f)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{k}": k for k in range(3, cfg["vocab_size"])})
    tok = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": k, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, k in list(vocab.items())[:3]],
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    print(f"{out}: {name}, {total / 1e6:.1f} M parameters in {n} shard(s), bf16")


if __name__ == "__main__":
    main()
