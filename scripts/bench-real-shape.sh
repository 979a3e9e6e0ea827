#!/usr/bin/env bash
# babelflow beside PyTorch eager on a real model's shape, interleaved in one
# run: an AdamW training step (full, LoRA r8 q/k/v/o against PEFT, and
# embeddings only; babelflow also with bf16 frozen weights and activation
# checkpointing) and an evaluation forward pass (perplexity over 4 × 256),
# each ROUNDS times, batch 4 × 256, 2 threads. Prints the CPU's flags,
# torch's version, the gemm ceiling of the step's matrix products on this
# machine (benches/gemm_ceiling.rs), and per case the median and range of
# tokens/s, the ratio, and peak RSS (loading included, both sides).
#
#   scripts/bench-real-shape.sh [MODEL_DIR]
#
# MODEL_DIR: an HF LLaMA folder; default a synthetic one of SmolLM2-135M's
# shape (scripts/make_synthetic_checkpoint.py smollm2-135m). Needs a release
# build ($CARGO_TARGET_DIR/release/babelflow), cargo (for the ceiling), GNU
# time, python3 with numpy and pyarrow, and a Python with torch,
# transformers and peft in BENCH_PYTHON (default .venv-bench/bin/python3):
#   python3 -m venv .venv-bench && .venv-bench/bin/pip install torch transformers peft
# Not part of CI: it takes about 20 minutes. Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}" steps="${STEPS:-5}" batch=4 seq=256
export RAYON_NUM_THREADS=2
bin="${BABELFLOW:-${CARGO_TARGET_DIR:-$HOME/.cache/babelflow-target}/release/babelflow}"
py="${BENCH_PYTHON:-.venv-bench/bin/python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
model="${1:-}"
if [ -z "$model" ]; then
  python3 scripts/make_synthetic_checkpoint.py smollm2-135m "$work/model" >/dev/null
  model="$work/model"
fi
model="$(cd "$model" && pwd)"
python3 - "$work/text.txt" "$model" "$((batch * (seq + 1) * (steps + 1)))" <<'PY'
import json, random, sys
tok = json.load(open(f"{sys.argv[2]}/tokenizer.json"))
words = [w for w in tok["model"]["vocab"] if w.startswith("w")] if tok["model"]["type"] == "WordLevel" else None
random.seed(0)
n = int(sys.argv[3])
# A real tokenizer gets lines of English-like text; the synthetic one its words.
text = " ".join(random.choice(words) for _ in range(n)) if words else \
    " ".join(random.choice("the of and to in a is that for it as was with be by on not he".split()) for _ in range(n))
