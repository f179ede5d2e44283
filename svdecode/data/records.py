"""Reading raw records (JSON, JSONL, CSV/TSV) and validating fields: a bad row becomes a
:class:`BadRow` naming what is wrong, collected into one :class:`DataError` naming file and rows.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdecode.data.examples import DataError, Example, ExampleList

log = logging.getLogger("svdecode")


@dataclass(frozen=True)
class BadRow:
    reason: str


class PairsDict(dict):
    """A JSON object that remembers keys it saw twice (a plain dict keeps only the last value)."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = PairsDict(pairs)
    if len(obj) < len(pairs):
        keys = [k for k, _ in pairs]
        obj.duplicates = tuple(sorted({k for k in keys if keys.count(k) > 1}))
    return obj


def _check_object(obj: Any) -> BadRow | None:
    if not isinstance(obj, dict):
        return BadRow(f"expected an object, got {type(obj).__name__}")
    if isinstance(obj, PairsDict) and obj.duplicates:
        return BadRow(f"duplicate key(s) {', '.join(map(repr, obj.duplicates))}")
    return None


def infer_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("json", "jsonl", "csv", "tsv"):
            raise DataError(f"{path}: unknown format {fmt!r} (json, jsonl, csv, tsv)")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix == ".json":  # a .json file holding one object per line is common: look at it
        try:
            with _open(path) as f:
                text = f.read().lstrip()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e})") from e
        if not text.startswith("{"):
            return "json"
        try:
            _, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            return "jsonl"  # its lines are read (and reported) one by one
        if not text[end:].strip():  # one object and nothing else: not rows, whatever its shape
            raise DataError(
                f"{path}: holds a single JSON object, not rows; a .json data file is a list of objects "
                "([{...}, {...}]) or one object per line (JSONL; name it .jsonl to read a single row)"
            )
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the name; pass fmt= (json, jsonl, csv, tsv)")


def _open(path: Path):
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path.open(encoding="utf-8-sig", newline="")  # -sig: TruthfulQA.csv starts with a BOM


def read_records(path: Path, fmt: str) -> Iterator[tuple[int, str, dict[str, Any] | BadRow]]:
    """Yield (index, where, record-or-BadRow) for each record; JSONL and CSV are read lazily."""
    try:
        with _open(path) as f:
            if fmt == "json":
                try:
                    data = json.load(f, object_pairs_hook=_json_object)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
                    ) from e
                if not isinstance(data, list):
                    raise DataError(
                        f"{path}: expected a JSON list of objects, got {type(data).__name__} "
                        "(pass fmt='jsonl' for one object per line)"
                    )
                for i, obj in enumerate(data):
                    yield i, f"row {i + 1}", _check_object(obj) or obj
            elif fmt == "jsonl":
                i = 0
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line, object_pairs_hook=_json_object)
                    except json.JSONDecodeError as e:
                        yield i, f"line {lineno}", BadRow(f"invalid JSON: {e.msg} (column {e.colno})")
                    else:
                        yield i, f"line {lineno}", _check_object(obj) or obj
                    i += 1
            else:
                reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
                header = next(reader, None)
                if not header:
                    raise DataError(f"{path}: empty file, expected a header line")
                header = [h.strip() for h in header]
                i = 0
                while True:
                    start = reader.line_num + 1  # a quoted field may span lines: report where it starts
                    try:
                        cells = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as e:
                        raise DataError(f"{path}: line {start}: invalid CSV: {e}") from e
                    if not cells:
                        continue
                    if len(cells) != len(header):
                        yield i, f"line {start}", BadRow(f"{len(cells)} fields, header has {len(header)}")
                    else:
                        yield i, f"line {start}", dict(zip(header, cells, strict=True))
                    i += 1
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e


def text_field(record: dict[str, Any], key: str, what: str | None = None) -> str | BadRow:
    """A required non-empty text field (numbers are accepted and turned into text)."""
    if key not in record:
        return BadRow(f"missing field {key!r}")
    value = record[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return BadRow(f"field {key!r} is {type(value).__name__}, expected text")
    if not value.strip():
        return BadRow(f"empty {what or key} (field {key!r})")
    return value


def collect(
    source: Path | str, rows: Iterable[tuple[str, Example | BadRow]], skip_bad_rows: bool
) -> ExampleList:
    """All examples of ``rows``; bad rows raise one DataError listing them, or are skipped."""
    good: list[Example] = []
    bad: list[str] = []
    for where, item in rows:
        if isinstance(item, BadRow):
            bad.append(f"{where}: {item.reason}")
        else:
            good.append(item)
    if bad and not skip_bad_rows:
        shown = "; ".join(bad[:5]) + (f"; ... ({len(bad) - 5} more)" if len(bad) > 5 else "")
        raise DataError(
            f"{source}: {len(bad)} bad row(s): {shown} (pass --skip-bad-rows (skip_bad_rows=True) to leave them out)"
        )
    if not good:
        why = f"all {len(bad)} row(s) are bad, e.g. {bad[0]}" if bad else "it holds no rows"
        raise DataError(f"{source}: no usable examples: {why}")
    if bad:
        log.warning("%s: skipped %d bad row(s), kept %d; first: %s", source, len(bad), len(good), bad[0])
    return ExampleList(good, skipped=[f"{source}: {b}" for b in bad])
