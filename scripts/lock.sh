#!/usr/bin/env bash
# Regenerate requirements/lock.txt for svdecode with its dev, serve and lm-eval extras.
#   bash scripts/lock.sh            keep every version already locked, add pins for new dependencies
#   UPGRADE=1 bash scripts/lock.sh  re-resolve everything to the newest releases pip finds today
# Upgrading is a deliberate commit: run it, then `bash scripts/test.sh` (and the demo when numbers
# could move), and say in the commit which versions changed. torch stays pinned by hand (TORCH
# below): an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-2.13.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
if [ "${UPGRADE:-0}" = 1 ]; then
  "$tmp/venv/bin/pip" install -q --upgrade pip
else
  "$tmp/venv/bin/pip" install -q "$(grep '^pip==' requirements/lock.txt)"
fi
keep=(-c requirements/lock.txt)
[ "${UPGRADE:-0}" = 1 ] && keep=()
"$tmp/venv/bin/pip" install -q "${keep[@]}" "torch==$TORCH" -e ".[dev,harness,lm-eval]"
{
  echo "# Exact versions the committed numbers and tests were measured with; installed as constraints"
  echo "# (pip install -c requirements/lock.txt -e .[dev,harness,lm-eval]) by scripts/setup.sh. Regenerate with"
  echo "# scripts/lock.sh; do not edit by hand. Python $(python3 -c 'import platform; print(platform.python_version())')."
  echo "pip==$("$tmp/venv/bin/pip" --version | cut -d' ' -f2)"
  # a CPU or CUDA build of the same torch release both satisfy the pin
  "$tmp/venv/bin/pip" freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) pins)"
