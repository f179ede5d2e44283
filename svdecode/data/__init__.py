"""Task data for the harness: loaders that turn datasets into (prompt, answer) examples, and seeded splits.

Every loader validates every row before returning: a malformed row raises :class:`DataError`
naming the file and the row, or, with ``skip_bad_rows=True``, is left out and counted in
``ExampleList.skipped``. Example ids use the 0-based position in the source file, so they stay
the same when other rows are skipped; error messages use 1-based row / line numbers.

Layer: harness (extra ``harness``). May import the core (``svdecode.errors``, ...) and
``datasets`` (hub loading, via :func:`svdecode.errors.require_extra`); never ``cli/`` or
``integrations/``. Nothing in the core imports this package; ``train/`` and ``eval/`` do.
"""

from svdecode.data.commonsense import COMMONSENSE_DATASETS, LABELS, alpaca_prompt, load_commonsense
from svdecode.data.examples import DataError, Example, ExampleList, Splits, default_data_root
from svdecode.data.files import iter_table, load_hub, load_table
from svdecode.data.splits import make_splits, sample, splits_from_manifest
from svdecode.data.tasks import format_prompt, load_task
from svdecode.data.truthfulqa import (
    MCItem,
    load_truthfulqa_generation,
    load_truthfulqa_mc,
    truthfulqa_mc_split,
)

__all__ = [
    "COMMONSENSE_DATASETS",
    "LABELS",
    "DataError",
    "Example",
    "ExampleList",
    "MCItem",
    "Splits",
    "alpaca_prompt",
    "default_data_root",
    "format_prompt",
    "iter_table",
    "load_commonsense",
    "load_hub",
    "load_table",
    "load_task",
    "load_truthfulqa_generation",
    "load_truthfulqa_mc",
    "make_splits",
    "sample",
    "splits_from_manifest",
    "truthfulqa_mc_split",
]
