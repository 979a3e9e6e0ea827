#!/usr/bin/env python3
"""Checks babelflow's GGUF import and export against the reference tools,
after `babelflow run pipelines/examples/smollm2-gguf.yaml`:

1. weights: the HF folder babelflow imported equals, tensor by tensor, what
   transformers' own GGUF loader (`from_pretrained(dir, gguf_file=...)`)
   dequantises;
2. token ids: babelflow's `tokenize` of multilingual text with digits,
   emoji and code equals that tokenizer's ids;
3. scores: babelflow's `perplexity` equals transformers' on the same windows
   (same context token, same cut), to --tolerance relative;
4. llama.cpp (llama-cpp-python), when installed: each GGUF babelflow
   exported loads and scores the same windows within 2 % of babelflow's
   perplexity.

With --vocab, after `babelflow run pipelines/examples/extended-gguf.yaml`,
it checks the extended vocabularies instead (both tokenizer styles): for
every exported GGUF, llama.cpp's tokenizer (llama-cpp-python, vocab only)
gives, on every document, the ids babelflow's `tokenize` gave with the
extended model's tokenizer, and so does `import-model` of that GGUF. That
mode needs only llama-cpp-python, numpy, pyarrow and pyyaml.

  python3 scripts/check_gguf.py pipelines/examples/.babelflow --recipe extended-gguf --vocab

Needs torch, transformers, gguf, numpy, pyarrow, pyyaml; llama-cpp-python
for step 4 (CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF
-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" pip install llama-cpp-python on these
VMs). Exits 1 when a check fails.

  python3 scripts/check_gguf.py pipelines/examples/.babelflow [--recipe smollm2-gguf]
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

HEADER_LEN = 64


def instances(store: Path, recipe: str) -> dict:
    locks = sorted((store / "recipes").glob(f"{recipe}-*.lock.yaml"))
    if len(locks) != 1:
        sys.exit(f"expected one lock file of {recipe} in {store}/recipes, found {locks}")
    return yaml.safe_load(locks[0].read_text())["instances"]


def artifact(store: Path, inst: dict) -> Path:
    return store / "artifacts" / inst["fingerprint"]


def read_tokens(folder: Path):
    raw = (folder / "tokens.bin").read_bytes()
    id_bytes = int.from_bytes(raw[12:16], "little")
    ids = np.frombuffer(raw[HEADER_LEN:], dtype=np.uint16 if id_bytes == 2 else np.uint32).astype(np.int64)
    index = pq.read_table(folder / "index.parquet").to_pylist()
    return [(row["id"], ids[row["offset"]: row["offset"] + row["n_tokens"]].tolist()) for row in index]


def chunks(context, ids, max_len):
    seq = ([context] if context is not None else []) + list(ids)
    out, start = [], 0
    while start + 1 < len(seq):
        end = min(start + max_len + 1, len(seq))
        out.append(seq[start:end])
        start = end - 1
    return out


def nll_of(logits_fn, windows):
    total = 0.0
    for w in windows:
        logits = logits_fn(w[:-1])  # [len-1, vocab] as float64
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        total -= sum(logp[i, w[i + 1]] for i in range(len(w) - 1))
    return total


def texts_of(store: Path, inst: dict, tokens_entry: dict) -> dict:
    corpus = tokens_entry["inputs"]["corpus"][0]["instance"]
    rows = pq.read_table(artifact(store, inst[corpus]) / "corpus.parquet").to_pylist()
    return {row["id"]: row["text"] for row in rows}


def check_vocab(store: Path, recipe: str) -> int:
    """Extended vocabularies: llama.cpp's ids and the re-import's equal babelflow's."""
    from llama_cpp import Llama

    inst = instances(store, recipe)
    ok = True
    tokenizer_of = lambda e: e["inputs"]["tokenizer"][0]["instance"]
    for name, entry in sorted(inst.items()):
        if entry["kind"] != "export-gguf":
            continue
        model = entry["inputs"]["model"][0]["instance"]
        path = artifact(store, entry) / "model.gguf"
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        bos, eos = llm.token_bos(), llm.token_eos()
        reimported = next(n for n, e in inst.items() if e["kind"] == "import-model"
                          and e["inputs"]["checkpoint"][0].get("instance") == name)
        for tname, tentry in sorted(inst.items()):
            if tentry["kind"] != "tokenize" or tokenizer_of(tentry) != model:
                continue
            texts = texts_of(store, inst, tentry)
            ours = dict(read_tokens(artifact(store, tentry)))
            twin = next(n for n, e in inst.items() if e["kind"] == "tokenize" and tokenizer_of(e) == reimported
                        and e["inputs"]["corpus"] == tentry["inputs"]["corpus"])
            back = dict(read_tokens(artifact(store, inst[twin])))
            differ_cpp = differ_back = 0
            total = 0
            for doc_id, ids in ours.items():
                body = ids[1:] if ids and ids[0] == bos else ids
                body = body[:-1] if body and body[-1] == eos else body
                cpp = llm.tokenize(texts[doc_id].encode(), add_bos=False, special=False)
                total += len(body)
                if cpp != body:
                    differ_cpp += 1
                    print(f"   {tname} {doc_id}: babelflow {body[:12]}… llama.cpp {cpp[:12]}…")
                if back.get(doc_id) != ids:
                    differ_back += 1
            print(f"{tname} ({path.stat().st_size / 1e6:.1f} MB GGUF, {llm.n_vocab()} tokens): {len(ours)} documents, "
                  f"{total} tokens; llama.cpp's ids differ on {differ_cpp}, the re-import's on {differ_back}")
            ok &= differ_cpp == 0 and differ_back == 0
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store", type=Path)
    ap.add_argument("--recipe", default="smollm2-gguf")
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--vocab", action="store_true", help="check extended vocabularies (extended-gguf recipe)")
    args = ap.parse_args()
    if args.vocab:
        return check_vocab(args.store, args.recipe)
    import torch
    from safetensors.numpy import load_file

    inst = instances(args.store, args.recipe)
    base = artifact(args.store, inst["base"])
    gguf_path = Path(inst["base"]["inputs"]["checkpoint"][0]["file"])
    recipe_dir = Path(yaml.safe_load(next((args.store / "recipes").glob(f"{args.recipe}-*.lock.yaml")).read_text())["recipe"]).parent
    gguf_path = (recipe_dir / gguf_path).resolve()
    ok = True

    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref_tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()

    # 1. weights
    ours = load_file(str(base / "model" / "model.safetensors"))
    theirs = {k: v.numpy() for k, v in ref.state_dict().items()}
    worst = max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours)
    missing = [k for k in theirs if k not in ours and k != "lm_head.weight"]
    print(f"1. weights: {len(ours)} tensors, max |Δ| vs transformers' GGUF dequantisation {worst:.2e}; missing {missing}")
    ok &= worst == 0.0 and not missing

    # 2. token ids
    corpus = pq.read_table(artifact(args.store, inst["text"]) / "corpus.parquet").to_pylist()
    text_of = {row["id"]: row["text"] for row in corpus}
    mismatched = 0
    eos = ref_tok.eos_token_id
    docs = read_tokens(artifact(args.store, inst["tokens"]))
    for doc_id, ids in docs:
        want = ref_tok(text_of[doc_id], add_special_tokens=False)["input_ids"]
        got = ids[:-1] if ids and ids[-1] == eos else ids
        if got != want:
            mismatched += 1
            print(f"   {doc_id}: babelflow {got[:12]}… transformers {want[:12]}…")
    print(f"2. token ids: {len(docs) - mismatched} of {len(docs)} documents equal transformers' GGUF tokenizer")
    ok &= mismatched == 0

    # 3. perplexity against transformers on babelflow's windows
    ppl = json.loads((artifact(args.store, inst["perplexity@base"]) / "stats.json").read_text())
    max_len = ppl["max_len"]
    context = ref_tok.eos_token_id if ppl["context_token"] == ref_tok.eos_token else ref_tok.bos_token_id
    windows = [w for _, ids in docs for w in chunks(context, [t for t in ids[:-1]] if ids[-1] == eos else ids, max_len)]

    def hf_logits(ids):
        with torch.no_grad():
            return ref(torch.tensor([ids])).logits[0].double().numpy()

    nll = nll_of(hf_logits, windows)
    tokens = sum(len(w) - 1 for w in windows)
    hf_ppl = math.exp(nll / tokens)
    ours_ppl = next(iter(ppl["per_lang"].values()))["token_perplexity"]
    rel = abs(hf_ppl - ours_ppl) / hf_ppl
    print(f"3. perplexity over {tokens} tokens: babelflow {ours_ppl:.6f}, transformers {hf_ppl:.6f}, relative Δ {rel:.2e}")
    ok &= rel <= args.tolerance

    # 4. llama.cpp on the exported files
    try:
        from llama_cpp import Llama
    except ImportError:
        print("4. llama.cpp: llama-cpp-python is not installed; skipped")
        return 0 if ok else 1
    for name, entry in inst.items():
        if entry["kind"] != "export-gguf":
            continue
        source = entry["inputs"]["model"][0]["instance"]
        babelflow_ppl = json.loads((artifact(args.store, inst[f"perplexity@{source}"]) / "stats.json").read_text())
        ours_ppl = next(iter(babelflow_ppl["per_lang"].values()))["token_perplexity"]
        path = artifact(args.store, entry) / "model.gguf"
        llm = Llama(model_path=str(path), n_ctx=max_len + 8, logits_all=True, verbose=False, n_threads=2)

        def cpp_logits(ids):
            llm.reset()
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)], dtype=np.float64)

        cpp_ppl = math.exp(nll_of(cpp_logits, windows) / tokens)
        cpp_ids = llm.tokenize(text_of[docs[0][0]].encode(), add_bos=False, special=False)
        same_ids = cpp_ids == ref_tok(text_of[docs[0][0]], add_special_tokens=False)["input_ids"]
        rel = abs(cpp_ppl - ours_ppl) / ours_ppl
        print(f"4. llama.cpp, {name} ({path.stat().st_size / 1e6:.0f} MB): perplexity {cpp_ppl:.6f}, babelflow's {ours_ppl:.6f} ({source}), relative Δ {rel:.2e}; its ids of the first document equal: {same_ids}")
        ok &= rel <= 0.02
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
