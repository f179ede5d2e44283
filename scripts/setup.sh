#!/usr/bin/env bash
# Create .venv and install svdecode with its dev tools at the exact versions in requirements/lock.txt
# (the ones the committed numbers were measured with). The lock pins torch to the CPU wheel the
# project machines carry; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q "$(grep '^pip==' requirements/lock.txt)"
pip install -q -c requirements/lock.txt -e ".[dev,harness,lm-eval]"
