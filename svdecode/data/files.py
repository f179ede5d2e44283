"""User data: JSON/JSONL/CSV files with named prompt/answer columns, and hub datasets."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from svdecode.data.examples import DataError, Example, ExampleList
from svdecode.data.records import BadRow, collect, infer_format, read_records, text_field
from svdecode.errors import require_extra

log = logging.getLogger("svdecode")


def _table_example(
    record: dict[str, Any], index: int, dataset: str, prompt_col: str, answer_col: str, label_col: str | None
) -> Example | BadRow:
    prompt = text_field(record, prompt_col, "prompt")
    answer = text_field(record, answer_col, "answer")
    label = text_field(record, label_col, "label") if label_col else None
    for value in (prompt, answer, label):
        if isinstance(value, BadRow):
            return value
    used = {prompt_col, answer_col, label_col}
    extra = {k: v for k, v in record.items() if k not in used}
    return Example(
        f"{dataset}/{index}", dataset, prompt, answer, label, meta={"row": index + 1, "extra": extra}
    )


def _table_rows(
    path: Path, prompt_col: str, answer_col: str, label_col: str | None, fmt: str | None
) -> Iterator[tuple[str, Example | BadRow]]:
    fmt = infer_format(path, fmt)
    dataset = f"{fmt}:{path.name}"
    for index, where, record in read_records(path, fmt):
        if isinstance(record, BadRow):
            yield where, record
        else:
            yield where, _table_example(record, index, dataset, prompt_col, answer_col, label_col)


def iter_table(
    path: str | Path,
    prompt_col: str,
    answer_col: str,
    label_col: str | None = None,
    fmt: str | None = None,
    skip_bad_rows: bool = False,
) -> Iterator[Example]:
    """Like :func:`load_table`, but lazy (JSONL and CSV are streamed): a bad row raises only when
    reached, or is skipped with a warning for each."""
    path = Path(path)
    for where, item in _table_rows(path, prompt_col, answer_col, label_col, fmt):
        if isinstance(item, BadRow):
            if not skip_bad_rows:
                raise DataError(f"{path}: {where}: {item.reason}")
            log.warning("%s: %s: skipped: %s", path, where, item.reason)
            continue
        yield item


def load_table(
    path: str | Path,
    prompt_col: str,
    answer_col: str,
    label_col: str | None = None,
    fmt: str | None = None,
    skip_bad_rows: bool = False,
) -> ExampleList:
    """Examples from a JSON list, JSONL or CSV/TSV file with user-named columns (format from the
    suffix unless ``fmt`` is given). ``prompt + answer`` is used verbatim: include any separator."""
    path = Path(path)
    return collect(path, _table_rows(path, prompt_col, answer_col, label_col, fmt), skip_bad_rows)


def load_hub(
    name: str,
    split: str,
    prompt_col: str,
    answer_col: str,
    config: str | None = None,
    label_col: str | None = None,
    skip_bad_rows: bool = False,
) -> ExampleList:
    """Examples from a hub dataset via ``datasets.load_dataset``; any loading failure (offline,
    unknown name or split) becomes a DataError that suggests a local file."""
    datasets = require_extra("datasets", "harness", f"loading the hub dataset {name!r}")
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the hub raises many types; the user needs one clear message
        raise DataError(
            f"could not load dataset {name!r} (config={config!r}, split={split!r}) from the hub: "
            f"{type(e).__name__}: {e}; pass a local file instead"
        ) from e
    dataset = f"hub:{name}" + (f"/{config}" if config else "") + f":{split}"
    rows = (
        (f"row {i + 1}", _table_example(dict(record), i, dataset, prompt_col, answer_col, label_col))
        for i, record in enumerate(ds)
    )
    return collect(dataset, rows, skip_bad_rows)
