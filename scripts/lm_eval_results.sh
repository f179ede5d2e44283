#!/usr/bin/env bash
# The lm-eval runs behind docs/results.md §8 (default model, offline svdecode_* tasks). Needs the
# adapters of scripts/results.sh (runs/tqa-lora, runs/cs-lora). Two lanes, one CPU thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p runs/lm-eval runs/logs
BASE=$(python -c "from svdecode.model.loading import default_model_path; print(default_model_path())")
TQA=(--tasks svdecode_truthfulqa_mc1,svdecode_truthfulqa_mc2 --samples runs/lm-eval/tqa_samples.json)
CS=(--tasks svdecode_commonsense --limit 200)
COMMON=(--batch_size 4 --device cpu --log_samples)

# 200 of the 317 held-out TruthfulQA test questions (the seeded subset svdecode eval --limit 200 takes)
python scripts/lm_eval_tqa.py samples --tqa-calib 100 --tqa-test 317 --limit 200 --seed 0 \
  --out runs/lm-eval/tqa_samples.json

lane_steered() {
  # the calibrated artifact of runs/tqa-lora (objective nll, guard passed: mu = 1.289)
  svdecode lm-eval --model svdecode --model_args adapter=runs/tqa-lora "${TQA[@]}" "${COMMON[@]}" \
    --output_path runs/lm-eval/tqa-svdecode
  svdecode eval --steered runs/tqa-lora --tasks truthfulqa_mc --tqa-calib 100 --tqa-test 317 --limit 200 \
    --mc-prompt qa_primer --methods base,peft,peft+svdecode --no-mu-curve --out runs/eval-tqa-lora-primer
  # runs/cs-lora's guard turned steering off (mu = 0: the svdecode model then scores exactly as
  # hf+peft, see the mu=0 cross-check), so the steered row uses its unguarded nll strength instead
  local mu
  mu=$(python -c "import json; print(json.load(open('runs/cs-lora/steering_config.json'))['calibration']['estimates']['nll'])")
  svdecode lm-eval --model svdecode --model_args "adapter=runs/cs-lora,mu=$mu" "${CS[@]}" "${COMMON[@]}" \
    --output_path runs/lm-eval/cs-svdecode-nll-unguarded
}

lane_hf() {
  svdecode lm-eval --model hf --model_args "pretrained=$BASE,dtype=float32" "${TQA[@]}" "${COMMON[@]}" \
    --output_path runs/lm-eval/tqa-base
  svdecode lm-eval --model hf --model_args "pretrained=$BASE,dtype=float32,peft=runs/tqa-lora" "${TQA[@]}" \
    "${COMMON[@]}" --output_path runs/lm-eval/tqa-peft
  svdecode lm-eval --model hf --model_args "pretrained=$BASE,dtype=float32" "${CS[@]}" "${COMMON[@]}" \
    --output_path runs/lm-eval/cs-base
  svdecode lm-eval --model hf --model_args "pretrained=$BASE,dtype=float32,peft=runs/cs-lora" "${CS[@]}" \
    "${COMMON[@]}" --output_path runs/lm-eval/cs-peft
}

(time lane_steered) > runs/logs/lm-eval-steered.log 2>&1 &
(time lane_hf) > runs/logs/lm-eval-hf.log 2>&1 &
wait
for m in base peft+svdecode peft; do
  python scripts/lm_eval_tqa.py compare --lm-eval "runs/lm-eval/tqa-${m/peft+svdecode/svdecode}" \
    --svdecode runs/eval-tqa-lora-primer/results.json --method "$m"
done
