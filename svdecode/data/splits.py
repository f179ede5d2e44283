"""Seeded, recorded train / calibration / test splits (a manifest of ids that a later run can
replay) and seeded subsets.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable, Sequence
from typing import Any

from svdecode.data.examples import DataError, Example, Splits

log = logging.getLogger("svdecode")


def _permutation(examples: Sequence[Example], seed: int) -> list[int]:
    """Indices of ``examples`` sorted by id, then shuffled with ``random.Random(seed)``: the result
    depends only on the set of ids and the seed, not on the input order or global RNG state."""
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"example ids must be unique, {dup!r} appears more than once")
    order = sorted(range(len(examples)), key=ids.__getitem__)
    random.Random(seed).shuffle(order)
    return order


def _size(n: int | float | None, total: int, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise DataError(f"{what} must be a count (int) or a fraction (float), got {n!r}")
    if isinstance(n, float):
        if not 0.0 <= n <= 1.0:
            raise DataError(f"{what}={n} is a fraction and must lie in [0, 1]")
        return round(n * total)
    if n < 0:
        raise DataError(f"{what}={n} must not be negative")
    return n


def _ids_hash(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def make_splits(
    examples: Sequence[Example],
    n_calib: int | float,
    n_test: int | float | None = None,
    seed: int = 0,
    n_train: int | float | None = None,
) -> Splits:
    """A seeded train / calib / test split: ints are counts, floats fractions of ``len(examples)``.

    ``n_test=None``: test takes what is left after calib and train (``n_train=None`` is then 0).
    ``n_train=None`` with ``n_test`` given: train takes what is left. Calib is always the first
    ``n_calib`` of the seeded order, so it does not move when the other sizes change.
    """
    total = len(examples)
    order = _permutation(examples, seed)
    c = _size(n_calib, total, "n_calib")
    if n_test is None:
        tr = 0 if n_train is None else _size(n_train, total, "n_train")
        t = total - c - tr
    else:
        t = _size(n_test, total, "n_test")
        tr = total - c - t if n_train is None else _size(n_train, total, "n_train")
    if c + max(t, 0) > total:
        raise DataError(
            f"asked for {c} calibration (n_calib) + {max(t, 0)} test (n_test) examples, but there are only {total}"
        )
    if min(t, tr) < 0 or c + t + tr > total:
        raise DataError(f"asked for {c} calib + {t} test + {tr} train examples, but there are only {total}")
    asked = {"calibration": (n_calib, c), "test": (n_test, t), "train": (n_train, tr)}
    for what, (n, got) in asked.items():
        if got == 0 and (n is None and what == "test" or n is not None and n > 0):
            raise DataError(f"{what} split is empty: asked for {n!r} of {total} examples")
    idx = {"calib": order[:c], "test": order[c : c + t], "train": order[total - tr :] if tr else []}
    parts = {k: [examples[i] for i in v] for k, v in idx.items()}
    ids = {k: [ex.id for ex in v] for k, v in parts.items()}
    manifest = {
        "version": 1,
        "seed": seed,
        "n_total": total,
        "requested": {"n_train": n_train, "n_calib": n_calib, "n_test": n_test},
        "sizes": {k: len(v) for k, v in parts.items()},
        "ids": ids,
        "sha256": {
            **{k: _ids_hash(v) for k, v in ids.items()},
            "all": _ids_hash(sorted(ex.id for ex in examples)),
        },
    }
    return Splits(train=parts["train"], calib=parts["calib"], test=parts["test"], manifest=manifest)


def splits_from_manifest(examples: Sequence[Example], manifest: dict[str, Any]) -> Splits:
    """Rebuild the splits a manifest records from ``examples`` (checking the id hashes), e.g. to
    evaluate on exactly the test questions a saved run held out."""
    by_id = {ex.id: ex for ex in examples}
    parts: dict[str, list[Example]] = {}
    for name in ("train", "calib", "test"):
        ids = manifest["ids"][name]
        if _ids_hash(ids) != manifest["sha256"][name]:
            raise DataError(f"manifest {name} ids do not match their recorded hash")
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(
                f"{len(missing)} {name} id(s) of the manifest are not in the data, e.g. {missing[:3]}"
            )
        parts[name] = [by_id[i] for i in ids]
    return Splits(train=parts["train"], calib=parts["calib"], test=parts["test"], manifest=manifest)


def sample(examples: Sequence[Example], n: int | None, seed: int = 0) -> list[Example]:
    """A seeded subset of ``n`` examples in their input order (all of them when ``n`` is None or
    at least ``len(examples)``). Subsets are nested: the n chosen are among the n+1 chosen."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise DataError(f"sample size must be a positive int, got {n!r}")
    if n is None or n >= len(examples):
        return list(examples)
    chosen = sorted(_permutation(examples, seed)[:n])
    return [examples[i] for i in chosen]
