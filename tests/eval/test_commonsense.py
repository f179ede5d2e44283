"""svdecode.eval.commonsense: generation, label parsing and confidence intervals."""

from __future__ import annotations

import pytest
from evalkit import (
    CALIB,
    CS_EXAMPLES,
    _one_thread,  # noqa: F401 (autouse fixture)
    make_steered,
)

from svdecode import eval as ev
from svdecode.eval import generation, labels, metrics
from svdecode.model.steered_model import SteeredModel


@pytest.fixture(scope="module")
def model() -> SteeredModel:
    return make_steered()


# --------------------------------------------------------------------------------- commonsense


@pytest.mark.compat
def test_commonsense_generation_matches_model_paths(model):
    ms = ev.build_methods(model, CALIB, ["base", "peft", "peft+svdecode"], progress=False)
    res = ev.evaluate_commonsense(
        model, CS_EXAMPLES, list(ms), batch_size=2, max_new_tokens=6, progress=False
    )
    prompts = [ex.prompt for ex in CS_EXAMPLES]
    for spec in ms:
        # steered generation through SteeredModel; base/peft through the plain PEFT model, which
        # must give what the steered wrapper gives with method "base"/"adapted"
        want = model.generate_text(
            prompts, batch_size=2, max_new_tokens=6, do_sample=False, steering=spec.steerer()
        )
        recs = res["items"][spec.name]
        assert [r["output"] for r in recs] == want
        assert [r["id"] for r in recs] == [ex.id for ex in CS_EXAMPLES]
        for r, ex in zip(recs, CS_EXAMPLES, strict=True):
            assert r["pred"] == labels.extract_label(ex.dataset, r["output"])
            assert r["correct"] == int(r["pred"] == ex.label)
        m = res["metrics"][spec.name]
        assert m["datasets"]["boolq"]["n"] == 3 and m["datasets"]["piqa"]["n"] == 2
        assert m["unparseable"] == sum(labels.extract_label(r["dataset"], r["output"]) is None for r in recs)
    outs = {name: [r["output"] for r in res["items"][name]] for name in ("base", "peft")}
    assert outs["base"] != outs["peft"]


def test_commonsense_counts_unparseable_and_cis(model, monkeypatch):
    scripted = {
        "boolq/test/0": "the correct answer is true",  # correct
        "boolq/test/1": "the correct answer is true",  # wrong
        "boolq/test/2": "True or false, I cannot say",  # ambiguous -> unparseable
        "piqa/test/0": "hmm",  # no label -> unparseable
        "piqa/test/1": "the correct answer is Solution2.",  # correct (case-insensitive)
    }

    def fake_generate(model_, spec, prompts, ids, *a, **k):
        yield slice(0, len(ids)), [scripted[i] for i in ids]

    monkeypatch.setattr(generation, "generate_batches", fake_generate)
    res = ev.evaluate_commonsense(model, CS_EXAMPLES, [ev.MethodSpec("peft", "adapted")], progress=False)
    recs = res["items"]["peft"]
    assert [r["correct"] for r in recs] == [1, 0, 0, 0, 1]
    assert [r["pred"] for r in recs] == ["true", "true", None, None, "solution2"]
    m = res["metrics"]["peft"]
    b, p = m["datasets"]["boolq"], m["datasets"]["piqa"]
    assert (b["n"], b["correct"], b["unparseable"], b["ambiguous"]) == (3, 1, 1, 1)
    assert (p["n"], p["correct"], p["unparseable"], p["no_label"]) == (2, 1, 1, 1)
    assert (b["ci_lo"], b["ci_hi"]) == pytest.approx(metrics.wilson_ci(1, 3))
    assert m["unparseable"] == 2
    assert m["macro_avg"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert m["micro"]["accuracy"] == pytest.approx(2 / 5)
    assert (m["micro"]["ci_lo"], m["micro"]["ci_hi"]) == pytest.approx(metrics.wilson_ci(2, 5))
