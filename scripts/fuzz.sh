#!/usr/bin/env bash
# The larger fuzz run: the property tests and the server fuzz (tests/*/test_fuzz_*.py) with the
# hypothesis profile `deep` (FUZZ_EXAMPLES examples per test, default 2000).
# CI runs the same tests with the small `ci` profile (25 examples each, seeded) inside test.sh.
#   bash scripts/fuzz.sh                  FUZZ_EXAMPLES=500 bash scripts/fuzz.sh -k server
# Prints, per test, the examples tried (hypothesis statistics) and the server's status counts;
# a failure prints the smallest failing example and the @seed that reproduces it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
export HF_HUB_OFFLINE=1 HYPOTHESIS_PROFILE=deep FUZZ_EXAMPLES=${FUZZ_EXAMPLES:-2000}
start=$(date +%s)
python -m pytest -q -s -p no:cacheprovider --hypothesis-show-statistics tests/steering/test_fuzz_steering.py \
  tests/data/test_fuzz_inputs.py tests/integrations/test_fuzz_server.py "$@"
echo "== fuzz: FUZZ_EXAMPLES=$FUZZ_EXAMPLES, $(( $(date +%s) - start )) s"
