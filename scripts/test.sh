#!/usr/bin/env bash
# Set up (idempotent), lint, and run the test suite offline on the locked versions; then rerun the
# cache and scoring tests (marker `compat`) on the other end of the supported transformers range
# (requirements/compat.txt, overlaid on the same environment). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
ruff check svdecode tests benchmarks scripts
echo "== locked versions: $(python -c 'from svdecode.versions import describe; print(describe())')"
python -m pytest -q "$@"

compat=.venv/compat
pip install -q --no-deps --upgrade --target "$compat" -r requirements/compat.txt
echo "== compat versions: $(PYTHONPATH=$compat python -c 'from svdecode.versions import describe; print(describe())')"
PYTHONPATH=$compat python -m pytest -q -p no:cacheprovider -m compat
