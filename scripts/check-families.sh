#!/usr/bin/env bash
# Every model layout babelflow accepts, trained and exported by babelflow,
# loaded back by transformers: for each fixture transformers wrote
# (stages/model/tests/fixtures/hf-*), run pipelines/examples/smollm2-layout.yaml
# on it (import → tokenize → pretrain full and LoRA → chat SFT → perplexity,
# exam, respond), then score the trained models' validation windows in
# transformers (scripts/check_hf_transformers.py) and compare with the losses
# babelflow reported. Needs python3 with torch, transformers and pyyaml.
#
#   scripts/check-families.sh [BABELFLOW_BINARY] [TOLERANCE]
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/babelflow-target}/debug/babelflow}"
tolerance="${2:-1e-5}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
for fixture in stages/model/tests/fixtures/hf-*/; do
  case="$(basename "$fixture")"
  store="$work/$case"
  if ! "$bin" run pipelines/examples/smollm2-layout.yaml --store "$store" \
      --set "vars.checkpoint=$PWD/$fixture" >"$work/$case.log" 2>&1; then
    echo "$case: the recipe failed"; tail -5 "$work/$case.log"; failed=1; continue
  fi
  for instance in pretrain@full pretrain@lora sft; do
    line=$(python3 scripts/check_hf_transformers.py "$store" smollm2-layout --instance "$instance" \
      --tolerance "$tolerance" 2>/dev/null | grep -E "^[a-z]+: transformers loss" | head -1) || true
    verdict=$(python3 scripts/check_hf_transformers.py "$store" smollm2-layout --instance "$instance" \
      --tolerance "$tolerance" 2>/dev/null | tail -1) || true
    printf '%-16s %-14s %s  %s\n' "$case" "$instance" "$line" "${verdict%%:*}"
    [[ "$verdict" == OK* ]] || failed=1
  done
done
exit $failed
