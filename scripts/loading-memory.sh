#!/usr/bin/env bash
# Peak host memory while babelflow loads a checkpoint, against the size of
# the weights it holds: a synthetic SmolLM2-135M and TinyLlama-1.1B (random
# bf16, scripts/make_synthetic_checkpoint.py), each scored by `perplexity`
# on one short document with the weights held in f32 and in bf16.
#
#   scripts/loading-memory.sh [BABELFLOW_BINARY ...]
#
# Several binaries (a build before and after a change) are measured in one
# run, interleaved. Default: $CARGO_TARGET_DIR/release/babelflow. Needs GNU
# time, python3 with numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("${CARGO_TARGET_DIR:-$HOME/.cache/babelflow-target}/release/babelflow")
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf 'w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20\n' > "$work/text.txt"
for shape in smollm2-135m tinyllama-1.1b; do
  python3 scripts/make_synthetic_checkpoint.py "$shape" "$work/$shape" >/dev/null
  params=$(python3 -c "import json,sys; m=json.load(open('$work/$shape/model.safetensors.index.json')); print(m['metadata']['total_size']//2)")
  for precision in f32 bf16; do
    width=4; [ "$precision" = bf16 ] && width=2
    bytes=$((params * width))
    for bin in "${bins[@]}"; do
      dir="$work/run-$shape-$precision-$(basename "$(dirname "$bin")")-$RANDOM"
      mkdir -p "$dir"
      cat > "$dir/r.yaml" <<YAML
name: loading-memory
stages:
  base:
    kind: import-model
    needs: { checkpoint: "$work/$shape" }
  text:
    kind: ingest
    needs: { files: "$work/text.txt" }
    with: { lang: en }
  perplexity:
    kind: perplexity
    needs: { model: base, text: text }
    with: { precision: $precision, max_len: 16, batch_size: 1 }
YAML
      "$bin" run "$dir/r.yaml" --only base --only text >/dev/null 2>&1
      /usr/bin/time -o "$dir/time" -f '%M' "$bin" run "$dir/r.yaml" --only perplexity >"$dir/log" 2>&1 \
        || { echo "$shape $precision: failed"; tail -5 "$dir/log"; exit 1; }
      peak_kb=$(cat "$dir/time")
      # The peak once the model was loaded, before scoring (from stats.json;
      # a build that does not record it shows "-").
      loaded=$(python3 - "$dir" <<'PY'
import json, pathlib, sys
for stats in pathlib.Path(sys.argv[1]).glob(".babelflow/artifacts/*/stats.json"):
    s = json.loads(stats.read_text())
    if "per_lang" in s:
        print((s.get("memory") or {}).get("peak_rss_bytes_after_load") or "-")
PY
)
      ratio_loaded="-"
      [ "$loaded" != "-" ] && ratio_loaded=$(printf '%.2fx' "$(echo "$loaded / $bytes" | bc -l)")
      printf '%-15s %-5s weights %5.2f GB  peak after loading %s  peak overall %5.2f GB = %.2fx  (%s)\n' "$shape" "$precision" \
        "$(echo "$bytes / 1073741824" | bc -l)" "$ratio_loaded" "$(echo "$peak_kb / 1048576" | bc -l)" \
        "$(echo "$peak_kb * 1024 / $bytes" | bc -l)" "$bin"
      rm -rf "$dir"
    done
  done
  rm -rf "$work/$shape"
done
