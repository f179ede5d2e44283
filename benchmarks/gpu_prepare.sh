#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what benchmarks/gpu_decode.sh needs on a lent GPU machine, which
# reaches no registry and gets at most 64 MiB of files: the locked transformers and peft wheels for
# its Python 3.12, and two model folders holding only config + tokenizer (weights are random there):
# the default model's shape (SmolLM2-135M) and the paper's Qwen2.5-1.5B shape (with SmolLM2's
# tokenizer: throughput does not depend on which token ids are decoded). Everything goes to .gpu/,
# which git ignores. Needs the default model converted once (`svdecode generate ...` or the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/smollm2-135m .gpu/qwen2.5-1.5b
pins=$(grep -E '^(transformers|peft)==' requirements/lock.txt)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu/whl $pins
src=$(.venv/bin/python -c 'from svdecode.model.loading import default_model_path; print(default_model_path())')
for f in config.json tokenizer.json tokenizer_config.json; do cp "$src/$f" .gpu/smollm2-135m/; done
cp benchmarks/gpu/qwen2.5-1.5b-config.json .gpu/qwen2.5-1.5b/config.json
cp "$src/tokenizer.json" "$src/tokenizer_config.json" .gpu/qwen2.5-1.5b/
du -sh .gpu
