"""svdecode.eval.truthfulqa_mc: shared-logit MC scoring equals per-method scoring; the prompt formats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from evalkit import (
    CALIB,
    MC_ITEMS,
    _flat_pairs,
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode.eval import metrics
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


# --------------------------------------------------------------------------------- TruthfulQA MC


def test_mc_shared_logits_equal_per_method_score(model):
    names = [
        "base",
        "peft",
        "peft+svdecode",
        "peft+logit_arith",
        "no_projection",
        "no_mask",
        "lam=-10",
        "lam=-inf",
    ]
    ms = ev.build_methods(model, CALIB, [*names, "decoding=top_k50"], progress=False)
    calls = []
    forward = model.streams.forward
    model.streams.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        res = ev.evaluate_mc(model, MC_ITEMS, list(ms), batch_size=5, prompt_style="plain", progress=False)
    finally:
        del model.streams.forward
    prompts, answers, owners = _flat_pairs(MC_ITEMS, "plain")
    # one model pass per batch of pairs, shared by all eight methods
    assert len(calls) == res["model_passes"] == math.ceil(len(prompts) / 5)
    assert set(res["skipped_methods"]) == {"peft[top_k50]", "peft+svdecode[top_k50]"}
    per_method = {}
    for spec in ms:
        if spec.name not in names:
            continue
        toks = model.score(prompts, answers, batch_size=5, steering=spec.steerer(scoring=True))
        expected = {own: float(t.double().sum()) for own, t in zip(owners, toks, strict=True)}
        per_method[spec.name] = expected
        for it, rec in zip(MC_ITEMS, res["items"][spec.name], strict=True):
            assert rec["id"] == it.id
            got1 = [ev.as_float(x) for x in rec["mc1_scores"]]
            got2 = [ev.as_float(x) for x in rec["mc2_scores"]]
            assert got1 == [expected[(it.id, c)] for c in it.mc1_choices]  # exactly equal
            assert got2 == [expected[(it.id, c)] for c in it.mc2_choices]
            t1 = [s for s, lab in zip(got1, it.mc1_labels, strict=True) if lab]
            f1 = [s for s, lab in zip(got1, it.mc1_labels, strict=True) if not lab]
            t2 = [s for s, lab in zip(got2, it.mc2_labels, strict=True) if lab]
            f2 = [s for s, lab in zip(got2, it.mc2_labels, strict=True) if not lab]
            want = metrics.mc_scores(t1[0], f1, t2, f2)
            for k in ("MC1", "MC3"):
                assert rec[k] == want[k]
            assert ev.as_float(rec["MC2"]) == pytest.approx(want["MC2"], nan_ok=True)
        agg = res["metrics"][spec.name]
        assert agg["n"] == 3
        assert agg["MC1"]["mean"] == pytest.approx(np.mean([r["MC1"] for r in res["items"][spec.name]]))
    # the scoring mode is recorded with every result
    assert res["metrics"]["peft+svdecode"]["lam"] == "keep"
    assert res["metrics"]["lam=-10"]["lam"] == -10.0
    assert res["metrics"]["lam=-inf"]["lam"] == "-inf"
    assert res["items"]["peft+svdecode"][0]["lam"] == "keep"
    assert res["metrics"]["peft"]["lam"] == "n/a"
    # the methods really differ: base != peft != steered
    key = owners[0]
    assert per_method["base"][key] != per_method["peft"][key] != per_method["peft+svdecode"][key]
    # with lam=-inf some answer token falls outside the mask, which is why scoring uses "keep"
    assert any(v == -math.inf for v in per_method["lam=-inf"].values())
    assert all(math.isfinite(v) for v in per_method["peft+svdecode"].values())


def test_mc_primer_prompt_is_the_original_truthfulqa_format():
    p = ev.mc_prompt("Why?", "qa_primer")
    assert p.startswith("Q: What is human life expectancy in the United States?\nA: Human life expectancy")
    assert p.endswith("A: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: Why?\nA:")
    assert ev.mc_prompt("Why?", "plain") == "Q: Why?\nA:"
    with pytest.raises(ValueError):
        ev.mc_prompt("Why?", "chat")
