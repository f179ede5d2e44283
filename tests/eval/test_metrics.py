"""Tests for svdecode.eval.metrics and .labels: hand-computed values, edge cases (ties, -inf, underflow), determinism."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from svdecode.eval.labels import LABEL_SETS, accuracy_report, canonical_dataset, extract_label
from svdecode.eval.metrics import (
    PAPER_VARIANTS,
    aggregate_mc,
    bootstrap_ci,
    mc1,
    mc2,
    mc3,
    mc_scores,
    paired_bootstrap,
    paper_variants,
    parse_yes_no,
    similarity_judge,
    truth_info_summary,
    wilson_ci,
)

NEG_INF = float("-inf")

# --------------------------------------------------------------------------- TruthfulQA MC


def test_mc1_hand_computed():
    assert mc1(0.0, [-1.0, -2.0]) == 1.0
    assert mc1([-3.0], [-1.0, -5.0]) == 0.0
    assert mc1(-1.0, [-1.0, -3.0]) == 0.0  # tie is not a win


def test_mc1_neg_inf():
    assert mc1(NEG_INF, [NEG_INF, NEG_INF]) == 0.0  # -inf vs -inf is a tie
    assert mc1(-5.0, [NEG_INF, NEG_INF]) == 1.0
    assert mc1(NEG_INF, [-3.0]) == 0.0


def test_mc1_needs_exactly_one_true():
    with pytest.raises(ValueError):
        mc1([-1.0, -2.0], [-3.0])


def test_mc2_hand_computed():
    assert mc2([math.log(0.2), math.log(0.3)], [math.log(0.5)]) == pytest.approx(0.5)
    assert mc2([-3.0, -3.0], [-3.0]) == pytest.approx(2.0 / 3.0)
    assert mc2([math.log(0.1)], [math.log(0.1), math.log(0.2)]) == pytest.approx(0.25)


def test_mc2_no_underflow():
    true, false = [-800.0], [-801.0]
    # The naive formula underflows to 0/0 here ...
    with np.errstate(invalid="ignore"):
        naive = np.exp(true).sum() / (np.exp(true).sum() + np.exp(false).sum())
    assert math.isnan(naive)
    # ... the log-space one gives 1 / (1 + e^-1).
    assert mc2(true, false) == pytest.approx(1.0 / (1.0 + math.exp(-1.0)), rel=1e-12)
    # Scores far apart within a group: no log(0) error.
    assert mc2([-2000.0, -3.0], [-1.0]) == pytest.approx(1.0 / (1.0 + math.exp(2.0)), rel=1e-12)
    assert mc2([-2000.0], [-1.0]) == pytest.approx(0.0, abs=1e-300)


def test_mc2_neg_inf():
    assert mc2([NEG_INF], [-1.0]) == 0.0
    assert mc2([-1.0], [NEG_INF]) == 1.0
    assert mc2([NEG_INF, math.log(0.25)], [math.log(0.75), NEG_INF]) == pytest.approx(0.25)
    assert math.isnan(mc2([NEG_INF], [NEG_INF]))  # no mass at all: undefined


def test_mc3_hand_computed():
    # max false = -2; only -1 is strictly above it (the -2 tie does not count).
    assert mc3([-1.0, -2.0, -3.0], [-2.5, -2.0]) == pytest.approx(1.0 / 3.0)
    assert mc3([-1.0, -0.5], [-4.0]) == 1.0
    assert mc3([NEG_INF, -1.0], [NEG_INF]) == 0.5
    assert mc3([NEG_INF], [NEG_INF]) == 0.0


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], []])
def test_mc_rejects_bad_scores(bad):
    for fn in (mc2, mc3):
        with pytest.raises(ValueError):
            fn(bad, [-1.0])
        with pytest.raises(ValueError):
            fn([-1.0], bad)


def test_mc_scores_uses_the_right_sets():
    s = mc_scores(-1.0, [-2.0], [math.log(0.2), -10.0], [math.log(0.5)])
    assert s["MC1"] == 1.0
    assert s["MC2"] == pytest.approx((0.2 + math.exp(-10)) / (0.7 + math.exp(-10)))
    assert s["MC3"] == 0.0  # neither mc2 true answer beats log(0.5)


def test_paper_variants_swap():
    s = {"MC1": 0.1, "MC2": 0.2, "MC3": 0.3}
    p = paper_variants(s)
    assert p == {"paper_MC1": 0.1, "paper_MC2": 0.3, "paper_MC3": 0.2}
    assert PAPER_VARIANTS["paper_MC2"] == "MC3" and PAPER_VARIANTS["paper_MC3"] == "MC2"


def test_aggregate_mc():
    qs = [
        {"MC1": 1.0, "MC2": 0.8, "MC3": 0.5},
        {"MC1": 0.0, "MC2": 0.4, "MC3": 0.0},
        {"MC1": 1.0, "MC2": float("nan"), "MC3": 1.0},
    ]
    agg = aggregate_mc(qs, n_boot=500)
    assert agg["n"] == 3 and agg["n_mc2_undefined"] == 1
    assert agg["MC1"]["mean"] == pytest.approx(2 / 3)
    assert agg["MC2"]["mean"] == pytest.approx((0.8 + 0.4 + 0.0) / 3)
    assert agg["MC3"]["mean"] == pytest.approx(0.5)
    assert agg["MC_avg"]["mean"] == pytest.approx((2 / 3 + 0.4 + 0.5) / 3)
    for k in ("MC1", "MC2", "MC3", "MC_avg"):
        assert agg[k]["lo"] <= agg[k]["mean"] <= agg[k]["hi"]
    assert paper_variants(agg)["paper_MC2"] is agg["MC3"]


# --------------------------------------------------------------------------- label extraction


@pytest.mark.parametrize(
    ("dataset", "text", "expected"),
    [
        ("social_i_qa", "The correct answer is answer1", "answer1"),
        ("ARC-Challenge", "The correct answer is answer10", None),  # not answer1
        ("boolq", "untrue", None),
        ("boolq", "True.", "true"),
        ("boolq", "the correct answer is false", "false"),
        ("boolq", "true or false", None),
        ("social_i_qa", "answer1 or answer2", None),
        ("social_i_qa", "answer2 ... as I said, answer2", "answer2"),  # same label twice is fine
        ("social_i_qa", "ANSWER3", "answer3"),
        ("social_i_qa", "the correct answer is answer4", None),  # outside SIQA's answer1-3
        ("winogrande", "the correct answer is option2", "option2"),
        ("social_i_qa", "the correct answer is option2", None),
        ("piqa", "the correct\nanswer is\nsolution2\n", "solution2"),
        ("piqa", "solution1\nsolution2", None),
        ("hellaswag", "ending4.", "ending4"),
        ("hellaswag", "ending5", None),
        ("openbookqa", "answer5", None),
        ("ARC-Easy", "answer5", "answer5"),
        ("ARC-Challenge", "answer5", None),
        ("boolq", "", None),
        ("winogrande", "option 1", None),
        ("winogrande", "option1a", None),
    ],
)
def test_extract_label_strict(dataset, text, expected):
    assert extract_label(dataset, text) == expected


def test_extract_label_first_mode_is_llm_adapters():
    # LLM-Adapters' rule: case-sensitive substring, first hit (documented pitfalls).
    assert extract_label("ARC-Challenge", "answer10", mode="first") == "answer1"
    assert extract_label("boolq", "True.", mode="first") is None
    assert extract_label("boolq", "untrue", mode="first") == "true"
    assert extract_label("social_i_qa", "answer1 or answer2", mode="first") == "answer1"
    with pytest.raises(ValueError):
        extract_label("boolq", "true", mode="loose")  # type: ignore[arg-type]


def test_dataset_names_and_label_sets():
    assert canonical_dataset("arc_easy") == "ARC-Easy"
    assert canonical_dataset("ARC Challenge") == "ARC-Challenge"
    assert canonical_dataset("SIQA") == "social_i_qa"
    assert canonical_dataset("OBQA") == "openbookqa"
    assert LABEL_SETS["social_i_qa"] == ("answer1", "answer2", "answer3")
    with pytest.raises(ValueError):
        canonical_dataset("mmlu")
    assert extract_label("x", "answer7", labels=[f"answer{i}" for i in range(1, 9)]) == "answer7"


def test_extract_label_matches_data_golds():
    """Every gold output string of the shipped data must parse to its own label."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "shared" / "data" / "commonsense"
    if not root.exists():
        root = Path("/work/shared/data/commonsense")
    if not root.exists():
        pytest.skip("shared data not available")
    checked = 0
    for name in LABEL_SETS:
        for fname in ("test.json", "test_sample.json"):
            f = root / name / fname
            if f.exists():
                rows = json.loads(f.read_text())[:200]
                for r in rows:
                    assert extract_label(name, r["output"]) == r["answer"].lower(), (name, r["output"])
                    checked += 1
    assert checked > 0


