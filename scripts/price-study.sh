#!/usr/bin/env bash
# The study's grid (pipelines/llama-beyond-english/study.yaml) priced before
# anything runs: `plan --estimate` on an A100 80 GB at an assumed
# utilisation, with every path set to a placeholder that exists —
# LLaMA-7B's config.json and a 32 000-piece tokenizer (no weights), and a
# few lines of text, instructions and exam questions. Training is priced
# from the recipe's steps × batch × length, so the placeholders' size does
# not matter there; evaluation is priced on the placeholders' few rows.
#
#   scripts/price-study.sh [DEVICE [UTILISATION]]     # default a100-80gb 0.4
#
# Needs a release build ($CARGO_TARGET_DIR/release/babelflow) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${BABELFLOW:-${CARGO_TARGET_DIR:-$HOME/.cache/babelflow-target}/release/babelflow}"
device="${1:-a100-80gb}" utilisation="${2:-0.4}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/llama-7b" "$work/zh" "$work/ceval/val" "$work/ceval/dev" "$work/mmlu/test" "$work/mmlu/dev"
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
# LLaMA-7B (Touvron et al., 2023), as its HF conversion's config.json has it.
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
           "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 2048,
           "rms_norm_eps": 1e-6, "tie_word_embeddings": False}, open(f"{w}/llama-7b/config.json", "w"))
vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
vocab.update({f"▁p{i}": i for i in range(259, 32000)})
json.dump({"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None, "post_processor": None,
           "decoder": None, "model": {"type": "BPE", "vocab": vocab, "merges": [], "byte_fallback": True,
                                      "unk_token": "<unk>"}}, open(f"{w}/llama-7b/tokenizer.json", "w"))
lines = ["这是一个占位的中文句子，用来让计划找到文件。"] * 20
open(f"{w}/zh/part-0.jsonl", "w").write("".join(json.dumps({"text": l}) + "\n" for l in lines))
open(f"{w}/en.jsonl", "w").write("".join(json.dumps({"text": "A placeholder English sentence."}) + "\n" for _ in lines))
json.dump([{"instruction": "你好", "input": "", "output": "你好！"}] * 4, open(f"{w}/belle.json", "w"))
json.dump([{"instruction": "介绍一下你自己", "input": "", "output": ""}] * 4, open(f"{w}/llm_eval.json", "w"))
row = "id,question,A,B,C,D,answer\n0,问题,甲,乙,丙,丁,A\n"
for split in ["val", "dev"]:
    open(f"{w}/ceval/{split}/subject_{split}.csv", "w").write(row)
for split in ["test", "dev"]:
    open(f"{w}/mmlu/{split}/subject_{split}.csv", "w").write("Question?,a,b,c,d,A\n")
PY
"$bin" plan pipelines/llama-beyond-english/study.yaml --store "$work/store" --estimate \
  --device "$device" --utilisation "$utilisation" \
  --set vars.checkpoint="$work/llama-7b" --set "vars.zh_text=$work/zh/*.jsonl" \
  --set vars.en_text="$work/en.jsonl" --set vars.belle="$work/belle.json" \
  --set vars.llm_eval="$work/llm_eval.json" --set vars.ceval="$work/ceval" --set vars.mmlu="$work/mmlu" \
  | sed -n '/^estimate/,$p'
