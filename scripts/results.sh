#!/usr/bin/env bash
# The runs behind docs/results.md, on the default model (SmolLM2-135M-Instruct) and ../shared/data.
# Two independent lanes run side by side, one CPU thread each (on a 2-core machine this beats two
# threads per job one after the other). A rerun continues where it stopped: `run --resume` continues
# an interrupted warm-start, a stage asked the same is reused, and evaluations resume from their
# per-item caches. Calibration everywhere: the default (auto: every candidate objective and the
# 3-bin confidence fit cross-validated, the best chosen, applied only if nested 5-fold CV finds a
# gain; svdecode.calibration.selection); every evaluation records every candidate's strength, the
# calibration's choice and the strength curve (test = ORACLE) from one extra scoring pass.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p runs/logs
LIMIT=${LIMIT:-100}   # commonsense test items per dataset (PIQA and HellaSwag have 64-item samples)

lane_commonsense() {
  svdecode run --data commonsense:all --n-train 512 --n-calib 128 --seed 0 --resume --out runs/cs-lora
  svdecode eval --steered runs/cs-lora --tasks commonsense --limit "$LIMIT" --max-new-tokens 12 \
    --methods peft,peft+svdecode --out runs/eval-cs-lora
}

lane_truthfulqa() {
  local split=(--data truthfulqa --n-train 400 --n-calib 100 --n-test 317 --seed 0 --resume)
  local mc=(--tasks truthfulqa_mc --tqa-calib 100 --tqa-test 317 --mc-prompt plain)
  svdecode run "${split[@]}" --out runs/tqa-lora
  svdecode eval --steered runs/tqa-lora "${mc[@]}" --warmstart-fraction 1 \
    --methods base,peft,peft+svdecode,peft+logit_arith,objectives --out runs/eval-tqa-lora
  svdecode eval --steered runs/tqa-lora "${mc[@]}" \
    --methods peft,peft+svdecode,alpha=0.05,alpha=0.2,alpha=0.5 --out runs/eval-tqa-lora-alpha
  svdecode run "${split[@]}" --peft ia3 --out runs/tqa-ia3
  svdecode eval --steered runs/tqa-ia3 "${mc[@]}" --methods peft,peft+svdecode --out runs/eval-tqa-ia3
  # warm-start length (1/16, 1/4, 1 epoch) x learning rate (the paper's 5e-5, and 5e-4)
  for lr in 5e-05 5e-04; do
    for f in 0.0625 0.25 1; do
      [ "$lr" = "5e-05" ] && [ "$f" = "1" ] && continue   # that one is runs/tqa-lora
      local frac=(); [ "$f" != "1" ] && frac=(--fraction "$f")
      svdecode run "${split[@]}" --lr "$lr" "${frac[@]}" --out "runs/tqa-lora-lr$lr-f$f"
      svdecode eval --steered "runs/tqa-lora-lr$lr-f$f" "${mc[@]}" --warmstart-fraction "$f" \
        --methods peft,peft+svdecode --out "runs/eval-tqa-lora-lr$lr-f$f"
    done
  done
}

lane_commonsense > runs/logs/commonsense.log 2>&1 &
lane_truthfulqa > runs/logs/truthfulqa.log 2>&1 &
wait
svdecode report runs/eval-tqa-lora runs/eval-tqa-lora-lr5e-05-f0.0625 runs/eval-tqa-lora-lr5e-05-f0.25 \
  runs/eval-tqa-lora-lr5e-04-f0.0625 runs/eval-tqa-lora-lr5e-04-f0.25 runs/eval-tqa-lora-lr5e-04-f1 \
  runs/eval-tqa-ia3 runs/eval-cs-lora runs/eval-tqa-lora-alpha \
  --labels "TQA LoRA 1 ep lr 5e-5,TQA LoRA 1/16 ep lr 5e-5,TQA LoRA 1/4 ep lr 5e-5,TQA LoRA 1/16 ep lr 5e-4,TQA LoRA 1/4 ep lr 5e-4,TQA LoRA 1 ep lr 5e-4,TQA IA3 1 ep lr 5e-5,CS LoRA 1 ep lr 5e-5,TQA LoRA alpha sweep" \
  --out docs/report
