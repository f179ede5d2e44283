"""The default calibration chooses (svdecode.calibration.selection): the choice objective against direct steered
scoring, the criterion picks the best score, and the nested guard applies a strength only where a
real gain was built in."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_peft
from test_objectives import CHOICES, helpful_stats, mirrored_stats

from svdecode.calibration.calibrate import collect_choice_stats
from svdecode.calibration.objectives import ChoiceItem, ChoiceStats, choice_accuracy, minimise_choice
from svdecode.calibration.selection import CANDIDATES, choose_strength, pick, summary
from svdecode.calibration.strength import TokenStats, search_grid, token_stats
from svdecode.model.config import ConfigError, SteeringConfig
from svdecode.model.steered_model import SteeredModel

# a TruthfulQA-like item: two true answers among four
MULTI = ChoiceItem("d", "Q: Is water wet?\nA:", (" yes", " indeed", " no", " never"), (1, 1, 0, 0))


def direct_choice_loss(item: ChoiceItem, scores: list[float]) -> float:
    """-log(sum over true options of exp(score) / sum over all options), in plain Python."""

    def lse(xs):
        top = max(xs)
        return top + math.log(sum(math.exp(x - top) for x in xs))

    return lse(scores) - lse([s for s, lab in zip(scores, item.labels, strict=True) if lab == 1])


@pytest.mark.parametrize("mu", [-4.0, -0.5, 0.0, 1.3, 6.0])
def test_choice_objective_equals_direct_steered_scoring(tokenizer, mu):
    items = [*CHOICES, MULTI]
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, lam=None)
    cs = collect_choice_stats(model.streams, tokenizer, items, progress=False, cap=len(tokenizer))
    model.steering.mu = mu
    want = []
    for item in items:
        direct = [
            float(s.double().sum())
            for s in model.score([item.prompt] * len(item.options), list(item.options))
        ]
        want.append(direct_choice_loss(item, direct))
    assert cs.choice_losses(mu).tolist() == pytest.approx(want, abs=1e-4)
    assert all(0 < w < math.inf for w in want)  # finite, and not the trivial 0


def option_stats(n_items: int, helped: float, seed: int, vocab: int = 20) -> ChoiceStats:
    """Items of two one-token options, the first correct. The adapter (plus noise) is a little
    above, the base well below, the correct option's token (``helped`` scales both; the wrong
    option's the other way round): with helped > 0 extrapolating (mu < 0) raises accuracy; with
    helped = 0 steering only adds noise."""
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * n_items
    z = torch.randn(rows, vocab, generator=gen, dtype=torch.float64)
    y = torch.randint(0, vocab, (rows,), generator=gen)
    onehot = torch.nn.functional.one_hot(y, vocab).double()
    sign = torch.tensor([1.0, -1.0]).repeat(n_items).unsqueeze(1)
    noise = 0.8 * torch.randn(rows, vocab, generator=gen, dtype=torch.float64)
    za, zb = z + 0.2 * helped * sign * onehot + noise, z - helped * sign * onehot
    stats = token_stats(za, zb, y, alpha=0.05, group=torch.arange(rows))
    stats.n_groups = rows
    items = [ChoiceItem(f"i{i}", "", ("a", "b"), (1, 0)) for i in range(n_items)]
    return ChoiceStats(items, stats, [2 * i for i in range(n_items)], choice_accuracy)


def pairs_of(cs: ChoiceStats) -> tuple[TokenStats, list[str]]:
    """The correct options as the calibration pairs (one per item, same ids)."""
    keep = cs.stats.group % 2 == 0
    stats = cs.stats.take(keep)
    stats.group = stats.group // 2
    stats.n_groups = len(cs.items)
    return stats, [it.id for it in cs.items]


def test_choice_minimiser_finds_the_global_minimum_of_a_dense_grid():
    cs = option_stats(40, helped=1.0, seed=3)
    mu = minimise_choice(cs, None, search_grid([]))
    dense = np.concatenate([-np.logspace(-3, 3, 1500), [0.0], np.logspace(-3, 3, 1500)])
    best = min(float(cs.choice_losses(float(m)).sum()) for m in dense)
    assert float(cs.choice_losses(mu).sum()) <= best + 1e-6 and mu < 0


def test_pick_takes_the_best_score_not_the_best_mean():
    x = np.random.default_rng(0).normal(size=100)
    x = (x - x.mean()) / x.std(ddof=1)  # mean 0, s.d. 1 exactly: se 0.1
    gains = {"steady": 1.0 + 0.5 * x, "noisy": 2.0 + 30 * x[::-1]}  # scores 0.95 and -1
    scores = {n: summary(g)[2] for n, g in gains.items()}
    means = {n: summary(g)[0] for n, g in gains.items()}
    assert means["noisy"] > means["steady"] and scores["steady"] > scores["noisy"]
    assert pick(gains) == "steady" and pick(gains, penalty=0.0) == "noisy"
    assert pick({"a": 0.1 + 2 * x}) == "off"  # score -0.1: nothing beats not steering


def test_selection_chooses_the_candidate_with_the_best_recorded_score():
    stats, ids = helpful_stats(n=80)
    out = choose_strength(stats, ids, bins=3)
    cands = out.selection["candidates"]
    assert set(cands) == {c for c in CANDIDATES if c not in ("choice", "task")}
    best = max(cands, key=lambda n: cands[n]["score"])
    assert out.selection["chosen"] == best and cands[best]["score"] > 0
    for c in cands.values():  # the score is what the criterion says it is
        assert c["score"] == pytest.approx(c["cv_gain"] - c["se"])
    assert out.objective == best and out.guard["passed"] is True


def test_no_real_gain_in_any_candidate_keeps_steering_off():
    stats, ids = mirrored_stats()  # exactly symmetric: no strength can beat 0
    assert choose_strength(stats, ids, bins=3).objective == "off"
    for seed in range(6):  # options whose steering direction is unrelated to correctness
        cs = option_stats(60, helped=0.0, seed=seed)
        pairs, pids = pairs_of(cs)
        out = choose_strength(pairs, pids, cs, bins=3, seed=seed)
        assert out.objective == "off" and out.mu == 0.0, (seed, out.guard["reason"])


def test_a_real_gain_only_at_negative_strength_is_found_and_applied():
    cs = option_stats(80, helped=1.0, seed=1)
    pairs, pids = pairs_of(cs)
    assert cs.value(-2.0) > cs.value(0.0) > cs.value(2.0)  # the case is what it says
    out = choose_strength(pairs, pids, cs, bins=3)
    assert out.guard["passed"] is True and out.objective != "off"
    assert out.mu < 0 or (out.mu_bins is not None and max(out.mu_bins["mu"]) < 0)
    assert out.selection["nested_gain"] > out.selection["nested_se"] > 0


def test_selection_record_is_checked_and_old_artifacts_without_it_load():
    stats, ids = helpful_stats()
    out = choose_strength(stats, ids, bins=3)
    cfg = SteeringConfig(mu=out.mu, objective=out.objective, calibration={"selection": out.selection})
    assert (
        SteeringConfig.from_json(cfg.to_json()).calibration["selection"]["chosen"] == out.selection["chosen"]
    )
    v3 = {**SteeringConfig(calibration={"guard": {}}).to_json(), "format_version": 3}
    assert SteeringConfig.from_json(v3).calibration == {"guard": {}}
    bad = {**out.selection, "chosen": "oracle"}
    with pytest.raises(ConfigError, match="'chosen'"):
        SteeringConfig(calibration={"selection": bad})
    nan = {**out.selection, "nested_gain": float("nan")}
    with pytest.raises(ConfigError, match="nested_gain"):
        SteeringConfig(calibration={"selection": nan})
