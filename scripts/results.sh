#!/usr/bin/env bash
# The runs behind docs/results.md, on the default model (SmolLM2-135M-Instruct) and ../shared/data.
# Two independent lanes run side by side, one CPU thread each (on a 2-core machine this beats two
# threads per job one after the other). Every command resumes from its caches if re-run (`run --resume`
# continues an interrupted warm-start; a finished stage asked the same is reused).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p runs/logs
LIMIT=${LIMIT:-300}   # commonsense test items per dataset

lane_commonsense() {
  svdecode run --data commonsense:all --n-train 512 --n-calib 128 --seed 0 --resume --out runs/cs-lora
  svdecode eval --steered runs/cs-lora --tasks commonsense --limit "$LIMIT" --max-new-tokens 12 \
    --methods base,peft,peft+svdecode --out runs/eval-cs-lora
  svdecode run --data commonsense:all --n-train 512 --n-calib 128 --seed 0 --peft ia3 --resume --out runs/cs-ia3
  svdecode eval --steered runs/cs-ia3 --tasks commonsense --limit "$LIMIT" --max-new-tokens 12 \
    --methods peft,peft+svdecode --out runs/eval-cs-ia3
}

lane_truthfulqa() {
  local split=(--data truthfulqa --n-train 400 --n-calib 100 --n-test 317 --seed 0 --resume)
  local mc=(--tasks truthfulqa_mc --tqa-calib 100 --tqa-test 317 --mc-prompt plain)
  svdecode run "${split[@]}" --out runs/tqa-lora
  svdecode eval --steered runs/tqa-lora "${mc[@]}" --warmstart-fraction 1 \
    --methods base,peft,peft+svdecode,peft+logit_arith,no_projection,no_mask --out runs/eval-tqa-lora
  svdecode run "${split[@]}" --peft ia3 --out runs/tqa-ia3
  svdecode eval --steered runs/tqa-ia3 "${mc[@]}" --methods base,peft,peft+svdecode --out runs/eval-tqa-ia3
  for f in 0.0625 0.25; do
    svdecode run "${split[@]}" --fraction "$f" --out "runs/tqa-lora-f$f"
    svdecode eval --steered "runs/tqa-lora-f$f" "${mc[@]}" --warmstart-fraction "$f" \
      --methods peft,peft+svdecode --out "runs/eval-tqa-lora-f$f"
  done
  svdecode eval --steered runs/tqa-lora --tasks truthfulqa_gen --tqa-calib 100 --tqa-test 317 --limit 100 \
    --methods base,peft,peft+svdecode --out runs/eval-tqagen-lora
}

lane_commonsense > runs/logs/commonsense.log 2>&1 &
lane_truthfulqa > runs/logs/truthfulqa.log 2>&1 &
wait
svdecode report runs/eval-tqa-lora/results.json runs/eval-tqa-ia3/results.json \
  runs/eval-tqa-lora-f0.0625/results.json runs/eval-tqa-lora-f0.25/results.json runs/eval-cs-lora/results.json \
  runs/eval-cs-ia3/results.json runs/eval-tqagen-lora/results.json \
  --labels tqa-lora,tqa-ia3,tqa-lora-1/16,tqa-lora-1/4,cs-lora,cs-ia3,tqagen-lora --out docs/report
