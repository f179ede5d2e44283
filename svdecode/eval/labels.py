"""Commonsense answers: the label set of each dataset, strict label extraction from generated text
("the correct answer is <label>", LLM-Adapters style) and per-dataset accuracy reports.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from svdecode.eval.metrics import wilson_ci


def _numbered(prefix: str, k: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, k + 1))


#: Valid labels per dataset (canonical names are the LLM-Adapters folder names), from the data:
#: ARC-Easy has one test item with answer5; ARC-Challenge and OpenBookQA stop at answer4.
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "boolq": ("true", "false"),
    "piqa": _numbered("solution", 2),
    "social_i_qa": _numbered("answer", 3),
    "hellaswag": _numbered("ending", 4),
    "winogrande": _numbered("option", 2),
    "ARC-Easy": _numbered("answer", 5),
    "ARC-Challenge": _numbered("answer", 4),
    "openbookqa": _numbered("answer", 4),
}


_ALIASES: dict[str, str] = {
    "boolq": "boolq",
    "piqa": "piqa",
    "social_i_qa": "social_i_qa",
    "siqa": "social_i_qa",
    "socialiqa": "social_i_qa",
    "social_iqa": "social_i_qa",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "arc_easy": "ARC-Easy",
    "arc_e": "ARC-Easy",
    "arc_challenge": "ARC-Challenge",
    "arc_c": "ARC-Challenge",
    "openbookqa": "openbookqa",
    "openbook_qa": "openbookqa",
    "obqa": "openbookqa",
}


# LLM-Adapters' own patterns (commonsense_evaluate.py): case-sensitive, no word boundaries, first hit.
_LLM_ADAPTERS_PATTERNS: dict[str, str] = {
    "boolq": r"true|false",
    "piqa": r"solution1|solution2",
    "social_i_qa": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Challenge": r"answer1|answer2|answer3|answer4|answer5",
    "ARC-Easy": r"answer1|answer2|answer3|answer4|answer5",
    "openbookqa": r"answer1|answer2|answer3|answer4|answer5",
    "hellaswag": r"ending1|ending2|ending3|ending4",
    "winogrande": r"option1|option2",
}


def canonical_dataset(dataset: str) -> str:
    """Map a dataset name ("ARC-Easy", "arc_easy", "siqa", "OBQA", ...) to its canonical name."""
    key = re.sub(r"[\s\-]+", "_", dataset.strip().lower())
    if key not in _ALIASES:
        raise ValueError(f"unknown commonsense dataset {dataset!r}; known: {sorted(LABEL_SETS)}")
    return _ALIASES[key]


def label_set(dataset: str) -> tuple[str, ...]:
    """The valid labels of a dataset, e.g. ("answer1", "answer2", "answer3") for social_i_qa."""
    return LABEL_SETS[canonical_dataset(dataset)]


@lru_cache(maxsize=64)
def _family_regex(labels: tuple[str, ...]) -> re.Pattern[str]:
    """Whole-word, case-insensitive regex for the label *family*: numbered labels match any number
    (so "answer10" is seen as answer10, an invalid label, never as answer1)."""
    parts: set[str] = set()
    for lab in labels:
        m = re.fullmatch(r"([a-z_]+?)(\d+)", lab)
        parts.add(rf"{re.escape(m.group(1))}\d+" if m else re.escape(lab))
    return re.compile(r"\b(?:" + "|".join(sorted(parts)) + r")\b", re.IGNORECASE)


def _extract(dataset: str, text: str, labels: Sequence[str] | None) -> tuple[str | None, str]:
    """(label or None, status) with status in {"ok", "no_label", "ambiguous", "invalid"}."""
    vocab = tuple(x.lower() for x in (labels if labels is not None else label_set(dataset)))
    found = {m.group(0).lower() for m in _family_regex(vocab).finditer(text)}
    if not found:
        return None, "no_label"
    if len(found) > 1:
        return None, "ambiguous"
    (lab,) = found
    if lab not in vocab:
        return None, "invalid"
    return lab, "ok"


def _extract_first(dataset: str, text: str) -> str | None:
    hits = re.findall(_LLM_ADAPTERS_PATTERNS[canonical_dataset(dataset)], text.strip())
    return hits[0] if hits else None


def extract_label(
    dataset: str,
    text: str,
    *,
    mode: Literal["strict", "first"] = "strict",
    labels: Sequence[str] | None = None,
) -> str | None:
    """The label a generated answer names, lower-cased, or None if it names none unambiguously.

    ``mode="strict"`` (default): case-insensitive whole-word matches of the dataset's label family
    ("True." -> "true"; "untrue" and "answer10" match nothing valid). If the text names two DIFFERENT
    labels ("answer1 or answer2") it is ambiguous and returns None, as does a label outside the
    dataset's vocabulary (answer4 for social_i_qa); LLM-Adapters would take the first match, which
    credits a model that lists several answers. ``accuracy_report`` counts these cases separately.

    ``mode="first"``: LLM-Adapters' exact rule (case-sensitive substring, first match, answer1-5 for
    SIQA/ARC/OBQA), kept for comparability with published numbers. ``labels`` overrides the vocabulary
    (strict mode only).
    """
    if mode == "first":
        return _extract_first(dataset, text)
    if mode != "strict":
        raise ValueError(f"mode must be 'strict' or 'first', got {mode!r}")
    return _extract(dataset, text, labels)[0]


def accuracy_report(
    golds: Sequence[str],
    preds_text: Sequence[str],
    dataset: str,
    *,
    conf: float = 0.95,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy of generated answers against gold labels, with a Wilson CI and failure counts.

    Unparseable answers (no label / ambiguous / out-of-vocabulary label) count as wrong and are
    reported (``unparseable`` and its breakdown), so a method that rambles cannot look accurate by
    accident. ``accuracy_first_match`` is the same data scored with LLM-Adapters' first-match rule,
    for comparison with the paper. ``item_correct`` (0/1 per item) feeds ``paired_bootstrap``.
    """
    if len(golds) != len(preds_text):
        raise ValueError(f"{len(golds)} golds but {len(preds_text)} predictions")
    n = len(golds)
    if n == 0:
        raise ValueError("no items")
    vocab = tuple(x.lower() for x in (labels if labels is not None else label_set(dataset)))
    gold_norm = [g.strip().lower() for g in golds]
    bad = sorted({g for g in gold_norm if g not in vocab})
    if bad:
        raise ValueError(f"gold labels {bad} are not in the {dataset} label set {vocab}")
    counts = {"no_label": 0, "ambiguous": 0, "invalid": 0}
    preds: list[str | None] = []
    item_correct: list[int] = []
    correct_first = 0
    for g, text in zip(gold_norm, preds_text, strict=True):
        lab, status = _extract(dataset, text, vocab)
        if status != "ok":
            counts[status] += 1
        preds.append(lab)
        item_correct.append(int(lab == g))
        if labels is None:
            correct_first += int(_extract_first(dataset, text) == g)
    correct = sum(item_correct)
    lo, hi = wilson_ci(correct, n, conf)
    return {
        "dataset": dataset,
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "ci_lo": lo,
        "ci_hi": hi,
        "unparseable": sum(counts.values()),
        **counts,
        "accuracy_first_match": correct_first / n if labels is None else None,
        "item_correct": item_correct,
        "preds": preds,
    }
