"""The steering object (svdecode.steering.steerer): the same logits as the core functions it dispatches to,
validation naming the field, the steering_config.json round trip, per-row batches, the rule
registry, and that a steerer passed for one call never changes the model's own steering."""

from __future__ import annotations

import doctest
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_model
from peft import LoraConfig, get_peft_model

import svdecode.steering.steerer
from svdecode import steering
from svdecode.model.config import METHODS, ConfigError, SteeringConfig
from svdecode.model.steered_model import SteeredModel
from svdecode.steering import RULES, BatchSteerer, Steerer, SteeringError, StrengthBins, register_rule

NEG_INF = float("-inf")
RUN_V0 = Path(__file__).parents[1] / "fixtures" / "run_v0" / "adapter"
BINS = {"observable": "log_max_p_adapted", "edges": [-2.0, -1.0], "mu": [-3.0, 1.5, 0.25]}


def logits(seed: int, shape=(4, 3, 50)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z_phi, z_theta = (torch.randn(*shape, generator=gen) * 3 for _ in range(2))
    z_phi[0, 0, 7] = NEG_INF  # a token the adapted model forbids
    return z_phi, z_theta


def binned_mu(z_phi: torch.Tensor, bins: dict) -> torch.Tensor:
    """Each row's strength from its log max p_phi, written out with comparisons (not bucketize)."""
    obs = torch.log_softmax(z_phi.float(), -1).amax(-1, keepdim=True)
    mu = torch.full_like(obs, bins["mu"][0])
    for edge, value in zip(bins["edges"], bins["mu"][1:], strict=True):
        mu = torch.where(obs >= edge, torch.tensor(value), mu)
    return mu


def direct(z_phi, z_theta, method, mu, alpha, lam):
    """What the if-chain in SteeredModel.combine called for each method."""
    if method == "svdecode":
        return steering.steer_logits(z_phi, z_theta, mu, alpha=alpha, lam=lam)
    if method == "logit_arithmetic":
        return steering.logit_arithmetic(z_phi, z_theta, mu, alpha=alpha, lam=lam)
    if method == "prob_space":
        return steering.steer_logits_prob_space(z_phi, z_theta, mu, alpha=alpha, lam=lam)
    return (z_phi if method == "adapted" else z_theta).float()


def test_docstring_example_runs():
    result = doctest.testmod(svdecode.steering.steerer)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mu", [2.5, -2.5, 0.0, -40.0])
@pytest.mark.parametrize("lam", [None, NEG_INF, -3.0])
@pytest.mark.parametrize("alpha", [0.1, 0.0, 0.5])
def test_steerer_equals_the_core_function_bit_for_bit(method, mu, lam, alpha):
    z_phi, z_theta = logits(0)
    got = Steerer(method, mu, alpha, lam)(z_phi, z_theta)
    assert got.dtype == torch.float32
    assert torch.equal(got, direct(z_phi, z_theta, method, mu, alpha, lam))


@pytest.mark.parametrize("method", [m for m in METHODS if RULES[m].binned])
@pytest.mark.parametrize("lam", [None, NEG_INF])
def test_binned_strengths_equal_the_core_function_with_per_row_mu(method, lam):
    z_phi, z_theta = logits(1)
    mu = binned_mu(z_phi, BINS)
    assert len(set(mu.flatten().tolist())) > 1  # the rows really fall into different bins
    got = Steerer(method, 0.0, 0.1, lam, BINS)(z_phi, z_theta)
    assert torch.equal(got, direct(z_phi, z_theta, method, mu, 0.1, lam))


def test_model_combine_is_its_steerer_and_follows_the_config(tokenizer):
    base = make_model(len(tokenizer))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=-2.0)
    z_phi, z_theta = logits(2, (2, 5, len(tokenizer)))
    assert model.steerer == Steerer("svdecode", -2.0, 0.1, NEG_INF)
    assert torch.equal(model.combine(z_phi, z_theta), steering.steer_logits(z_phi, z_theta, -2.0))
    model.steering.mu, model.steering.lam = 3.0, None  # users set the config; the steerer follows
    assert torch.equal(model.combine(z_phi, z_theta), steering.steer_logits(z_phi, z_theta, 3.0, lam=None))
    model.steering.override(method="prob_space", mu=0.5)
    assert model.steerer == Steerer("prob_space", 0.5, 0.1, None)


