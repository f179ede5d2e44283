"""Multiple-choice views of the task data, for calibrating on the task's own metric and for
likelihood-scored evaluation: TruthfulQA MC items (MC average) and commonsense examples (their
dataset's label options, accuracy of the best-scored option).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from svdecode.calibration.objectives import ChoiceItem, ItemMetric, choice_accuracy
from svdecode.data import LABELS, Example, MCItem, load_truthfulqa_mc
from svdecode.eval import metrics


def mc_choice_item(item: MCItem, prompt: str) -> ChoiceItem:
    """The MC1 and MC2 answers of a TruthfulQA question as one set of scored options
    (``" " + answer`` after ``prompt``, as in :mod:`svdecode.eval.truthfulqa_mc`)."""
    options = list(dict.fromkeys((*item.mc1_choices, *item.mc2_choices)))
    label = dict(zip(item.mc2_choices, item.mc2_labels, strict=True))
    label.update({c: lab for c, lab in zip(item.mc1_choices, item.mc1_labels, strict=True) if c not in label})
    meta = {
        "mc1": [(options.index(c), lab) for c, lab in zip(item.mc1_choices, item.mc1_labels, strict=True)],
        "mc2": [(options.index(c), lab) for c, lab in zip(item.mc2_choices, item.mc2_labels, strict=True)],
    }
    return ChoiceItem(
        item.id, prompt, tuple(" " + o for o in options), tuple(label[o] for o in options), meta
    )


def truthfulqa_mc_average(item: ChoiceItem, scores: Sequence[float]) -> float:
    """(MC1 + MC2 + MC3) / 3 of one question from its option scores (original definitions;
    an undefined MC2, all mass underflowed, counts 0 as in the evaluation)."""

    def split(key: str) -> tuple[list[float], list[float]]:
        pairs = item.meta[key]
        return [scores[i] for i, lab in pairs if lab == 1], [scores[i] for i, lab in pairs if lab == 0]

    t1, f1 = split("mc1")
    t2, f2 = split("mc2")
    mc = metrics.mc_scores(t1[0], f1, t2, f2)
    return sum(0.0 if math.isnan(v) else v for v in mc.values()) / 3.0


def commonsense_choice_item(ex: Example) -> ChoiceItem:
    """The example's answer with its gold label swapped for each label of its dataset."""
    if ex.label is None or ex.dataset not in LABELS:
        raise ValueError(f"example {ex.id} has no commonsense label to build choices from")
    labels = LABELS[ex.dataset]
    pattern = re.compile(re.escape(ex.label))
    if not pattern.search(ex.answer):
        raise ValueError(f"example {ex.id}: the answer {ex.answer!r} does not name its label {ex.label!r}")
    options = tuple(pattern.sub(lab, ex.answer, count=1) for lab in labels)
    return ChoiceItem(ex.id, ex.prompt, options, tuple(int(lab == ex.label) for lab in labels))


def calibration_choices(
    examples: Sequence[Any], mc_items: Sequence[MCItem] | None = None
) -> tuple[list[ChoiceItem] | None, ItemMetric]:
    """Choice items for calibration examples, and the task metric to judge them on.

    TruthfulQA examples get their question's MC answers (``mc_items``, default: the shared data)
    after the example's own prompt; commonsense examples their label options. Other data has no
    choices: ``(None, choice_accuracy)``.
    """
    if not examples:
        return None, choice_accuracy
    datasets = {getattr(ex, "dataset", None) for ex in examples}
    if datasets == {"truthfulqa"}:
        by_id = {it.id: it for it in (mc_items if mc_items is not None else load_truthfulqa_mc())}
        items = [mc_choice_item(by_id[ex.id], ex.prompt) for ex in examples if ex.id in by_id]
        return (items or None), truthfulqa_mc_average
    if datasets <= set(LABELS) and all(getattr(ex, "label", None) for ex in examples):
        return [commonsense_choice_item(ex) for ex in examples], choice_accuracy
    return None, choice_accuracy
