#!/usr/bin/env bash
# Steered vs plain vLLM throughput on one GPU, bf16, at 1/8/32/256 concurrent requests
# (benchmarks/bench_vllm.py). Prepared for a lent GPU machine; not yet run (no device was lent).
#
# Needs, on the GPU machine: a venv with the GPU package `vllm` (0.33 pins torch 2.14 and
# transformers <5.21; its wheels are too large to carry to the device machines here, so it must be
# installed there) and svdecode installed with --no-deps, and a Llama-architecture model folder
# (MODEL_DIR, e.g. the converted default model from ~/.cache/svdecode/SmolLM2-135M-Instruct; or a
# config + tokenizer folder such as .gpu/smollm2-135m from benchmarks/gpu_prepare.sh with
# LOAD_FORMAT=dummy: random weights, the same throughput).
#   VENV=/path/to/venv MODEL_DIR=/path/to/model [LOAD_FORMAT=dummy] bash benchmarks/gpu_vllm.sh
# Writes $OUT/gpu_vllm.json (or ./gpu_vllm.json) and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VENV:?set VENV to a venv with the GPU vllm package}" "${MODEL_DIR:?set MODEL_DIR to a Llama model folder}"
"$VENV/bin/pip" install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
HF_HUB_OFFLINE=1 "$VENV/bin/python" benchmarks/bench_vllm.py --base "$MODEL_DIR" --dtype bfloat16 \
  --concurrency 1,8,32,256 --max-tokens 128 --load-format "${LOAD_FORMAT:-auto}" --json "${OUT:-.}/gpu_vllm.json"
