"""Objectives, cross-validation and the guard (svdecode.calibration.objectives), and their use through
SteeredModel.calibrate: MC scores from the statistics equal direct steered scoring, the guard
turns steering off on a case built to have no gain, binned strengths reach decoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_peft

from svdecode.calibration.objectives import ChoiceItem
from svdecode.calibration.selection import choose_strength, fold_of
from svdecode.calibration.strength import TokenStats, minimise_nll, token_stats
from svdecode.model.config import CONFIG_NAME, SteeringConfig
from svdecode.model.steered_model import SteeredModel
from svdecode.steering import steer_logits


def mirrored_stats(n=30, vocab=20, seed=0) -> tuple[TokenStats, list[str]]:
    """Each token twice, once with the base distribution reflected through the adapted one
    (log p_theta' = 2 log p_phi - log p_theta, so delta' = -delta exactly), both in one item: L(mu)
    is even in mu on every fold, and no strength can beat 0 on held-out data."""
    gen = torch.Generator().manual_seed(seed)
    za = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2
    zb = za + torch.randn(n, vocab, generator=gen, dtype=torch.float64)
    zb_mirror = 2 * torch.log_softmax(za, -1) - torch.log_softmax(zb, -1)
    y = torch.randint(0, vocab, (n,), generator=gen)
    group = torch.arange(2 * n)
    stats = token_stats(torch.cat([za, za]), torch.cat([zb, zb_mirror]), torch.cat([y, y]), group=group)
    stats.n_groups = 2 * n
    ids = [f"q{i}" for i in range(n)] * 2  # a token and its mirror share an item
    return stats, ids


def helpful_stats(n=60, vocab=20, seed=1) -> tuple[TokenStats, list[str]]:
    """The adapted model moved toward the gold token and the base model away from it on 3 tokens
    of 4; on the 4th the base is nearer the gold token. Extrapolating (mu < 0) helps, up to a
    finite strength (every token helped would make the fit unbounded, never applied)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vocab, generator=gen, dtype=torch.float64)
    y = torch.randint(0, vocab, (n,), generator=gen)
    onehot = torch.nn.functional.one_hot(y, vocab).double()
    za, zb = z + 1.5 * onehot, z - 0.5 * onehot
    zb = torch.where((torch.arange(n) % 4 == 0).unsqueeze(-1), z + 3.0 * onehot, zb)
    stats = token_stats(za, zb, y, alpha=0.05, group=torch.arange(n))
    stats.n_groups = n
    return stats, [f"q{i}" for i in range(n)]


def test_mirrored_case_really_has_no_gain():
    stats, _ = mirrored_stats()
    d = stats.d_gold.view(2, -1)
    assert torch.allclose(d[0], -d[1], atol=1e-6)
    assert abs(minimise_nll(stats).mu) < 1e-6


@pytest.mark.parametrize("objective", ["auto", "nll", "mean", "pooled", "median"])
def test_guard_turns_steering_off_when_held_out_data_shows_no_gain(objective):
    stats, ids = mirrored_stats()
    out = choose_strength(stats, ids, objective=objective, folds=5, bins=3)
    assert out.guard["enabled"] and out.guard["passed"] is False
    assert out.mu == 0.0 and out.mu_bins is None and out.objective == "off"
    assert "held-out gain" in out.guard["reason"]
    assert set(out.estimates) == {"nll", "mean", "median", "trimmed", "pooled"}  # all recorded
    assert set(out.selection["candidates"]) == {*out.estimates, "binned"}
    unguarded = choose_strength(stats, ids, objective=objective, guard=False, bins=0)
    forced = "nll" if objective == "auto" else objective
    if objective != "auto":
        assert unguarded.mu == unguarded.estimates[forced] and unguarded.guard["passed"] is None


def test_guard_keeps_a_strength_that_helps_on_held_out_folds():
    stats, ids = helpful_stats()
    out = choose_strength(stats, ids, objective="nll", folds=5, bins=0)
    assert out.guard["passed"] is True and out.mu == out.estimates["nll"] < 0 and out.objective == "nll"
    sel = out.selection
    assert sel["judge"] == "nll" and sel["n_items"] == 60 and sel["chosen"] == "nll"
    assert sel["nested_gain"] == sel["candidates"]["nll"]["cv_gain"] > sel["nested_se"] > 0


def test_folds_are_seeded_balanced_and_by_item():
    ids = [f"q{i % 17}" for i in range(40)]
    a, b = fold_of(ids, 5, seed=0), fold_of(ids, 5, seed=0)
    assert a == b and fold_of(ids, 5, seed=1) != a
    sizes = [list(a.values()).count(f) for f in range(5)]
    assert max(sizes) - min(sizes) <= 1 and len(a) == 17


