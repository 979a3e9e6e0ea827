#!/usr/bin/env bash
# Peak host memory and speed of LoRA training on a real model's shape, with
# the frozen base held in f32 and in bf16 (`precision`), each with and
# without activation checkpointing, side by side in one run (4 rows; set
# ROWS="bf16:true" for one): a synthetic checkpoint (random bf16, scripts/make_synthetic_checkpoint.py)
# further-pretrained for a few steps on random words of its vocabulary.
#
#   scripts/lean-training-memory.sh [SHAPE [BATCH SEQ_LEN STEPS]]
#
# Default: tinyllama-1.1b, batch 4 x 256, 3 steps, LoRA r8 on q/k/v/o, 2
# threads; the trained model is saved in the checkpoint's dtype (bf16). The
# 7B shape (13.5 GB on disk, deleted afterwards), one row:
#
#   ROWS=bf16:true ../shared/scripts/guard --mem 20G -- \
#     scripts/lean-training-memory.sh llama-2-7b 1 128 2
# Each row: peak RSS (GNU time), what the stage says it holds
# (stats.json `memory`: weights by dtype, gradients, AdamW state), and
# tokens/s of the steps. Run it under ../shared/scripts/guard on a shared
# machine. Needs a release build ($CARGO_TARGET_DIR/release/babelflow),
# GNU time, python3 with numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
shape="${1:-tinyllama-1.1b}" batch="${2:-4}" seq="${3:-256}" steps="${4:-3}"
bin="${BABELFLOW:-${CARGO_TARGET_DIR:-$HOME/.cache/babelflow-target}/release/babelflow}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 scripts/make_synthetic_checkpoint.py "$shape" "$work/checkpoint"
python3 - "$work/text.txt" "$work/checkpoint/config.json" "$((batch * (seq + 1) * (steps + 1)))" <<'PY'
import json, random, sys
vocab = json.load(open(sys.argv[2]))["vocab_size"]
random.seed(0)
words = [f"w{random.randrange(3, vocab)}" for _ in range(int(sys.argv[3]))]
open(sys.argv[1], "w").write("\n".join(" ".join(words[i:i + 100]) for i in range(0, len(words), 100)) + "\n")
PY
printf 'cpu: %s (%s)\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  "$(grep -qw avx512f /proc/cpuinfo && echo avx512f || echo 'no avx512f')"
printf '%s, LoRA r8 q/k/v/o, batch %sx%s, %s steps, %s threads\n' "$shape" "$batch" "$seq" "$steps" "$RAYON_NUM_THREADS"
printf '%-9s %-13s %12s %12s %12s %12s %10s\n' precision checkpointing "peak RSS" "frozen" "trainable+" "known" "tokens/s"
for row in ${ROWS:-f32:false f32:true bf16:false bf16:true}; do
  precision="${row%%:*}" checkpointed="${row##*:}"
  dir="$work/run-$precision-$checkpointed"
  mkdir -p "$dir"
  cat > "$dir/r.yaml" <<YAML
name: lean-training-memory
stages:
  text:
    kind: ingest
    needs: { files: "$work/text.txt" }
    with: { lang: en }
  tokens:
    kind: tokenize
    needs: { corpus: text, tokenizer: "$work/checkpoint/tokenizer.json" }
  train:
    kind: pretrain
    needs: { model: "$work/checkpoint", tokens: tokens }
    with: { steps: $steps, batch_size: $batch, seq_len: $seq, warmup_steps: 1, eval_every: 1000,
            checkpoint_every: 0, save_dtype: input, trainable: lora, lora_rank: 8,
            lora_targets: [q_proj, k_proj, v_proj, o_proj], precision: $precision,
            checkpoint_activations: $checkpointed }
YAML
  "$bin" run "$dir/r.yaml" --only text --only tokens >/dev/null 2>&1
  /usr/bin/time -o "$dir/time" -f '%M' "$bin" run "$dir/r.yaml" --only train >"$dir/log" 2>&1 \
    || { echo "$row: failed (exit $?)"; tail -30 "$dir/log"; exit 1; }
  python3 - "$dir" "$(cat "$dir/time")" "$precision" "$checkpointed" <<'PY'
import json, pathlib, sys
gb = lambda b: f"{b / 2**30:.2f} GiB"
for path in pathlib.Path(sys.argv[1]).glob(".babelflow/artifacts/*/stats.json"):
    s = json.loads(path.read_text())
    if "tokens_per_s" not in s:
        continue
    m = s["memory"]
    frozen = sum(m["weights_frozen_bytes"].values())
    trainable = m["weights_trainable_bytes"] + m["gradients_bytes"] + m["optimizer_state_bytes"]
    print(f"{sys.argv[3]:<9} {sys.argv[4]:<13} {gb(int(sys.argv[2]) * 1024):>12} {gb(frozen):>12} {gb(trainable):>12} "
          f"{gb(m['known_bytes']):>12} {s['tokens_per_s']:>10.1f}")
PY
  rm -rf "$dir"
done