BAD = [
    ({"method": "tad"}, "method", "svdecode, prob_space"),
    ({"method": None}, "method", "must be one of"),
    ({"mu": float("nan")}, "mu", "finite"),
    ({"mu": float("inf")}, "mu", "finite"),
    ({"mu": 1e39}, "mu", "at most 1e+30"),  # finite in float64, not in fp32
    ({"mu": -1.0000001e30}, "mu", "at most 1e+30"),
    ({"mu": "1.0"}, "mu", "'1.0'"),
    ({"mu": True}, "mu", "True"),
    ({"alpha": -0.1}, "alpha", "[0, 1]"),
    ({"alpha": 1.5}, "alpha", "[0, 1]"),
    ({"alpha": float("nan")}, "alpha", "[0, 1]"),
    ({"lam": float("nan")}, "lam", "-inf, a finite number or None"),
    ({"lam": float("inf")}, "lam", "-inf, a finite number or None"),
    ({"lam": "-inf"}, "lam", "'-inf'"),  # the JSON spelling is for from_json, not the constructor
    ({"mu_bins": {**BINS, "mu": [1.0, 2.0]}}, "mu_bins", "one more strength than edges"),
    ({"mu_bins": {**BINS, "edges": [-1.0, -2.0]}}, "mu_bins", "increasing"),
    ({"mu_bins": {**BINS, "edges": [-2.0, float("nan")]}}, "mu_bins", "finite"),
    ({"mu_bins": {**BINS, "mu": [1.0, 2.0, 1e31]}}, "mu_bins", "at most 1e+30"),
    ({"mu_bins": {**BINS, "observable": "entropy"}}, "mu_bins", "log_max_p_adapted"),
    ({"mu_bins": {"edges": [], "mu": [1.0]}}, "mu_bins", "observable"),
    ({"method": "prob_space", "mu_bins": BINS}, "mu_bins", "takes no binned strengths"),
]


