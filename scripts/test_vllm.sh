#!/usr/bin/env bash
# The vLLM tests (tests/integrations/vllm_engine): steered decoding inside vLLM's CPU build against svdecode's own.
# Needs .venv-vllm (bash scripts/setup_vllm.sh) and the main .venv (bash scripts/setup.sh), which
# computes the reference decodes with the supported transformers. The calibrated adapter is
# $SVDECODE_VLLM_ADAPTER, else runs/vllm-boolq, trained and calibrated here on first use (a few
# minutes). One vLLM engine start serves each module (~1-1.5 min on 2 cores). --noconftest: the
# suite's conftest builds peft models, and .venv-vllm has no peft (the vLLM tests need none).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -x .venv-vllm/bin/python ] || { echo "no .venv-vllm: run bash scripts/setup_vllm.sh first" >&2; exit 1; }
[ -x .venv/bin/python ] || bash scripts/setup.sh
adapter=${SVDECODE_VLLM_ADAPTER:-runs/vllm-boolq}
if [ ! -f "$adapter/steering_config.json" ]; then
  .venv/bin/svdecode warmstart --data commonsense:boolq --n-train 16 --out "$adapter"
  .venv/bin/svdecode calibrate --adapter "$adapter" --data commonsense:boolq --limit 16 --out "$adapter"
fi
export SVDECODE_VLLM_ADAPTER=$adapter SVDECODE_REF_PYTHON=${SVDECODE_REF_PYTHON:-$PWD/.venv/bin/python}
.venv-vllm/bin/python -m pytest -q -p no:cacheprovider --noconftest -m "" tests/integrations/vllm_engine/test_vllm_engine.py \
  tests/integrations/vllm_engine/test_vllm_serve.py "$@"