open(sys.argv[1], "w").write(text + "\n")
PY
printf 'cpu: %s, %s; %s threads\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  "$(grep -qw avx512f /proc/cpuinfo && echo avx512f || echo 'no avx512f (avx2)')" "$RAYON_NUM_THREADS"
"$py" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")'
read -r d inter heads kv vocab layers < <(python3 -c "
import json; c = json.load(open('$model/config.json'))
print(c['hidden_size'], c['intermediate_size'], c['num_attention_heads'], c.get('num_key_value_heads') or c['num_attention_heads'], c['vocab_size'], c['num_hidden_layers'])")
GEMM_SHAPE="$d,$inter,$heads,$kv,$vocab" GEMM_TOKENS=$((batch * seq)) GEMM_LAYERS="$layers" \
  cargo bench --quiet --bench gemm_ceiling 2>/dev/null | tail -1 | tee "$work/ceiling"

results="$work/results.jsonl"
babelflow() { # case: mode:precision:checkpointing, or eval
  local case="$1" dir="$work/run-$RANDOM"
  mkdir -p "$dir"
  local mode="${case%%:*}" rest="${case#*:}"
  local precision="${rest%%:*}" checkpointed="${rest##*:}"
  if [ "$case" = eval ]; then
    stage="score"
    body="kind: perplexity
    needs: { model: \"$model\", text: text }
    with: { max_len: $seq, batch_size: $batch }"
  else
    stage="train"
    body="kind: pretrain
    needs: { model: \"$model\", tokens: tokens }
    with: { steps: $steps, batch_size: $batch, seq_len: $seq, warmup_steps: 1, eval_every: 1000,
            checkpoint_every: 0, trainable: $mode, precision: $precision, checkpoint_activations: $checkpointed }"
  fi
  cat > "$dir/r.yaml" <<YAML
name: bench-real-shape
stages:
  text:
    kind: ingest
    needs: { files: "$work/text.txt" }
    with: { lang: en, max_doc_chars: 0 }
  tokens:
    kind: tokenize
    needs: { corpus: text, tokenizer: "$model/tokenizer.json" }
  $stage:
    $body
YAML
  "$bin" run "$dir/r.yaml" --only text --only tokens >/dev/null 2>&1
  /usr/bin/time -o "$dir/time" -f '%M' "$bin" run "$dir/r.yaml" --only "$stage" >"$dir/log" 2>&1 \
    || { echo "babelflow $case failed"; tail -20 "$dir/log"; exit 1; }
  python3 - "$dir" "$(cat "$dir/time")" "$case" >> "$results" <<'PY'
import json, pathlib, statistics, sys
import pyarrow.parquet as pq
dir, peak_kb, case = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for stats in dir.glob(".babelflow/artifacts/*/stats.json"):
    s = json.loads(stats.read_text())
    if case == "eval" and "per_lang" in s:
        rate = s["tokens_per_s"]
    elif case != "eval" and "steps" in s:
        t = pq.read_table(stats.parent / "metrics.parquet").to_pylist()
        rates = [r["value"] for r in t if r["metric"] == "tokens_per_s" and r["step"] > 1]
        rate = statistics.median(rates)
    else:
        continue
    print(json.dumps({"side": "babelflow", "case": case, "tokens_per_s": rate, "peak_rss_bytes": peak_kb * 1024}))
PY
  rm -rf "$dir"
}
pytorch() {
  "$py" scripts/bench_real_shape.py "$model" "$1" --batch $batch --seq $seq --steps $steps --threads 2 \
    | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['case']=sys.argv[1]; print(json.dumps(r))" "$1" >> "$results"
}
for round in $(seq "$rounds"); do
  echo "round $round of $rounds"
  for mode in full lora embeddings; do
    babelflow "$mode:f32:false"
    pytorch "$mode"
  done
  babelflow eval
  pytorch eval
  babelflow full:f32:true
  babelflow lora:bf16:true
  babelflow embeddings:bf16:true
done
python3 - "$results" "$model" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
c = json.load(open(f"{sys.argv[2]}/config.json"))
d, L, V, I = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
kv = (c.get("num_key_value_heads") or c["num_attention_heads"]) * d // c["num_attention_heads"]
n = L * (2 * d * d + 2 * d * kv + 3 * d * I) + V * d   # weights a token passes through
flops_full = 6 * n + 6 * L * 256 * d                      # + attention, per token
def med(case, side):
    v = [r["tokens_per_s"] for r in rows if r["case"] == case and r["side"] == side]
    return (statistics.median(v), min(v), max(v)) if v else None
def rss(case, side):
    v = [r["peak_rss_bytes"] for r in rows if r["case"] == case and r["side"] == side]
    return max(v) / 2**30 if v else None
print(f"{'case':<28}{'babelflow tok/s':>22}{'PyTorch tok/s':>22}{'ratio':>7}{'RSS bf':>9}{'RSS pt':>9}")
labels = {"full:f32:false": "full", "lora:f32:false": "lora", "embeddings:f32:false": "embeddings", "eval": "eval"}
for case in ["full:f32:false", "full:f32:true", "lora:f32:false", "lora:bf16:true",
             "embeddings:f32:false", "embeddings:bf16:true", "eval"]:
    b, p = med(case, "babelflow"), med(labels.get(case, ""), "pytorch") if case in labels else None
    cell = lambda m: f"{m[0]:8.1f} [{m[1]:.0f}-{m[2]:.0f}]" if m else "-"
    ratio = f"{b[0] / p[0]:.2f}x" if b and p else "-"
    pr = rss(labels[case], "pytorch") if case in labels else None
    print(f"{case:<28}{cell(b):>22}{cell(p):>22}{ratio:>7}{rss(case, 'babelflow'):8.2f}G{(f'{pr:8.2f}G' if pr else '-'):>9}")
b = med("full:f32:false", "babelflow")
print(f"full step: {flops_full / 1e9:.2f} GFLOP per token, {b[0] * flops_full / 1e9:.1f} GFLOP/s achieved (median)")
PY
