#!/usr/bin/env bash
# Strips and gzips the release binaries for scripts/gpu-check.sh into .device/
# (ignored by git; carried to the GPU machine).
set -euo pipefail
target=${CARGO_TARGET_DIR:-target}/release
mkdir -p .device
bench=$(ls -t "$target"/deps/model-* | grep -v '\.d$' | head -1)
# The GPU-against-CPU tests, in a test build (dependencies optimised).
smoke=$(cargo test -p babelflow-model --features vulkan --test gpu_smoke --no-run 2>&1 |
  grep -o '/[^ ]*deps/gpu_smoke-[0-9a-f]*' | tail -1) || true
[ -n "$smoke" ] || { echo "the gpu_smoke test did not build: cargo test -p babelflow-model --features vulkan --test gpu_smoke --no-run" >&2; exit 1; }
for pair in "babelflow:$target/babelflow" "model-bench:$bench" "gpu-smoke-tests:$smoke"; do
  name=${pair%%:*} path=${pair#*:}
  strip -o "/tmp/$name.stripped" "$path"
  gzip -9 -c "/tmp/$name.stripped" >".device/$name.gz"
  ls -la ".device/$name.gz"
done
