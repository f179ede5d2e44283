"""TruthfulQA MC through lm-eval and through ``svdecode eval`` on the same questions.

    python scripts/lm_eval_tqa.py samples --limit 200 --out runs/lm-eval/tqa_samples.json
        lm-eval ``--samples`` file selecting the held-out test questions that
        ``svdecode eval --tasks truthfulqa_mc --tqa-calib 100 --tqa-test 317 --limit 200`` scores
        (never a training or calibration question of ``svdecode run --n-train 400 --n-calib 100``).
    python scripts/lm_eval_tqa.py compare --lm-eval OUT_DIR --svdecode runs/x/results.json --method peft
        per choice and per question: lm-eval's log-likelihoods, MC1 and MC2 against svdecode's.

A harness script (it reads svdecode.data / results.json); the lm-eval plug-in itself does not.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from svdecode.data import default_data_root, load_truthfulqa_mc, sample, truthfulqa_mc_split

TASKS = ("svdecode_truthfulqa_mc1", "svdecode_truthfulqa_mc2")


def _norm(question: str) -> str:
    return " ".join(question.split())


def cmd_samples(ns: argparse.Namespace) -> None:
    _, test = truthfulqa_mc_split(ns.tqa_calib, ns.tqa_test, ns.seed)
    chosen = sample(test, ns.limit, ns.seed)
    raw = json.loads((default_data_root() / "truthfulqa" / "mc_task.json").read_text())
    index = {_norm(r["question"]): i for i, r in enumerate(raw)}
    docs = sorted(index[it.question] for it in chosen)
    for it in chosen:  # the lm-eval task scores the file's choices in the file's order
        assert tuple(raw[index[it.question]]["mc2_targets"]) == it.mc2_choices, it.id
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(dict.fromkeys(TASKS, docs)))
    print(f"{len(docs)} held-out test questions -> {ns.out}")


def _lm_eval_samples(out_dir: Path, task: str) -> dict[str, dict]:
    files = sorted(out_dir.rglob(f"samples_{task}_*.jsonl"))
    if not files:
        raise SystemExit(f"no samples_{task}_*.jsonl under {out_dir} (run lm-eval with --log_samples)")
    rows = [json.loads(line) for line in files[-1].read_text().splitlines()]
    return {_norm(r["doc"]["question"]): r for r in rows}


def cmd_compare(ns: argparse.Namespace) -> None:
    ours = json.loads(Path(ns.svdecode).read_text())["tasks"]["truthfulqa_mc"]["items"][ns.method]
    questions = {it.id: it.question for it in load_truthfulqa_mc()}
    for lm_task, key in zip(TASKS, ("MC1", "MC2"), strict=True):
        theirs = _lm_eval_samples(Path(ns.lm_eval), lm_task)
        pairs = [(theirs[questions[r["id"]]], r) for r in ours if questions[r["id"]] in theirs]
        d_ll = max(
            abs(float(t[0][0]) - s)
            for lm, r in pairs
            for t, s in zip(lm["resps"], r[f"{key.lower()}_scores"], strict=True)
        )
        d_metric = [abs(lm["acc"] - r[key]) for lm, r in pairs]
        mean_lm = sum(lm["acc"] for lm, _ in pairs) / len(pairs)
        mean_ours = sum(r[key] for _, r in pairs) / len(pairs)
        print(
            f"{key}: {len(pairs)} questions; max |d loglik| per choice {d_ll:.2e}; "
            f"questions that differ {sum(d > 1e-9 for d in d_metric)} (max |d| {max(d_metric):.2e}); "
            f"mean lm-eval {100 * mean_lm:.2f} vs svdecode {100 * mean_ours:.2f}"
        )
        assert not any(math.isnan(d) for d in d_metric)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("samples")
    s.add_argument("--tqa-calib", type=int, default=100)
    s.add_argument("--tqa-test", type=int, default=317)
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_samples)
    c = sub.add_parser("compare")
    c.add_argument("--lm-eval", required=True, help="an lm-eval --output_path run with --log_samples")
    c.add_argument("--svdecode", required=True, help="results.json of svdecode eval --mc-prompt qa_primer")
    c.add_argument("--method", default="peft+svdecode")
    c.set_defaults(func=cmd_compare)
    ns = p.parse_args()
    ns.func(ns)


if __name__ == "__main__":
    main()
