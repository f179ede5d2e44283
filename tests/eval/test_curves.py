"""svdecode.eval.curves: one scoring pass gives every strength's MC average."""

from __future__ import annotations

import math

import pytest
from evalkit import (
    CALIB,
    MC_ITEMS,
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode.eval.curves import mu_curve
from svdecode.eval.methods import MethodSet, MethodSpec
from svdecode.eval.tables import curve_table_rows
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


def test_mu_curve_marks_equal_direct_scoring_and_headroom_is_oracle(tmp_path, model):
    """One scoring pass gives every strength: each marked objective's MC average on the curve equals
    evaluate_mc's direct per-method scoring, and mu = 0 equals the PEFT model."""
    names = ["peft", "peft+svdecode", "objective=nll", "objective=pooled", "objective=mean"]
    res = ev.run_eval(
        model, tmp_path, ["truthfulqa_mc"], method_names=names, calib=CALIB, data={"truthfulqa_mc": MC_ITEMS},
        batch_size=4, mc_prompt_style="plain", n_boot=200, progress=False, folds=2,
    )["tasks"]["truthfulqa_mc"]  # fmt: skip
    curve = res["mu_curve"]
    assert curve["stats_capped_tokens"] == 0 and curve["n_items"] == len(MC_ITEMS)

    def mc_avg(name):
        return sum(
            (
                lambda r: (
                    sum(
                        0.0 if math.isnan(ev.as_float(r[k])) else ev.as_float(r[k])
                        for k in ("MC1", "MC2", "MC3")
                    )
                    / 3
                )
            )(r)
            for r in res["items"][name]
        ) / len(MC_ITEMS)

    assert curve["at_zero"] == pytest.approx(mc_avg("peft"), abs=1e-6)
    estimates = res["methods"]["peft+svdecode"]["calibration"]["estimates"]
    candidates = res["methods"]["peft+svdecode"]["calibration"]["selection"]["candidates"]
    binned = {"objective=binned"} if "binned" in candidates else set()
    assert set(curve["marks"]) == (set(names) - {"peft"}) | {f"objective={o}" for o in estimates} | binned
    for name, mark in curve["marks"].items():
        if name == "objective=binned":  # tested below
            continue
        if name not in res["methods"]:  # an objective marked from the calibration's estimates alone
            assert mark["mu"] == estimates[mark["objective"]]
            continue
        assert mark["mu"] == res["methods"][name]["mu"]
        assert mark["test"] == pytest.approx(mc_avg(name), abs=1e-6)
    assert curve["best"] == max(curve["test"]) and curve["headroom"] == pytest.approx(
        curve["best"] - curve["at_zero"]
    )
    cal = curve["calibration"]  # these calibration examples have no choice view: NLL only
    assert cal["mu"] and len(cal["nll_per_token"]) == len(cal["mu"]) and "task" not in cal
    assert "ORACLE" in curve["oracle"]


def test_the_binned_candidate_is_marked_on_the_curve_unless_it_is_applied(model):
    """The confidence-binned candidate gets its own test value (as each objective does); where it
    is applied, the main mark is it."""
    bins = {"observable": "log_max_p_adapted", "edges": [-2.5, -1.5], "mu": [-200.0, 50.0, 200.0]}
    cal = {
        "estimates": {"nll": 0.5},
        "bins": {**bins, "applied": False},
        "selection": {"candidates": {"binned": {"mu": bins["mu"]}}},
    }
    off = MethodSpec("peft+svdecode", "svdecode", mu=0.0, calibration=cal, estimator="off")
    on = MethodSpec("peft+svdecode", "svdecode", mu=0.5, calibration=cal, estimator="binned", mu_bins=bins)
    kw = dict(mc_prompt_style="plain", progress=False, n_boot=100)
    marks_off = mu_curve(model, "truthfulqa_mc", MC_ITEMS, MethodSet([off]), **kw)["marks"]
    marks_on = mu_curve(model, "truthfulqa_mc", MC_ITEMS, MethodSet([on]), **kw)["marks"]
    mark = marks_off["objective=binned"]
    assert mark["binned"] and mark["objective"] == "binned" and "objective=binned" not in marks_on
    assert mark["test"] == pytest.approx(marks_on["peft+svdecode"]["test"], abs=1e-12)
    assert mark["mu"] == 0.5 and marks_off["objective=nll"]["binned"] is False
    assert mark["mu_bins"] == bins["mu"] and marks_off["objective=nll"]["mu_bins"] is None
    assert [row[2] for row in curve_table_rows({"marks": {"b": mark}})] == [bins["mu"]]  # shown as bins
    no_candidate = {**cal, "selection": {"candidates": {}}}  # bins at the search bound: no candidate
    off_only = MethodSpec("peft+svdecode", "svdecode", calibration=no_candidate, estimator="off")
    assert (
        "objective=binned"
        not in mu_curve(model, "truthfulqa_mc", MC_ITEMS, MethodSet([off_only]), **kw)["marks"]
    )