def test_accuracy_report():
    golds = ["answer1", "answer2", "answer3", "answer1", "answer2"]
    preds = [
        "the correct answer is answer1",
        "answer1 or answer2",
        "ANSWER3",
        "answer4",
        "I do not know",
    ]
    r = accuracy_report(golds, preds, "social_i_qa")
    assert (r["n"], r["correct"], r["unparseable"]) == (5, 2, 3)
    assert (r["ambiguous"], r["invalid"], r["no_label"]) == (1, 1, 1)
    assert r["accuracy"] == pytest.approx(0.4)
    assert r["ci_lo"] < 0.4 < r["ci_hi"]
    assert r["item_correct"] == [1, 0, 1, 0, 0]
    assert r["preds"] == ["answer1", None, "answer3", None, None]
    assert r["accuracy_first_match"] == pytest.approx(0.2)  # only item 0 under LLM-Adapters' rule
    with pytest.raises(ValueError):
        accuracy_report(["answer9"], ["answer1"], "social_i_qa")
    with pytest.raises(ValueError):
        accuracy_report(["answer1"], [], "social_i_qa")


# --------------------------------------------------------------------------- confidence intervals


def test_wilson_known_values():
    lo, hi = wilson_ci(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.72247, abs=1e-4)
    assert wilson_ci(0, 0) == (0.0, 1.0)
    w95, w99 = wilson_ci(30, 60), wilson_ci(30, 60, conf=0.99)
    assert w99[0] < w95[0] and w99[1] > w95[1]
    with pytest.raises(ValueError):
        wilson_ci(5, 4)


