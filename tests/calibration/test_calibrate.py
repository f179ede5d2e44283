"""svdecode.calibration.calibrate: the pass over calibration data through both streams; the
statistics it collects give the same MC scores as direct steered scoring, and SteeredModel.calibrate
records every objective, the selection and the artifact."""

from __future__ import annotations

import json

import pytest
from conftest import make_peft
from test_objectives import CHOICES

from svdecode.calibration.calibrate import collect_choice_stats
from svdecode.calibration.objectives import choice_accuracy
from svdecode.calibration.strength import group_scores
from svdecode.model.config import SteeringConfig
from svdecode.model.steered_model import SteeredModel


@pytest.mark.parametrize("mu", [-3.0, 0.0, 0.8, 5.0])
def test_mc_scores_from_statistics_equal_direct_steered_scoring(tokenizer, mu):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, lam=None)
    cs = collect_choice_stats(model.streams, tokenizer, CHOICES, progress=False, cap=len(tokenizer))
    assert cs.stats.n_capped == 0  # the tiny model is flat: every kept entry is stored
    model.steering.mu = mu
    prompts = [c.prompt for c in CHOICES for _ in c.options]
    options = [o for c in CHOICES for o in c.options]
    direct = [float(s.double().sum()) for s in model.score(prompts, options)]
    assert group_scores(cs.stats, mu).tolist() == pytest.approx(direct, abs=1e-4)
    want = [
        choice_accuracy(c, direct[o : o + len(c.options)]) for c, o in zip(CHOICES, cs.offsets, strict=True)
    ]
    assert cs.item_values(mu) == want


def test_calibrate_records_every_objective_the_selection_and_the_artifact(tokenizer, tmp_path):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer)
    pairs = [(c.prompt, c.options[c.labels.index(1)]) for c in CHOICES] * 2
    result = model.calibrate(pairs, choices=CHOICES, folds=3, progress=False)
    st = result.stats
    assert set(st["estimates"]) == {"choice", "nll", "task", "mean", "median", "trimmed", "pooled"}
    assert st["guard"]["enabled"] and st["n_choice_items"] == 3
    sel = st["selection"]
    assert set(sel["candidates"]) == set(st["estimates"]) and sel["judge"] == "task"  # 20 tokens: no bins
    assert model.steering.objective == result.objective and model.steering.mu == result.mu
    if st["guard"]["passed"] is False:
        assert result.mu == 0.0 and result.objective == "off"
    else:
        assert result.objective == sel["chosen"]
    saved = json.loads(model.save_pretrained(tmp_path / "s").read_text())
    assert saved["objective"] == result.objective and "estimator" not in saved
    assert saved["calibration"]["guard"] == st["guard"] and saved["format_version"] == 4
    assert SteeringConfig.load(tmp_path / "s").calibration["selection"]["chosen"] == sel["chosen"]
    forced = model.calibrate(pairs, choices=CHOICES, folds=3, progress=False, objective="choice")
    assert forced.stats["selection"]["chosen"] == "choice" and forced.objective in ("choice", "off")
