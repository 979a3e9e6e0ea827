#!/usr/bin/env bash
# Peak memory of ingest, train-tokenizer and tokenize on one over-long
# document (a single line of SIZE_MB megabytes), with ingest's document
# splitting off (`max_doc_chars: 0`, how babelflow behaved before) and at
# its default (1,000,000 characters). Prints one line per stage and setting.
#
#   scripts/long-document-memory.sh [BABELFLOW_BINARY] [SIZE_MB]
#
# Default binary: $CARGO_TARGET_DIR/release/babelflow (build it with
# `cargo build --release`). Needs GNU time (/usr/bin/time) and python3.
set -euo pipefail
bin="${1:-${CARGO_TARGET_DIR:-$HOME/.cache/babelflow-target}/release/babelflow}"
size_mb="${2:-50}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$work/long.txt" "$size_mb" <<'PY'
import random, sys
random.seed(0)
letters = "abcdefghijklmnopqrstuvwxyz"
words = ["".join(random.choice(letters) for _ in range(random.randint(2, 9))) for _ in range(20000)]
target = int(sys.argv[2]) * 1_000_000
out, n = [], 0
while n < target:
    w = random.choice(words)
    out.append(w)
    n += len(w) + 1
open(sys.argv[1], "w").write(" ".join(out))
PY
for split in 0 1000000; do
  dir="$work/split-$split"
  mkdir -p "$dir"
  cat > "$dir/r.yaml" <<YAML
name: long-document
stages:
  corpus:
    kind: ingest
    needs: { files: ../long.txt }
    with: { lang: en, max_doc_chars: $split }
  tokenizer:
    kind: train-tokenizer
    needs: { corpus: corpus }
    with: { vocab_size: 2000 }
  tokens:
    kind: tokenize
    needs: { corpus: corpus, tokenizer: tokenizer }
YAML
  for stage in corpus tokenizer tokens; do
    if ! /usr/bin/time -o "$dir/time.$stage" -f '%M %e' "$bin" run "$dir/r.yaml" --only "$stage" >"$dir/log.$stage" 2>&1; then
      echo "max_doc_chars $split: $stage failed:"; tail -5 "$dir/log.$stage"; exit 1
    fi
    read -r peak_kb seconds < "$dir/time.$stage"
    printf 'max_doc_chars %-8s %-10s peak RSS %6.2f GB  %6.1f s\n' "$split" "$stage" "$(echo "$peak_kb / 1048576" | bc -l)" "$seconds"
  done
done
