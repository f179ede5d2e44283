#!/usr/bin/env bash
# The decode benchmark on a GPU, bf16: steered vs plain adapted decoding at batch 1, 8, 32, for the
# default model's shape and the paper's Qwen2.5-1.5B shape (random weights: see gpu_prepare.sh,
# run first on the CPU machine). On the device tool: run `bash benchmarks/gpu_decode.sh` with
# carry [".gpu"]; JSON results go to $OUT (or ./runs/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
for m in smollm2-135m qwen2.5-1.5b; do
  echo "== $m"
  python3 benchmarks/bench_decode.py --model ".gpu/$m" --random-weights --device cuda --dtype bfloat16 \
    --batches 1 8 32 --new-tokens "${NEW_TOKENS:-64}" --repeats "${REPEATS:-3}" --json "$out/decode-$m.json" \
    2>&1 | grep -v -E 'Loading weights|it/s\]' | tee "$out/decode-$m.log"
done
