"""The data types every loader returns (:class:`Example`, :class:`ExampleList`, :class:`Splits`),
:class:`DataError`, and where the shared data lives.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from svdecode.errors import SvdecodeError

log = logging.getLogger("svdecode")


@dataclass(frozen=True)
class Example:
    """One labelled example. ``prompt + answer`` is the text a model is trained/calibrated on;
    only ``answer`` tokens count for the loss and for mu_bar."""

    id: str  # stable across runs, e.g. "boolq/test/17"
    dataset: str  # "boolq", "truthfulqa", "jsonl:my.jsonl", ...
    prompt: str
    answer: str
    label: str | None = None  # gold label where the task has one ("true", "answer2", ...)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Splits:
    """A deterministic train / calibration / test split and the manifest that records it."""

    train: list[Example]
    calib: list[Example]
    test: list[Example]
    manifest: dict[str, Any]


class DataError(SvdecodeError, ValueError):
    """A data file or dataset that cannot be used as asked: the message names file and row."""


class ExampleList(list[Example]):
    """The examples a loader returns, plus ``skipped``: one "where: why" line per bad row left out
    (only non-empty with ``skip_bad_rows=True``)."""

    def __init__(self, items: Iterable[Example] = (), skipped: Iterable[str] = ()):
        super().__init__(items)
        self.skipped: list[str] = list(skipped)


_DATA_ENV = "SVDECODE_DATA"


def default_data_root() -> Path:
    """The shared data folder: ``$SVDECODE_DATA`` if set, else ``./../shared/data`` or
    ``<repo>/../shared/data``, whichever exists first."""
    env = os.environ.get(_DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"${_DATA_ENV} is set to {env!r}, which is not a folder")
        return path.resolve()
    tried = [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for path in tried:
        if path.is_dir():
            return path.resolve()
    raise DataError(
        f"no data folder found: set ${_DATA_ENV} or pass a root/path; tried {', '.join(map(str, tried))}"
    )