def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(1)
    small, big = rng.random(50), rng.random(5000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_b, hi_b = bootstrap_ci(big)
    assert lo_s <= small.mean() <= hi_s and lo_b <= big.mean() <= hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 5
    # Width close to the normal-theory 2 * 1.96 * sd / sqrt(n).
    lo_b, hi_b = bootstrap_ci(big, n_boot=10000)
    assert (hi_b - lo_b) == pytest.approx(2 * 1.96 * big.std() / math.sqrt(big.size), rel=0.05)


def test_bootstrap_deterministic():
    x = np.random.default_rng(2).random(200)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    assert bootstrap_ci([0.3]) == pytest.approx((0.3, 0.3))
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, float("nan")])


def test_paired_bootstrap_identical():
    a = np.random.default_rng(3).random(100)
    r = paired_bootstrap(a, a.copy(), n_boot=1000)
    assert r["diff"] == 0.0 and r["lo"] == 0.0 and r["hi"] == 0.0
    assert r["p_value"] == 1.0


def test_paired_bootstrap_shift_and_determinism():
    a = np.random.default_rng(4).random(300)
    r = paired_bootstrap(a, a + 0.25, n_boot=1000)
    assert r["diff"] == pytest.approx(0.25)
    assert r["lo"] == pytest.approx(0.25) and r["hi"] == pytest.approx(0.25)
    assert r["p_value"] <= 2.0 / 1001
    neg = paired_bootstrap(a + 0.25, a, n_boot=1000)
    assert neg["diff"] == pytest.approx(-0.25)
    b = a + np.random.default_rng(5).normal(0.05, 0.2, a.size)
    r1, r2 = paired_bootstrap(a, b, seed=11), paired_bootstrap(a, b, seed=11)
    assert r1 == r2
    assert r1["lo"] < r1["diff"] < r1["hi"]
    assert r1["diff"] == pytest.approx(b.mean() - a.mean())
    with pytest.raises(ValueError):
        paired_bootstrap(a, a[:-1])


