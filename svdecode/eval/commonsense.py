"""Commonsense reasoning (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC, OBQA): greedy generation of
"the correct answer is <label>", strict label extraction, per-dataset accuracy with Wilson CIs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdecode.catalog import COMMONSENSE
from svdecode.eval import generation, labels, metrics
from svdecode.eval.cache import ItemCache, cache_path
from svdecode.eval.methods import MethodSpec
from svdecode.eval.strengths import model_fingerprint
from svdecode.fileio import short_hash

log = logging.getLogger("svdecode")


def same_generation_groups(methods: Sequence[MethodSpec]) -> dict[str, list[MethodSpec]]:
    groups: dict[str, list[MethodSpec]] = {}
    for m in methods:
        groups.setdefault(short_hash(m.key(scoring=False)), []).append(m)
    return groups


def share_within_group(
    group: Sequence[MethodSpec], examples: Sequence[Any], caches: Mapping[str, ItemCache]
) -> list:
    """Copy each record cached for one member of a same-settings group to the others; return the
    examples the group still has to generate."""
    for ex in examples:
        have = next((caches[m.name].get(ex.id) for m in group if ex.id in caches[m.name]), None)
        if have is not None:
            for m in group:
                if ex.id not in caches[m.name]:
                    caches[m.name].add(have)
    return [ex for ex in examples if ex.id not in caches[group[0].name]]


def evaluate_commonsense(
    model,
    examples: Sequence[Any],
    methods: Sequence[MethodSpec],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate an answer per example (LLM-Adapters prompt in ``Example.prompt``, stop at EOS or
    ``max_new_tokens``), extract the label strictly (:func:`svdecode.eval.labels.extract_label`) and
    report per-dataset accuracy with a Wilson 95% CI, n and the unparseable count.

    Methods with identical generation settings are generated once and shared.
    """
    for ex in examples:
        if ex.label is None:
            raise ValueError(f"commonsense example {ex.id} has no gold label")
    fp_common = {"task": COMMONSENSE, "max_new_tokens": max_new_tokens, "model": model_fingerprint(model)}
    caches = {
        m.name: ItemCache(cache_path(cache_dir, COMMONSENSE, m.name), {**fp_common, **m.key(scoring=False)})
        for m in methods
    }
    cached_counts = {m.name: sum(1 for ex in examples if ex.id in caches[m.name]) for m in methods}
    for group in same_generation_groups(methods).values():
        lead = group[0]
        todo = share_within_group(group, examples, caches)
        if not todo:
            continue
        gen = generation.generate_batches(
            model,
            lead,
            [ex.prompt for ex in todo],
            [ex.id for ex in todo],
            batch_size,
            max_new_tokens,
            progress,
            f"commonsense [{lead.name}]",
            seed=seed,
        )
        for sl, texts in gen:
            for ex, text in zip(todo[sl], texts, strict=True):
                pred = labels.extract_label(ex.dataset, text)
                rec = {
                    "id": ex.id,
                    "dataset": ex.dataset,
                    "gold": ex.label.lower(),
                    "output": text,
                    "pred": pred,
                    "pred_first_match": labels.extract_label(ex.dataset, text, mode="first"),
                    "correct": int(pred == ex.label.lower()),
                }
                for m in group:
                    caches[m.name].add(rec)
    items_out = {m.name: [caches[m.name].get(ex.id) for ex in examples] for m in methods}
    agg = {m.name: commonsense_metrics(items_out[m.name]) for m in methods}
    return {
        "config": {
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "label_extraction": "strict (whole-word, case-insensitive, ambiguous/invalid = unparseable)",
            "stop": "EOS or max_new_tokens",
        },
        "items": items_out,
        "metrics": agg,
        "cache": {
            m.name: {"cached": cached_counts[m.name], "computed": len(examples) - cached_counts[m.name]}
            for m in methods
        },
    }


def commonsense_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-dataset accuracy (Wilson CI, unparseable counts), macro average over datasets and
    micro accuracy over all items, from per-item records."""
    by_ds: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_ds.setdefault(r["dataset"], []).append(r)
    datasets = {}
    for ds, recs in by_ds.items():
        rep = labels.accuracy_report([r["gold"] for r in recs], [r["output"] for r in recs], ds)
        rep.pop("item_correct")
        rep.pop("preds")
        datasets[ds] = rep
    n = sum(len(v) for v in by_ds.values())
    k = sum(int(r["correct"]) for r in records)
    lo, hi = metrics.wilson_ci(k, n) if n else (0.0, 1.0)
    return {
        "datasets": datasets,
        "macro_avg": float(np.mean([d["accuracy"] for d in datasets.values()])) if datasets else float("nan"),
        "micro": {"n": n, "correct": k, "accuracy": k / n if n else float("nan"), "ci_lo": lo, "ci_hi": hi},
        "unparseable": sum(d["unparseable"] for d in datasets.values()),
    }
