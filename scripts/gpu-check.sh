#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and Python (torch,
# transformers) but no Rust toolchain. Build here first:
#
#   cargo build --release --features vulkan --bin babelflow --bench model
#   scripts/pack-gpu-binaries.sh            # strips and gzips into .device/
#
# then run this from the repository root there. It prints (and copies to
# $OUT): the GPU, the GPU-against-CPU tests, the model benchmark on Vulkan
# for the ~100M config, `calibrate --backend vulkan`, the gpu-smoke recipe
# (pretraining on the GPU, its time and memory against the estimates), and
# transformers' check of the GPU-trained and the CPU-trained (quickstart)
# models.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
for b in babelflow model-bench gpu-smoke-tests; do gunzip -c ".device/$b.gz" >"/tmp/$b" && chmod +x "/tmp/$b"; done
export PATH=/tmp:$PATH PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
ldconfig -p | grep -c libvulkan | sed 's/^/libvulkan entries: /'

echo "== the GPU path against the CPU (logits, cached and batched generation, gradients)"
(cd stages/model && CARGO_MANIFEST_DIR=$PWD timeout 90 gpu-smoke-tests --nocapture --test-threads 1) 2>&1 |
  grep -v '^$' | tail -12 | tee "$OUT/gpu-smoke-tests.txt"

echo "== model benchmark, 100m config, vulkan"
BENCH_DEVICE=vulkan BENCH_CONFIG=100m BENCH_PEAK_GFLOPS=67000 timeout 240 model-bench 2>&1 | tee "$OUT/bench-100m-vulkan.txt"

# Calibrated into the recipe's store, so its manifests keep the estimates
# the Vulkan calibration made beside what the run measured.
echo "== calibrate on vulkan (the rates plan --estimate prices GPU time with)"
timeout 150 babelflow calibrate --backend vulkan --store pipelines/examples/.babelflow 2>&1 | grep -v '^[▶✓]' |
  tee "$OUT/calibrate-vulkan.txt"

# The memory plan checks a Vulkan instance against, read from the driver
# (compare nvidia-smi's memory.total above).
echo "== plan: the GPU's memory as its driver reports it"
timeout 60 babelflow plan pipelines/examples/gpu-smoke.yaml --estimate 2>&1 | grep -i -E "priced on|memory|fit" |
  tee "$OUT/plan-gpu-memory.txt"

echo "== gpu-smoke recipe (pretrain d512 L8 on vulkan; perplexity in f32 and bf16)"
timeout 150 babelflow run pipelines/examples/gpu-smoke.yaml 2>&1 | tail -25 | tee "$OUT/gpu-smoke.txt"
python3 scripts/check_hf_transformers.py pipelines/examples/.babelflow gpu-smoke 2>&1 | tail -8 | tee "$OUT/hf-gpu-smoke.txt"

echo "== quickstart on CPU, then transformers on its models"
timeout 120 babelflow run pipelines/quickstart.yaml 2>&1 | tail -3
for inst in pretrain sft; do
  python3 scripts/check_hf_transformers.py pipelines/.babelflow quickstart --instance $inst 2>&1 | tail -6 | tee "$OUT/hf-quickstart-$inst.txt"
done
python3 scripts/estimate_vs_measured.py pipelines/examples/.babelflow gpu-smoke 2>&1 | tee "$OUT/estimate-vs-measured.txt"
# Every gpu-smoke stats.json under its instance's name (pretrain, perplexity@f32, perplexity@bf16).
for d in pipelines/examples/.babelflow/artifacts/*/; do
  [ -f "$d/stats.json" ] || continue
  name=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["instance"])' "$d/manifest.json")
  cp "$d/stats.json" "$OUT/gpu-smoke-${name//@/-}-stats.json"
done
true