def test_too_few_items_to_cross_validate_turn_steering_off():
    stats, ids = helpful_stats(n=1)
    out = choose_strength(stats, ids, objective="nll")
    assert out.guard["passed"] is False and out.mu == 0.0 and "too few" in out.guard["reason"]


@pytest.mark.parametrize("objective", ["task", "choice"])
def test_option_objectives_need_choices(objective):
    stats, ids = helpful_stats()
    with pytest.raises(ValueError, match="needs multiple-choice"):
        choose_strength(stats, ids, objective=objective)


def test_binned_strengths_are_fitted_recorded_and_applied_only_when_selected():
    stats, ids = helpful_stats(n=90)
    out = choose_strength(stats, ids, objective="nll", bins=3)
    assert out.bins is not None and len(out.bins["mu"]) == 3 and len(out.bins["edges"]) == 2
    assert out.bins["applied"] is False and out.mu_bins is None  # nll was forced
    assert out.selection["candidates"]["binned"]["mu"] == out.bins["mu"]
    auto = choose_strength(stats, ids, bins=3)
    assert auto.bins["applied"] == (auto.objective == "binned") == (auto.mu_bins is not None)


def test_binned_can_be_forced_and_is_judged_like_any_forced_candidate():
    stats, ids = helpful_stats(n=90)
    out = choose_strength(stats, ids, objective="binned", bins=3)
    sel = out.selection
    assert sel["chosen"] == "binned" and sel["nested_picks"] is None  # forced: nothing selected
    held_out = sel["candidates"]["binned"]
    assert (sel["nested_gain"], sel["nested_se"]) == (held_out["cv_gain"], held_out["se"])
    assert out.guard["passed"] == (sel["nested_gain"] > max(sel["nested_se"], 0.0))
    unguarded = choose_strength(stats, ids, objective="binned", guard=False, bins=3)
    assert unguarded.objective == "binned" and unguarded.mu_bins["mu"] == unguarded.bins["mu"]
    assert unguarded.mu == unguarded.estimates["nll"]  # the scalar form of the bins
    with pytest.raises(ValueError, match="needs at least 2 confidence bins"):
        choose_strength(stats, ids, objective="binned", bins=0)
    few, few_ids = helpful_stats(n=20)  # 20 answer tokens: not 2 bins of 16
    with pytest.raises(ValueError, match="20 answer tokens"):
        choose_strength(few, few_ids, objective="binned", bins=3)


def test_forced_bins_at_the_search_bound_are_recorded_not_applied():
    stats, ids = split_confidence_stats()
    out = choose_strength(stats, ids, objective="binned", guard=False, bins=2)
    assert -1e4 in out.bins["mu"] and out.mu == 0.0 and out.mu_bins is None and out.objective == "off"
    assert out.guard["unbounded"] and "search bound" in out.guard["reason"]
    assert out.selection is None  # no candidate to cross-validate (not a record of zero gains)