@pytest.mark.parametrize(("kwargs", "field", "words"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_construction_errors_name_the_field(kwargs, field, words):
    with pytest.raises(SteeringError) as info:
        Steerer(**kwargs)
    assert info.value.field == field
    assert f"steering field {field!r}" in str(info.value) and words in str(info.value)
    assert isinstance(info.value, ValueError)


def test_the_strength_bound_keeps_every_step_finite():
    """|mu| <= MAX_STRENGTH with logits spread over 2e7 (far beyond any model's): no overflow."""
    assert steering.check_strength(-steering.MAX_STRENGTH) == -steering.MAX_STRENGTH
    with pytest.raises(ValueError, match="^--mu must be a finite number of magnitude at most 1e"):
        steering.check_strength(1e39, "--mu")
    z_phi, z_theta = logits(3)
    z_phi, z_theta = z_phi.clamp_min(-30) * 1e6 / 3, z_theta * 1e6 / 3
    for method in ("svdecode", "logit_arithmetic", "prob_space"):
        for mu in (steering.MAX_STRENGTH, -steering.MAX_STRENGTH):
            for lam in (None, -5.0):
                out = Steerer(method, mu, 0.0 if lam is None else 0.5, lam)(z_phi, z_theta)
                assert not torch.isnan(out).any() and not torch.isposinf(out).any(), (method, mu, lam)
                if method != "prob_space":  # its clipped tokens get -inf by design
                    assert torch.isfinite(out).all(), (method, mu, lam)
    # a per-row strength tensor past the bound is refused by the core functions too
    with pytest.raises(ValueError, match="steering strength must be a finite number"):
        steering.steer_logits(z_phi, z_theta, torch.tensor([[1.0], [1e31], [0.0], [0.0]]).unsqueeze(-1))


@pytest.mark.parametrize("lam", [None, NEG_INF, -10.0])
@pytest.mark.parametrize("bins", [None, BINS])
def test_json_round_trip(lam, bins):
    steer = Steerer("svdecode", -1.25, 0.2, lam, bins)
    data = json.loads(json.dumps(steer.to_json(), allow_nan=False))  # standard JSON, no Infinity
    assert Steerer.from_json(data) == steer
    assert data["lam"] == {None: None, NEG_INF: "-inf"}.get(lam, lam)
    assert data["mu_bins"] == bins
    # the decoding fields are exactly what SteeringConfig writes into steering_config.json
    cfg = SteeringConfig(mu=-1.25, alpha=0.2, lam=lam, mu_bins=bins)
    assert {k: cfg.to_json()[k] for k in data} == data and cfg.steerer == steer


def test_bins_in_json_form_and_as_an_object_are_the_same_steerer():
    as_object = Steerer("svdecode", 0.0, 0.1, NEG_INF, StrengthBins((-2, -1), (-3, 1.5, 0.25)))
    assert as_object == Steerer("svdecode", 0.0, 0.1, NEG_INF, BINS)
    assert as_object.mu_bins.to_json() == BINS and hash(as_object) == hash(Steerer(mu_bins=BINS))


def test_old_artifacts_give_their_steerer():
    raw = json.loads((RUN_V0 / "steering_config.json").read_text())
    steer = SteeringConfig.load(RUN_V0).steerer
    assert steer == Steerer.from_json(raw)
    assert (steer.method, steer.mu, steer.alpha) == (raw["method"], raw["mu"], raw["alpha"])


def test_config_refuses_what_the_steerer_refuses(tmp_path):
    with pytest.raises(ConfigError, match="steering settings: steering field 'mu'"):
        SteeringConfig(mu=1e39)
    cfg = SteeringConfig()
    cfg.save(tmp_path)
    data = json.loads((tmp_path / "steering_config.json").read_text())
    (tmp_path / "steering_config.json").write_text(json.dumps({**data, "mu": 1e39}))
    with pytest.raises(ConfigError, match=r"steering_config.json: steering field 'mu'.*at most 1e\+30"):
        SteeringConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="'mu'"):
        cfg.override(mu=-2e30)


def test_a_rule_that_takes_no_bins_uses_mu_when_the_config_keeps_them():
    """override(method="prob_space") leaves the calibrated bins recorded; prob_space uses mu (as
    SteeredModel.combine did), while a Steerer built with bins for it is refused."""
    cfg = SteeringConfig(mu=0.5, mu_bins=BINS)
    cfg.override(method="prob_space")
    assert cfg.mu_bins == BINS and cfg.steerer == Steerer("prob_space", 0.5, 0.1, NEG_INF)


def test_batch_of_per_row_steerers_equals_each_row_alone():
    z_phi, z_theta = logits(4, (7, 2, 40))
    rows = [
        Steerer("svdecode", -4.0),
        Steerer("svdecode", 2.5),
        Steerer("adapted"),
        Steerer("base"),
        Steerer("svdecode", -1.0, 0.3, None),
        Steerer("logit_arithmetic", 0.5),
        Steerer("svdecode", 0.0, 0.1, NEG_INF, BINS),
    ]
    got = BatchSteerer(rows)(z_phi, z_theta)
    for i, row in enumerate(rows):
        torch.testing.assert_close(
            got[i : i + 1], row(z_phi[i : i + 1], z_theta[i : i + 1]), rtol=0, atol=1e-6
        )
    assert torch.equal(BatchSteerer([rows[1]] * 7)(z_phi, z_theta), rows[1](z_phi, z_theta))
    with pytest.raises(ValueError, match="2 row settings for a batch of 7 rows"):
        BatchSteerer(rows[:2])(z_phi, z_theta)


def test_a_new_rule_is_one_registry_entry():
    @register_rule("flip", "test rule: the base model's logits, negated", strength=False)
    def flip(z_phi, z_theta, mu, alpha, lam):
        return -z_theta.float()

    try:
        z_phi, z_theta = logits(5)
        assert torch.equal(Steerer("flip")(z_phi, z_theta), -z_theta)
        with pytest.raises(ValueError, match="already registered"):
            register_rule("flip", "again")(flip)
    finally:
        del RULES["flip"]
    assert set(RULES) == set(METHODS) == {"svdecode", "prob_space", "logit_arithmetic", "adapted", "base"}


def test_the_command_line_offers_every_rule():
    """The parser stays light (no torch), so it lists the rules itself; it must list them all."""
    from svdecode.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["generate"]
    (method,) = [a for a in sub._actions if a.dest == "method"]
    assert tuple(method.choices) == tuple(RULES)


def test_a_steerer_for_one_call_leaves_the_model_unchanged(tokenizer):
    """score/generate_text with steering= use it for that call only; a leak would change the
    model's steerer or its next default output."""
    base = make_model(len(tokenizer))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    model = SteeredModel.from_peft(peft_model, tokenizer, mu=-4.0)
    own = model.steerer
    prompts, answers = ["the correct answer is"] * 2, [" true", " answer1 answer2"]
    gen = dict(max_new_tokens=6, do_sample=False)
    texts, scores = model.generate_text(prompts, **gen), model.score(prompts, answers)
    other = own.replace(mu=30.0, lam=None)
    other_texts = model.generate_text(prompts, steering=other, **gen)
    other_scores = model.score(prompts, answers, steering=other)
    assert model.steerer == own and model.steering.mu == -4.0 and model.steering.lam == NEG_INF
    assert model.generate_text(prompts, **gen) == texts != other_texts
    assert all(torch.equal(a, b) for a, b in zip(model.score(prompts, answers), scores, strict=True))
    # and the explicit steerer is the one that decoded: the same as setting it on the model
    model.steering.override(mu=30.0)
    model.steering.lam = None
    assert model.generate_text(prompts, **gen) == other_texts
    assert all(torch.equal(a, b) for a, b in zip(model.score(prompts, answers), other_scores, strict=True))
    assert not math.isclose(float(other_scores[0].sum()), float(scores[0].sum()))
