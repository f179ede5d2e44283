"""TruthfulQA: the 817 generation examples (question -> best answer) and the multiple-choice items
(MC1/MC2 targets), matched by question text, and the seeded split both share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdecode.data.examples import DataError, Example, ExampleList, Splits, default_data_root
from svdecode.data.records import BadRow, PairsDict, collect, read_records, text_field
from svdecode.data.splits import make_splits

log = logging.getLogger("svdecode")

_TQA_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")


@dataclass(frozen=True)
class MCItem:
    """One TruthfulQA multiple-choice question; ``id`` equals the generation example's id."""

    id: str
    question: str
    mc1_choices: tuple[str, ...]
    mc1_labels: tuple[int, ...]  # exactly one 1
    mc2_choices: tuple[str, ...]
    mc2_labels: tuple[int, ...]  # at least one 1 and one 0


def _norm_question(q: str) -> str:
    return " ".join(q.split())  # the CSV has one question with a trailing space that mc_task.json lacks


def _tqa_path(path: str | Path | None, filename: str) -> Path:
    if path is None:
        return default_data_root() / "truthfulqa" / filename
    path = Path(path)
    return path / filename if path.is_dir() else path


def _split_answers(cell: str) -> list[str]:
    return [a.strip() for a in cell.split(";") if a.strip()]


def _truthfulqa_example(record: dict[str, Any], index: int) -> Example | BadRow:
    cells = {c: text_field(record, c) for c in _TQA_COLUMNS}
    for value in cells.values():
        if isinstance(value, BadRow):
            return value
    question = _norm_question(cells["Question"])
    best = cells["Best Answer"].strip()
    return Example(
        id=f"truthfulqa/{index}",
        dataset="truthfulqa",
        prompt=f"Q: {question}\nA:",
        answer=" " + best,
        meta={
            "question": question,
            "best_answer": best,
            "correct_answers": _split_answers(cells["Correct Answers"]),
            "incorrect_answers": _split_answers(cells["Incorrect Answers"]),
            "type": record.get("Type", ""),
            "category": record.get("Category", ""),
        },
    )


def load_truthfulqa_generation(path: str | Path | None = None, skip_bad_rows: bool = False) -> ExampleList:
    """TruthfulQA open-ended examples from ``TruthfulQA.csv`` (a file, or a folder holding it):
    prompt "Q: {question}\\nA:", answer " " + Best Answer; id "truthfulqa/<CSV row index>"."""
    path = _tqa_path(path, "TruthfulQA.csv")
    rows = (
        (where, record if isinstance(record, BadRow) else _truthfulqa_example(record, index))
        for index, where, record in read_records(path, "csv")
    )
    return collect(path, rows, skip_bad_rows)


def _targets(record: dict[str, Any], key: str) -> tuple[tuple[str, ...], tuple[int, ...]] | BadRow:
    targets = record.get(key)
    if not isinstance(targets, dict) or not targets:
        return BadRow(f"missing or empty {key!r}")
    if isinstance(targets, PairsDict) and targets.duplicates:
        return BadRow(f"{key}: duplicate choice(s) {', '.join(map(repr, targets.duplicates))}")
    if any(not isinstance(c, str) or not c.strip() for c in targets):
        return BadRow(f"{key}: empty choice")
    if any(v not in (0, 1) or isinstance(v, bool) for v in targets.values()):
        return BadRow(f"{key}: labels must be 0 or 1")
    labels = tuple(targets.values())
    if key == "mc1_targets" and sum(labels) != 1:
        return BadRow(f"mc1_targets has {sum(labels)} true answers, expected exactly 1")
    if key == "mc2_targets" and not 0 < sum(labels) < len(labels):
        return BadRow("mc2_targets needs at least one true and one false answer")
    return tuple(targets), labels


def load_truthfulqa_mc(path: str | Path | None = None, csv_path: str | Path | None = None) -> list[MCItem]:
    """TruthfulQA multiple choice from ``mc_task.json``, in CSV order with CSV-aligned ids.

    mc_task.json lists the questions in another order than TruthfulQA.csv, so each question is
    matched by text to its CSV row (``csv_path``, default: beside the JSON file); a question missing
    from either file is an error, since a split by id must never test on training questions.
    """
    path = _tqa_path(path, "mc_task.json")
    csv_file = Path(csv_path) if csv_path is not None else path.parent / "TruthfulQA.csv"
    by_question = {ex.meta["question"]: ex.id for ex in load_truthfulqa_generation(csv_file)}
    items: dict[str, MCItem] = {}
    bad: list[tuple[str, BadRow]] = []
    for _, where, record in read_records(path, "json"):
        if isinstance(record, BadRow):
            bad.append((where, record))
            continue
        question = text_field(record, "question")
        mc1, mc2 = _targets(record, "mc1_targets"), _targets(record, "mc2_targets")
        problem = next((v for v in (question, mc1, mc2) if isinstance(v, BadRow)), None)
        if problem is None:
            question = _norm_question(question)
            if question not in by_question:
                problem = BadRow(f"question {question!r} is not in {csv_file}")
            elif by_question[question] in items:
                problem = BadRow(f"question {question!r} appears twice")
        if problem is not None:
            bad.append((where, problem))
            continue
        qid = by_question[question]
        items[qid] = MCItem(qid, question, mc1[0], mc1[1], mc2[0], mc2[1])
    if bad:
        shown = "; ".join(f"{w}: {b.reason}" for w, b in bad[:5])
        raise DataError(f"{path}: {len(bad)} bad row(s): {shown}")
    if len(items) != len(by_question):
        missing = sorted(set(by_question.values()) - set(items), key=lambda i: int(i.rsplit("/", 1)[1]))
        raise DataError(
            f"{path}: {len(missing)} question(s) of {csv_file} have no MC entry, e.g. {missing[:3]}"
        )
    return sorted(items.values(), key=lambda m: int(m.id.rsplit("/", 1)[1]))


def truthfulqa_mc_split(n_calib: int, n_test: int | None, seed: int = 0) -> tuple[Splits, list[MCItem]]:
    """The seeded TruthfulQA split (over all 817 generation examples) and the MC items of its test
    questions, so multiple choice never tests on a question used for training or calibration."""
    splits = make_splits(load_truthfulqa_generation(), n_calib=n_calib, n_test=n_test, seed=seed)
    test_ids = set(splits.manifest["ids"]["test"])
    return splits, [item for item in load_truthfulqa_mc() if item.id in test_ids]
