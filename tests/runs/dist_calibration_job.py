"""Run by tests/runs/test_distributed.py, once in the test process and once under ``torchrun``: the
calibration of a tiny steered model, written as JSON by the main process (argv[1])."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/, for conftest
from conftest import make_peft, make_tokenizer  # noqa: E402

from svdecode.calibration.objectives import ChoiceItem  # noqa: E402
from svdecode.data import Example  # noqa: E402
from svdecode.model.steered_model import SteeredModel  # noqa: E402
from svdecode.runs import distributed  # noqa: E402

PAIRS = [
    ("the correct answer is", " true"),
    ("What is the capital", " of France"),
    ("Q:", " A: yes"),
    ("Paris is the capital of", " France"),
    ("The sky is", " blue"),
    ("answer1 answer2", " answer3 answer4"),
    ("Please answer the following question", " with true or false"),
]


def calibrations() -> dict:
    tok = make_tokenizer()
    model = SteeredModel.from_peft(make_peft("lora", len(tok)), tok)
    pairs = [Example(str(i), "t", p, a) for i, (p, a) in enumerate(PAIRS)]
    choices = [ChoiceItem(str(i), p, (a, " no", " the sky"), (1, 0, 0)) for i, (p, a) in enumerate(PAIRS)]
    out = {"world": distributed.world_size()}
    # batch 2: four batches, two per process; batch 8: one batch, the second process has none
    for batch_size in (2, 8):
        res = model.calibrate(pairs, batch_size=batch_size, choices=choices, folds=3, progress=False)
        out[f"batch{batch_size}"] = {
            "mu": res.mu,
            "estimates": res.stats["estimates"],
            "token_mu": res.token_mu.tolist(),
            "n_tokens": res.stats["n_tokens"],
            "choice_scores": res.choice_stats.scores(0.7),
            "guard": res.stats["guard"]["passed"],
        }
    return out


if __name__ == "__main__":
    result = calibrations()
    if distributed.is_main():
        Path(sys.argv[1]).write_text(json.dumps(result))