def split_confidence_stats(n=40, vocab=20, seed=0) -> tuple[TokenStats, list[str]]:
    """alpha = 1 keeps only the top token. Confident half: the gold token is the top one, so its
    loss falls without end as mu -> -inf (an unbounded fit); the other half pins the pooled fit."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * n, vocab, generator=gen, dtype=torch.float64)
    top = torch.randint(0, vocab, (2 * n,), generator=gen)
    onehot = torch.nn.functional.one_hot(top, vocab).double()
    za = z + torch.cat([torch.full((n, 1), 8.0), torch.full((n, 1), 2.0)]).double() * onehot
    y = top.clone()
    y[n:] = (top[n:] + 1) % vocab
    stats = token_stats(za, za - 2.0 * onehot, y, alpha=1.0, group=torch.arange(2 * n))
    stats.n_groups = 2 * n
    return stats, [f"q{i}" for i in range(2 * n)]


def test_a_strength_at_the_search_bound_is_never_applied():
    stats, ids = split_confidence_stats()
    confident = stats.take(torch.arange(len(stats)) < 40)
    assert minimise_nll(confident).unbounded and minimise_nll(confident).mu == -1e4
    out = choose_strength(confident, ids[:40], objective="nll", guard=False, bins=0)
    assert out.mu == 0.0 and out.guard["unbounded"] and "search bound" in out.guard["reason"]
    assert out.estimates["nll"] == -1e4  # recorded, not applied
    both = choose_strength(stats, ids, objective="nll", guard=False, bins=2)
    assert both.mu == pytest.approx(minimise_nll(stats).mu) and not minimise_nll(stats).unbounded
    assert -1e4 in both.bins["mu"] and both.bins["applied"] is False and both.mu_bins is None
    assert "search bound" in both.bins["note"]


def test_bins_are_bounded_by_the_tokens():
    stats, ids = helpful_stats(n=60)  # 60 answer tokens: at most 3 bins of 16
    out = choose_strength(stats, ids, objective="nll", guard=False, bins=50)
    assert len(out.bins["mu"]) == 3 and "3 bins of the 50 asked" in out.bins["note"]
    few, few_ids = helpful_stats(n=20)
    assert choose_strength(few, few_ids, objective="nll", guard=False, bins=3).bins is None


# -- through the model ---------------------------------------------------------------------------

CHOICES = [
    ChoiceItem("a", "the correct answer is", (" true", " false"), (1, 0)),
    ChoiceItem("b", "What is the capital of France?", (" Paris", " Rome", " London"), (1, 0, 0)),
    ChoiceItem("c", "Q: 1 2 3?\nA:", (" 4 5", " 9 9"), (0, 1)),
]


def test_old_artifacts_with_an_estimator_load_as_their_objective():
    old = json.loads(
        (Path(__file__).resolve().parents[1] / "fixtures/run_v0/adapter/steering_config.json").read_text()
    )
    assert old["format_version"] == 1 and old["estimator"] == "mean"
    cfg = SteeringConfig.from_json(old, "run_v0")
    assert cfg.objective == "mean" and cfg.mu_bins is None and cfg.mu == old["mu"]
    v2 = {**SteeringConfig().to_json(), "format_version": 2, "estimator": "median"}
    del v2["objective"], v2["mu_bins"]
    assert SteeringConfig.from_json(v2).objective == "median"
    with pytest.raises(Exception, match="'objective'"):
        SteeringConfig.from_json({**SteeringConfig().to_json(), "objective": "mode"})


def test_binned_strengths_reach_decoding(tokenizer):
    model = SteeredModel.from_peft(make_peft("lora", len(tokenizer)), tokenizer, mu=0.0)
    bins = {"observable": "log_max_p_adapted", "edges": [-2.0, -1.0], "mu": [-3.0, 0.5, 2.0]}
    model.steering.mu_bins = bins
    model.steering.validate()
    z_phi, z_theta = torch.randn(6, len(tokenizer)) * 3, torch.randn(6, len(tokenizer)) * 3
    obs = torch.log_softmax(z_phi, -1).amax(-1)
    mu = torch.tensor(bins["mu"])[torch.bucketize(obs, torch.tensor(bins["edges"]), right=True)]
    want = steer_logits(z_phi, z_theta, mu.unsqueeze(-1), alpha=model.steering.alpha)
    assert torch.equal(model.combine(z_phi, z_theta), want)
    bad = dict(bins, mu=[1.0])
    with pytest.raises(Exception, match="mu_bins"):
        SteeringConfig(mu_bins=bad)


BINS = {"observable": "log_max_p_adapted", "edges": [-1.0], "mu": [0.5, -0.5]}


def _saved_with_bins(tokenizer, tmp_path) -> tuple[SteeredModel, Path]:
    """A steered LoRA model with calibrated binned strengths, saved with its base."""
    from conftest import make_model

    base_dir = tmp_path / "base"
    make_model(len(tokenizer), seed=0).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft_model = make_peft("lora", len(tokenizer))
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=0.25)
    model.steering.mu_bins = dict(BINS)
    model.steering.base_model = str(base_dir)
    model.save_pretrained(tmp_path / "s")
    return model, tmp_path / "s"


def test_artifact_round_trips_binned_strengths(tokenizer, tmp_path):
    model, saved = _saved_with_bins(tokenizer, tmp_path)
    loaded = SteeredModel.from_pretrained(saved)
    assert loaded.steering.mu_bins == model.steering.mu_bins
    assert json.loads((saved / CONFIG_NAME).read_text())["mu_bins"]["mu"] == [0.5, -0.5]


def test_a_given_mu_or_alpha_replaces_calibrated_binned_strengths(tokenizer, tmp_path):
    from svdecode.cli import build_parser
    from svdecode.cli.commands import load_model

    _, saved = _saved_with_bins(tokenizer, tmp_path)
    bins = BINS

    def steering(*flags):
        ns = build_parser().parse_args(["generate", "--steered", str(saved), "--prompt", "x", *flags])
        return load_model(ns).steering

    assert steering().mu_bins == bins
    assert steering("--method", "svdecode").mu_bins == bins
    got = steering("--mu", "2.0")
    assert got.mu == 2.0 and got.mu_bins is None
    got = steering("--alpha", "0.3")
    assert got.alpha == 0.3 and got.mu_bins is None
    cfg = SteeringConfig(mu=1.0, mu_bins=bins)
    with pytest.raises(Exception, match="unknown field"):
        cfg.override(strength=1.0)
    assert cfg.mu_bins == bins
