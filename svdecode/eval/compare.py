"""Paired comparisons between methods on the same items (paired bootstrap 95% CIs and p-values)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from svdecode.catalog import COMMONSENSE, TRUTHFULQA_GEN, TRUTHFULQA_MC
from svdecode.eval import metrics
from svdecode.eval.methods import as_float

log = logging.getLogger("svdecode")


def item_values(task: str, records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per-item values for paired comparisons: {(metric, subset): {id: value}}."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r in records:
        if r is None:
            continue
        if task == TRUTHFULQA_MC:
            vals = {k: as_float(r[k]) for k in ("MC1", "MC2", "MC3")}
            vals = {k: (0.0 if math.isnan(v) else v) for k, v in vals.items()}  # as aggregate_mc
            vals["MC_avg"] = (vals["MC1"] + vals["MC2"] + vals["MC3"]) / 3.0
            for k, v in vals.items():
                out.setdefault((k, "all"), {})[r["id"]] = v
        elif task == COMMONSENSE:
            v = float(r["correct"])
            out.setdefault(("accuracy", r["dataset"]), {})[r["id"]] = v
            out.setdefault(("accuracy", "all"), {})[r["id"]] = v
        elif task == TRUTHFULQA_GEN:
            t, i = r["truthful"] is True, r["informative"] is True
            out.setdefault(("%Truth", "all"), {})[r["id"]] = 100.0 * t
            out.setdefault(("%Info", "all"), {})[r["id"]] = 100.0 * i
            out.setdefault(("%Truth*Info", "all"), {})[r["id"]] = 100.0 * (t and i)
        else:
            raise ValueError(f"unknown task {task!r}")
    return out


def paired_comparisons(
    task: str,
    items: Mapping[str, Sequence[Mapping[str, Any]]],
    pairs: Sequence[tuple[str, str]],
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """For each (method, reference): mean(method - reference) on the items both have, with a
    paired-bootstrap 95% CI and p-value (:func:`svdecode.eval.metrics.paired_bootstrap`), per metric
    and subset (dataset for commonsense, "all" otherwise)."""
    vals = {name: item_values(task, recs) for name, recs in items.items()}
    out = []
    for method, ref in pairs:
        if method not in vals or ref not in vals or method == ref:
            continue
        for key, ref_vals in vals[ref].items():
            mine = vals[method].get(key)
            if not mine:
                continue
            ids = [i for i in ref_vals if i in mine]
            if not ids:
                continue
            res = metrics.paired_bootstrap(
                [ref_vals[i] for i in ids], [mine[i] for i in ids], n_boot=n_boot, seed=seed
            )
            out.append(
                {"task": task, "metric": key[0], "subset": key[1], "method": method, "reference": ref, **res}
            )
    return out
