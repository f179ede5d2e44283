"""The LLM-Adapters commonsense benchmarks (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e/c, OBQA):
Alpaca-style prompts, label sets, strict row validation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svdecode.catalog import COMMONSENSE_DATASETS, COMMONSENSE_DIR, LABELS
from svdecode.data.examples import DataError, Example, ExampleList, default_data_root
from svdecode.data.records import BadRow, collect, read_records, text_field

log = logging.getLogger("svdecode")


_ALIASES = {
    **{d.lower(): d for d in COMMONSENSE_DATASETS},
    "siqa": "social_i_qa",
    "obqa": "openbookqa",
    "arc-e": "ARC-Easy",
    "arc_easy": "ARC-Easy",
    "arc-c": "ARC-Challenge",
    "arc_challenge": "ARC-Challenge",
}


# LLM-Adapters' templates (finetune.py / commonsense_evaluate.py), without the indentation that
# their triple-quoted source strings leak into the prompt.
PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


PROMPT_TEMPLATE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The LLM-Adapters Alpaca-style prompt; the with-input variant when ``input`` is non-empty."""
    if input.strip():
        return PROMPT_TEMPLATE_INPUT.format(instruction=instruction, input=input)
    return PROMPT_TEMPLATE.format(instruction=instruction)


def _canonical(dataset: str) -> str:
    name = _ALIASES.get(dataset.strip().lower())
    if name is None:
        raise DataError(f"unknown commonsense dataset {dataset!r}; known: {', '.join(COMMONSENSE_DATASETS)}")
    return name


def _commonsense_example(record: dict[str, Any], index: int, dataset: str, stem: str) -> Example | BadRow:
    fields = {
        k: text_field(record, k, w)
        for k, w in (("instruction", None), ("output", "answer"), ("answer", "label"))
    }
    for value in fields.values():
        if isinstance(value, BadRow):
            return value
    inp = record.get("input") or ""
    if not isinstance(inp, str):
        return BadRow(f"field 'input' is {type(inp).__name__}, expected text")
    labels = LABELS[dataset]
    label = fields["answer"].strip()
    if label not in labels:
        return BadRow(f"label {label!r} not in the {dataset} labels ({', '.join(labels)})")
    # Accuracy is read from the first label named in the generated text: the training target
    # must name the gold label first, or training and scoring disagree.
    named = re.search("|".join(labels), fields["output"])
    if named is None or named.group(0) != label:
        return BadRow(f"output {fields['output']!r} does not name the label {label!r}")
    return Example(
        id=f"{dataset}/{stem}/{index}",
        dataset=dataset,
        prompt=alpaca_prompt(fields["instruction"], inp),
        answer=fields["output"],
        label=label,
        meta={"file": f"{stem}.json", "test_sample": stem == "test_sample"},
    )


def _commonsense_dir(root: str | Path | None) -> Path:
    base = Path(root) if root is not None else default_data_root()
    return base / COMMONSENSE_DIR if (base / COMMONSENSE_DIR).is_dir() else base


def load_commonsense(
    datasets: str | Sequence[str],
    split: str,
    root: str | Path | None = None,
    skip_bad_rows: bool = False,
) -> ExampleList:
    """Commonsense examples in LLM-Adapters format, merged in the order asked.

    ``datasets``: a name, a comma-separated string, a list, or ``"all"`` (the eight datasets).
    ``split``: "train" or "test". Where a dataset has no ``test.json`` (PIQA, HellaSwag here) the
    test split falls back to ``test_sample.json`` (meta ``test_sample=True``). Where it has no
    ``train.json``, a merged request leaves it out with a logged note (the paper warm-starts once on
    the merged training sets); asking for it alone is an error. ``root``: the data root or its
    ``commonsense`` folder.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(datasets, str):
        names = list(COMMONSENSE_DATASETS) if datasets.strip().lower() == "all" else datasets.split(",")
    else:
        names = list(datasets)
    names = list(dict.fromkeys(_canonical(n) for n in names))
    if not names:
        raise DataError("no commonsense dataset named")
    folder = _commonsense_dir(root)
    out = ExampleList()
    for name in names:
        ds_dir = folder / name
        if not ds_dir.is_dir():
            raise DataError(f"{name}: no folder {ds_dir}")
        path, stem = ds_dir / f"{split}.json", split
        if not path.is_file() and split == "test" and (ds_dir / "test_sample.json").is_file():
            path, stem = ds_dir / "test_sample.json", "test_sample"
            log.warning("%s: no test.json, evaluating on %s (a sample, not the full test set)", name, path)
        if not path.is_file():
            if split == "train" and len(names) > 1:
                log.info("%s: no train.json in %s, left out of the merged training set", name, ds_dir)
                continue
            hint = " (train on the merged sets: load_commonsense('all', 'train'))" if split == "train" else ""
            raise DataError(f"{name}: no {split} set, {path} does not exist{hint}")
        rows = (
            (where, record if isinstance(record, BadRow) else _commonsense_example(record, index, name, stem))
            for index, where, record in read_records(path, "json")
        )
        loaded = collect(path, rows, skip_bad_rows)
        out.extend(loaded)
        out.skipped.extend(loaded.skipped)
    if not out:
        raise DataError(f"no {split} examples in {', '.join(names)} under {folder}")
    return out
