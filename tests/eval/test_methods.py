"""svdecode.eval.methods: the comparison set, each variant calibrated."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from evalkit import (
    CALIB,
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode.calibration.calibrate import calibrate_streams
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


# --------------------------------------------------------------------------------- methods


def test_build_methods_calibrates_each_variant(model):
    names = ["base", "peft", "peft+svdecode", "peft+logit_arith", "no_projection", "no_mask", "alpha=0.3"]
    names += ["lam=-10", "lam=keep", "estimator=median", "estimator=pooled", "decoding=beam4"]
    ms = ev.build_methods(model, CALIB, names, progress=False)
    assert ms.names == [
        "base", "peft", "peft+svdecode", "peft+logit_arith", "no_projection", "no_mask", "alpha=0.3",
        "lam=-10", "lam=keep", "estimator=median", "estimator=pooled", "peft[beam4]", "peft+svdecode[beam4]",
    ]  # fmt: skip
    prompts = [c.prompt for c in CALIB]
    answers = [c.answer for c in CALIB]

    def cal(method, alpha):  # what build_methods does: items' own ids (folds), paper estimator for prob_space
        return calibrate_streams(
            model.streams, model.tokenizer, prompts, answers, alpha=alpha, method=method, progress=False,
            objective="mean" if method == "prob_space" else "nll", ids=[c.id for c in CALIB],
        )  # fmt: skip

    sv = cal("svdecode", 0.1)
    assert ms.get("peft+svdecode").mu == pytest.approx(sv.mu, rel=1e-12)
    assert ms.get("peft+svdecode").method == "svdecode" and ms.get("peft+svdecode").lam == -math.inf
    assert ms.get("peft+svdecode").score_lam is None  # scoring mode by default
    # beta of logit arithmetic: same calibration, logit-difference direction (as SteeredModel.calibrate)
    saved = model.steering
    try:
        model.steering = dataclasses.replace(saved, method="logit_arithmetic")
        beta = model.calibrate(CALIB, progress=False).mu
    finally:
        model.steering = saved
    assert ms.get("peft+logit_arith").mu == pytest.approx(beta, rel=1e-12)
    assert ms.get("no_projection").mu == pytest.approx(cal("prob_space", 0.1).mu, rel=1e-12)
    nm = ms.get("no_mask")
    assert nm.alpha == 0.0 and nm.mu == pytest.approx(cal("svdecode", 0.0).mu, rel=1e-12)
    a3 = ms.get("alpha=0.3")
    assert a3.alpha == 0.3 and a3.mu == pytest.approx(cal("svdecode", 0.3).mu, rel=1e-12)
    assert a3.mu != ms.get("peft+svdecode").mu
    assert ms.get("lam=-10").lam == -10.0 and ms.get("lam=-10").score_lam == -10.0
    assert ms.get("lam=keep").lam is None
    assert ms.get("estimator=median").mu == pytest.approx(sv.stats["estimates"]["median"])
    assert ms.get("estimator=pooled").mu == pytest.approx(sv.stats["estimates"]["pooled"])
    beam = ms.get("peft+svdecode[beam4]")
    assert beam.decoding == {"do_sample": False, "num_beams": 4} and beam.reference == "peft[beam4]"
    assert ms.get("peft[beam4]").method == "adapted"
    assert set(ms.token_mu) == {
        "svdecode@alpha=0.1", "logit_arithmetic@alpha=0.1", "prob_space@alpha=0.1",
        "svdecode@alpha=0", "svdecode@alpha=0.3",
    }  # fmt: skip
    assert ms.token_mu["svdecode@alpha=0.1"].shape == (sv.stats["n_tokens"],)
    # specs survive a JSON round trip
    for spec in ms:
        again = ev.MethodSpec.from_json(json.loads(json.dumps(spec.to_json())))
        assert again.to_json() == spec.to_json()


def test_build_methods_refuses_unknown_and_tad(model):
    with pytest.raises(ValueError, match="not implemented"):
        ev.build_methods(model, CALIB, ["tad"], progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        ev.build_methods(model, CALIB, ["peft+magic"], progress=False)
    with pytest.raises(ValueError, match="calibrat"):
        ev.build_methods(model, None, ["peft+logit_arith"], progress=False)
    assert ev.expand_method_names(["alpha_sweep", "alpha=0.1"]) == [f"alpha={a}" for a in ev.ALPHA_SWEEP]
