"""Offline loaders and helpers for the ``svdecode_*`` lm-eval tasks (referenced by the YAMLs here).

lm-eval imports this file by path (``!function loaders.<name>``), so it depends on nothing but the
standard library and ``datasets``. The data is the project's shared copy (``$SVDECODE_DATA``, else
``../shared/data`` from the working directory or from the repository): TruthfulQA's
``mc_task.json`` and the LLM-Adapters commonsense files, whose instructions embed the question and
the choices. Each loader parses those back into the fields of the hub dataset lm-eval's task of
the same name reads, so the YAMLs can format documents the way lm-eval's own tasks do.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import datasets

from svdecode.catalog import COMMONSENSE_DATASETS, COMMONSENSE_DIR

DATA_ENV = "SVDECODE_DATA"

# file stem of each commonsense dataset's evaluation file; PIQA and HellaSwag have only 64-item
# samples of it here and no training file
EVAL_FILES = {"piqa": "test_sample", "hellaswag": "test_sample"}


class TaskDataError(ValueError):
    """The task data is missing or not in the expected format."""


def data_root(svdecode_data: str | None = None) -> Path:
    """``svdecode_data`` (task metadata), else ``$SVDECODE_DATA``, else ``../shared/data`` seen from
    the working directory or from the repository this file is in (the first that exists)."""
    given = svdecode_data or os.environ.get(DATA_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise TaskDataError(f"svdecode task data folder {given!r} does not exist (set ${DATA_ENV})")
        return path
    tried = [
        Path.cwd() / ".." / "shared" / "data",
        Path(__file__).resolve().parents[3] / ".." / "shared" / "data",
    ]
    for path in tried:
        if path.is_dir():
            return path.resolve()
    raise TaskDataError(
        f"no svdecode task data found: set ${DATA_ENV} to the folder holding truthfulqa/ and commonsense/; "
        f"tried {', '.join(str(p) for p in tried)}"
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise TaskDataError(f"svdecode task data file {path} does not exist")
    return json.loads(path.read_text())


# -- TruthfulQA -----------------------------------------------------------------------------------


def _targets(pairs: dict[str, int]) -> dict[str, list]:
    return {"choices": list(pairs), "labels": list(pairs.values())}


def load_truthfulqa_mc(svdecode_data: str | None = None, **_metadata: Any) -> datasets.DatasetDict:
    """``mc_task.json`` in file order (the order of the hub's ``truthful_qa/multiple_choice``) as its
    ``validation`` split: question, mc1_targets and mc2_targets as {choices, labels}.

    lm-eval calls a ``custom_dataset`` with every task metadata entry (the model_args included),
    hence ``**_metadata``.
    """
    rows = _read_json(data_root(svdecode_data) / "truthfulqa" / "mc_task.json")
    docs = [
        {
            "question": r["question"],
            "mc1_targets": _targets(r["mc1_targets"]),
            "mc2_targets": _targets(r["mc2_targets"]),
        }
        for r in rows
    ]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(docs)})


def mc2_true_mass(loglikelihoods: list[float], labels: list[int]) -> float:
    """Normalised probability mass on the true answers: lm-eval's ``process_results_mc2`` formula
    (exp, normalise, sum over label 1), computed after subtracting the maximum so that long answers
    whose log-likelihoods all underflow ``exp`` still give the value instead of 0/0."""
    top = max(loglikelihoods)
    probs = [math.exp(ll - top) for ll in loglikelihoods]
    return sum(p for p, lab in zip(probs, labels, strict=True) if lab == 1) / sum(probs)


def process_results_mc2(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, float]:
    loglikelihoods = [ll for ll, _ in results]
    return {"acc": mc2_true_mass(loglikelihoods, doc["mc2_targets"]["labels"])}


# -- LLM-Adapters commonsense ---------------------------------------------------------------------

_FORMAT = re.compile(r"\n*\s*Answer format: (?P<labels>[a-z0-9/]+)\s*$")


def _split_format(instruction: str, where: str) -> tuple[str, list[str]]:
    """The instruction without its trailing ``Answer format: a/b/c`` line, and the labels it lists."""
    m = _FORMAT.search(instruction)
    if m is None:
        raise TaskDataError(f"{where}: no 'Answer format:' line in the instruction")
    return instruction[: m.start()], m.group("labels").split("/")


def _strip_lead(text: str, lead: str, where: str) -> str:
    if not text.startswith(lead):
        raise TaskDataError(f"{where}: instruction does not start with {lead!r}")
    return text[len(lead) :]


def _numbered(text: str, word: str, n: int, where: str) -> tuple[str, list[str]]:
    """Split ``stem\\n\\n<Word>1: a <Word>2: b ...`` into the stem and the n choices, checking the
    numbering runs 1..n in order (a choice that itself contains "<Word>k: " would break it)."""
    parts = re.split(rf"\s*\b{word}(\d+): ", text)
    stem, numbers, choices = parts[0], parts[1::2], parts[2::2]
    if numbers != [str(i) for i in range(1, n + 1)]:
        raise TaskDataError(
            f"{where}: expected {word}1..{word}{n}, found {word}{','.join(numbers) or ' none'}"
        )
    return stem.strip(), [c.strip() for c in choices]


def _label_index(label: str, labels: list[str], where: str) -> int:
    if label not in labels:
        raise TaskDataError(f"{where}: answer {label!r} is not one of {labels}")
    return labels.index(label)


def _boolq(instr: str, labels: list[str], gold: int, where: str) -> dict[str, Any]:
    question = _strip_lead(
        instr, "Please answer the following question with true or false, question: ", where
    )
    # LLM-Adapters appended "?" to the hub's question; lm-eval's template adds it back.
    return {"question": question.strip().removesuffix("?"), "label": int(labels[gold] == "true")}


def _piqa(instr: str, labels: list[str], gold: int, where: str) -> dict[str, Any]:
    body = _strip_lead(instr, "Please choose the correct solution to the question: ", where)
    m = re.fullmatch(r"(?s)(?P<goal>.*?)\n\nSolution1: (?P<sol1>.*)\n\nSolution2: (?P<sol2>.*)", body.strip())
    if m is None:
        raise TaskDataError(f"{where}: cannot find Solution1/Solution2")
    return {"goal": m["goal"], "sol1": m["sol1"], "sol2": m["sol2"], "label": gold}


def _siqa(instr: str, labels: list[str], gold: int, where: str) -> dict[str, Any]:
    stem, choices = _numbered(
        _strip_lead(instr, "Please choose the correct answer to the question: ", where),
        "Answer",
        len(labels),
        where,
    )
    # The hub's context and question, already joined by one space as lm-eval's template joins them.
    return {
        "context_question": stem,
        "answerA": choices[0],
        "answerB": choices[1],
        "answerC": choices[2],
        "label": str(gold + 1),
    }


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag text clean-up: WikiHow "[title]" markers to ". ", other [..] removed."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(instr: str, labels: list[str], gold: int, where: str) -> dict[str, Any]:
    body = _strip_lead(instr, "Please choose the correct ending to complete the given sentence: ", where)
    stem, endings = _numbered(body, "Ending", len(labels), where)
    return {"query": _hellaswag_clean(stem), "choices": [_hellaswag_clean(e) for e in endings], "label": gold}


def _winogrande(instr: str, labels: list[str], gold: int, where: str) -> dict[str, Any]:
    body = _strip_lead(
        instr, "Please choose the correct answer to fill in the blank to complete the given sentence: ", where
    )
    stem, options = _numbered(body, "Option", 2, where)
    if stem.count("_") != 1:
        raise TaskDataError(f"{where}: the sentence has {stem.count('_')} blanks, expected 1")
    return {"sentence": stem, "option1": options[0], "option2": options[1], "answer": str(gold + 1)}


def _arc(instr: str, labels: list[str], gold: int, where: str) -> dict[str, Any]:
    body = _strip_lead(instr, "Please choose the correct answer to the question: ", where)
    stem, choices = _numbered(body, "Answer", len(labels), where)
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    return {"question": stem, "choices": {"text": choices, "label": letters}, "answerKey": letters[gold]}


def _openbookqa(instr: str, labels: list[str], gold: int, where: str) -> dict[str, Any]:
    doc = _arc(instr, labels, gold, where)
    return {"question_stem": doc.pop("question"), **doc}


_PARSERS = {
    "boolq": _boolq,
    "piqa": _piqa,
    "social_i_qa": _siqa,
    "hellaswag": _hellaswag,
    "winogrande": _winogrande,
    "ARC-Easy": _arc,
    "ARC-Challenge": _arc,
    "openbookqa": _openbookqa,
}


def parse_commonsense(record: dict[str, Any], dataset: str, where: str) -> dict[str, Any]:
    """One LLM-Adapters record as a document with the hub dataset's fields."""
    instr, labels = _split_format(record["instruction"], where)
    if record.get("input"):
        raise TaskDataError(f"{where}: non-empty 'input' field; these tasks expect it empty")
    gold = _label_index(record["answer"].strip(), labels, where)
    return _PARSERS[dataset](instr, labels, gold, where)


def load_commonsense(
    dataset: str, eval_split: str, svdecode_data: str | None = None, **_metadata: Any
) -> datasets.DatasetDict:
    """``commonsense/<dataset>/test.json`` as ``eval_split`` and ``train.json`` as ``train`` (the
    few-shot pool); PIQA and HellaSwag: ``test_sample.json`` only."""
    if dataset not in _PARSERS:
        raise TaskDataError(
            f"unknown commonsense dataset {dataset!r}; known: {', '.join(COMMONSENSE_DATASETS)}"
        )
    folder = data_root(svdecode_data) / COMMONSENSE_DIR / dataset
    files = {eval_split: folder / f"{EVAL_FILES.get(dataset, 'test')}.json"}
    if dataset not in EVAL_FILES:
        files["train"] = folder / "train.json"
    splits = {}
    for split, path in files.items():
        docs = [parse_commonsense(r, dataset, f"{path}[{i}]") for i, r in enumerate(_read_json(path))]
        splits[split] = datasets.Dataset.from_list(docs)
    return datasets.DatasetDict(splits)


# -- WinoGrande partial scoring (lm-eval's scheme: the choices are the contexts) -------------------


def winogrande_text(doc: dict[str, Any]) -> int:
    """The gold context's index: with several contexts lm-eval reads doc_to_text as the answer."""
    return int(doc["answer"]) - 1


def winogrande_target(doc: dict[str, Any]) -> str:
    """The shared continuation: the sentence after the blank."""
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def winogrande_choices(doc: dict[str, Any]) -> list[str]:
    """One context per option: the sentence up to the blank with the option filled in."""
    head = doc["sentence"][: doc["sentence"].index("_")]
    return [head + doc["option1"], head + doc["option2"]]