def test_paired_bootstrap_is_paired():
    """Per-item noise shared by both methods cancels: the paired CI is far tighter than the spread."""
    rng = np.random.default_rng(6)
    difficulty = rng.normal(0, 1, 500)
    a = difficulty
    b = difficulty + 0.1 + rng.normal(0, 0.05, 500)
    r = paired_bootstrap(a, b)
    assert 0.09 < r["lo"] < r["hi"] < 0.11
    assert r["p_value"] < 0.01


def test_bootstrap_speed():
    x = np.random.default_rng(7).random(1000)
    t0 = time.perf_counter()
    paired_bootstrap(x, x[::-1].copy(), n_boot=10000)
    assert time.perf_counter() - t0 < 10.0


# --------------------------------------------------------------------------- proxy judge & judges


def test_similarity_judge():
    for mod in ("sacrebleu", "rouge_score"):
        pytest.importorskip(
            mod, reason="the proxy judge's metrics need the harness extra: pip install 'svdecode[harness]'"
        )
    true_refs = ["The sky is blue because of Rayleigh scattering.", "Rayleigh scattering makes it blue."]
    false_refs = ["The sky is blue because it reflects the ocean.", "The sky reflects the sea."]
    good = similarity_judge(true_refs[0], true_refs, false_refs)
    assert good["bleu_max_true"] == pytest.approx(100.0)
    assert good["bleu_diff"] > 0 and good["bleu_acc"] is True
    assert good["rougeL_max_true"] == pytest.approx(100.0)
    assert good["rougeL_diff"] > 0 and good["rougeL_acc"] is True
    bad = similarity_judge(false_refs[0], true_refs, false_refs)
    assert bad["bleu_diff"] < 0 and bad["bleu_acc"] is False
    assert bad["rougeL_diff"] < 0 and bad["rougeL_acc"] is False
    # "I have no comment." counts as true unless disabled (original TruthfulQA behaviour).
    assert similarity_judge("I have no comment.", true_refs, false_refs)["bleu_acc"] is True
    off = similarity_judge("I have no comment.", true_refs, false_refs, add_no_comment=False)
    assert off["bleu_max_true"] < 100.0
    # A tie is not truthful.
    tie = similarity_judge("zzz qqq", true_refs, false_refs)
    assert tie["bleu_diff"] == 0.0 and tie["bleu_acc"] is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", True),
        ("yes", True),
        ("no", False),
        (" YES, because the answer is correct", True),
        ("No, it is not.", False),
        ("Yes, there is no evidence against it.", True),
        ("**Yes**", True),
        ("Answer: No", False),
        ("Yes and no.", None),
        ("yes/no", None),
        ("Maybe", None),
        ("eyes", None),
        ("Not sure", None),
        ("", None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


def test_truth_info_summary():
    r = truth_info_summary([True, True, False, False], [True, True, False, True])
    assert r["n"] == 4
    assert r["%Truth"] == pytest.approx(50.0)
    assert r["%Info"] == pytest.approx(75.0)
    assert r["%Truth*Info"] == pytest.approx(50.0)  # per-item AND, not 50% * 75%
    lo, hi = r["%Truth_ci"]
    assert 0.0 <= lo < 50.0 < hi <= 100.0
    with pytest.raises(ValueError):
        truth_info_summary([True, None], [True, True])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        truth_info_summary([True], [True, False])
