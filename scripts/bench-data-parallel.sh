#!/usr/bin/env bash
# Data-parallel training throughput on this machine: tokens/s of `pretrain`
# on 1 process and on 2 (`run --processes 2`, mpirun), one thread each
# (`resources.cpus: 1`), for benches/model.rs's d256 config (d256 L4 V8192,
# global batch 8×256); and the all-reduce time per optimizer step for the
# SmolLM2-135M shape (134.5 M trainable weights summed across 2 ranks,
# global batch 2×64). Models are random (scripts/make_synthetic_checkpoint.py),
# the text random words of their vocabulary: only speed is measured.
# Runs alternate 1, 2, 1, 2 ... processes (these VMs drift).
#
#   cargo build --release --features mpi
#   scripts/bench-data-parallel.sh [ROUNDS]        # default 3 rounds
#
# Needs OpenMPI (mpirun), python3 with numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${BABELFLOW:-${CARGO_TARGET_DIR:-$HOME/.cache/babelflow-target}/release/babelflow}"
rounds="${1:-3}"
# One compute thread per process: the 1-process run is in babelflow's own
# process, whose pool would otherwise take both cores (ranks get theirs
# from `resources.cpus` through mpirun).
export RAYON_NUM_THREADS=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

stats() { # store → "tokens/s allreduce-s-per-step world"
  python3 - "$1" <<'PY'
import json, pathlib, sys
for p in pathlib.Path(sys.argv[1]).glob("artifacts/*/stats.json"):
    s = json.loads(p.read_text())
    if "allreduce_seconds" in s:
        print(f'{s["tokens_per_s"]:.0f} {s["allreduce_seconds"] / s["steps"]:.3f} {s["world_size"]}')
PY
}

for shape in bench-d256 smollm2-135m; do
  python3 scripts/make_synthetic_checkpoint.py "$shape" "$work/$shape" >/dev/null
  vocab=$(python3 -c "import json; print(json.load(open('$work/$shape/config.json'))['vocab_size'])")
  python3 -c "
import random; random.seed(0)
print('\n'.join(' '.join(f'w{random.randrange(3, $vocab)}' for _ in range(200)) for _ in range(1000)))" > "$work/$shape.txt"
  if [ "$shape" = bench-d256 ]; then steps=10 batch=8 seq=256; else steps=3 batch=2 seq=64; fi
  cat > "$work/$shape.yaml" <<YAML
name: bench-data-parallel
stages:
  model:
    kind: import-model
    needs: { checkpoint: "$work/$shape" }
  text:
    kind: ingest
    needs: { files: "$work/$shape.txt" }
    with: { lang: en, text_unit: line, langid: false }
  tokens:
    kind: tokenize
    needs: { corpus: text, tokenizer: model }
  train:
    kind: pretrain
    needs: { model: model, tokens: tokens }
    resources: { cpus: 1 }
    with: { steps: $steps, batch_size: $batch, seq_len: $seq, eval_every: 1000, checkpoint_every: 0, warmup_steps: 1 }
YAML
  store="$work/$shape-store"
  "$bin" run "$work/$shape.yaml" --store "$store" --only tokens >/dev/null
  for round in $(seq "$rounds"); do
    for procs in 1 2; do
      [ "$shape" = smollm2-135m ] && [ "$procs" = 1 ] && [ "$round" -gt 1 ] && continue
      "$bin" run "$work/$shape.yaml" --store "$store" --only train --force train --processes "$procs" \
        >"$work/log" 2>&1 || { tail -20 "$work/log"; exit 1; }
      read -r tps ar world <<<"$(stats "$store")"
      printf '%-13s batch %dx%-4d %d process(es) x 1 thread: %6s tokens/s, all-reduce %s s/step (round %d)\n' \
        "$shape" "$batch" "$seq" "$world" "$tps" "$ar" "$round"
    done
  done
  rm -rf "$work/$shape" "$store"
done
