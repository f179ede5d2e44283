"""``run_eval``: the whole evaluation of one model -- build the methods, evaluate each task, compare
every method with the reference, write ``results.json`` / ``results.md`` -- and reading results back.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdecode.eval.choices import calibration_choices, mc_choice_item, truthfulqa_mc_average
from svdecode.eval.commonsense import evaluate_commonsense
from svdecode.eval.compare import paired_comparisons
from svdecode.eval.curves import CURVE_TASKS, mu_curve
from svdecode.eval.judges import Judge
from svdecode.eval.methods import (
    NOT_IMPLEMENTED,
    STANDARD_METHODS,
    MethodSet,
    MethodSpec,
    build_methods,
    lam_json,
)
from svdecode.eval.strengths import model_fingerprint
from svdecode.eval.truthfulqa_gen import evaluate_truthfulqa_gen
from svdecode.eval.truthfulqa_mc import evaluate_mc, mc_prompt
from svdecode.fileio import jsonable, slug, write_json_atomic, write_text_atomic
from svdecode.objectives import DEFAULT_OBJECTIVE, ChoiceItem, ItemMetric, choice_accuracy

log = logging.getLogger("svdecode")


SCHEMA = "svdecode.eval/1"


TASKS = ("truthfulqa_mc", "commonsense", "truthfulqa_gen")


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in (
        "svdecode",
        "torch",
        "transformers",
        "peft",
        "numpy",
        "sacrebleu",
        "rouge-score",
        "matplotlib",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _default_data(task: str) -> list[Any]:
    from svdecode import data

    if task == "truthfulqa_mc":
        return data.load_truthfulqa_mc()
    if task == "commonsense":
        return data.load_commonsense("all", "test")
    if task == "truthfulqa_gen":
        return data.load_truthfulqa_generation()
    raise ValueError(f"unknown task {task!r}; choose from {TASKS}")


def _limit(task: str, items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded subset (:func:`svdecode.data.sample`): per dataset for commonsense."""
    from svdecode import data

    if limit is None:
        return list(items)
    if task != "commonsense":
        return data.sample(items, limit, seed)
    by_ds: dict[str, list[Any]] = {}
    for ex in items:
        by_ds.setdefault(ex.dataset, []).append(ex)
    chosen = {ex.id for exs in by_ds.values() for ex in data.sample(exs, limit, seed)}
    return [ex for ex in items if ex.id in chosen]


def run_eval(
    model,
    out_dir: str | Path,
    tasks: Sequence[str] = ("truthfulqa_mc",),
    *,
    method_names: Sequence[str] = STANDARD_METHODS,
    calib: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
    methods: MethodSet | Mapping[str, MethodSet] | None = None,
    data: Mapping[str, Sequence[Any]] | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    judge: Judge | None = None,
    reference: str = "peft",
    score_lam: float | None = None,
    alpha: float | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    estimator: str | None = None,
    guard: bool = True,
    folds: int = 5,
    bins: int = 3,
    mc_prompt_style: str = "qa_primer",
    max_length: int | None = None,
    n_boot: int = 2000,
    progress: bool = True,
    run_info: Mapping[str, Any] | None = None,
    mu_curves: bool = True,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` for every method and write ``results.json`` and
    ``results.md`` (atomically) plus per-item caches and calibration mu*_t arrays in ``out_dir``.

    ``tasks``: any of "truthfulqa_mc", "commonsense", "truthfulqa_gen". ``data`` maps a task to
    its items (MCItems or Examples); missing tasks load the shared data. ``limit``: a seeded
    subset (per dataset for commonsense). Methods: a prebuilt :class:`MethodSet` (or one per
    task), else built with :func:`build_methods` from ``method_names`` and ``calib`` (calibration
    pairs, shared or per task; they must not overlap the test ids). ``reference``: the method
    every other one is paired against. ``run_info``: free-form facts about the run stored in
    ``config.run_info`` (e.g. ``{"warmstart_fraction": 0.5}`` for the warm-start plot).
    ``max_new_tokens`` defaults to 32 (commonsense) and 50 (TruthfulQA generation).
    ``mu_curves``: for TruthfulQA MC and commonsense, one more scoring pass over the test items
    gives the test metric at every strength (the ORACLE curve, :mod:`svdecode.eval.curves`).
    Rerunning with the same arguments resumes from the caches.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; choose from {TASKS}")
    run = _RunSettings(
        out / "cache", batch_size, max_new_tokens, mc_prompt_style, max_length, n_boot, seed, progress
    )
    config = {
        "tasks": list(tasks),
        "method_names": list(method_names),
        "seed": seed,
        "limit": limit,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "reference": reference,
        "score_lam": lam_json(score_lam),
        "alpha": float(model.steering.alpha if alpha is None else alpha),
        "objective": estimator or objective,
        "guard": guard,
        "folds": folds,
        "confidence_bins": bins,
        "mc_prompt_style": mc_prompt_style,
        "max_length": max_length,
        "n_boot": n_boot,
        "model": _model_record(model),
        "run_info": dict(run_info or {}),
    }
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "versions": library_versions(),
        "not_implemented": dict(NOT_IMPLEMENTED),
        "tasks": {},
    }
    for task in tasks:
        items = list(data[task]) if data is not None and task in data else _default_data(task)
        items = _limit(task, items, limit, seed)
        if isinstance(methods, MethodSet):
            mset = methods
        elif isinstance(methods, Mapping):
            mset = methods[task]
        else:
            task_calib = calib.get(task) if isinstance(calib, Mapping) else calib
            _check_disjoint(task, task_calib, items)
            task_choices, metric = calibration_choice_items(task, task_calib, mc_prompt_style)
            mset = build_methods(
                model,
                task_calib,
                method_names,
                alpha=alpha,
                objective=estimator or objective,
                choices=task_choices,
                choice_metric=metric,
                guard=guard,
                folds=folds,
                bins=bins,
                score_lam=score_lam,
                seed=seed,
                batch_size=batch_size,
                max_length=max_length,
                progress=progress,
                cache_dir=run.cache_dir / "calibration",
            )
        res = _evaluate_task(task, model, items, list(mset), judge, run)
        if mu_curves and task in CURVE_TASKS:
            res["mu_curve"] = mu_curve(
                model, task, items, mset, mc_prompt_style=mc_prompt_style, batch_size=batch_size,
                max_length=max_length, cache_dir=run.cache_dir, progress=progress, n_boot=n_boot, seed=seed,
            )  # fmt: skip
        res["methods"] = _method_records(task, mset, out)
        res["paired"] = paired_comparisons(
            task, res["items"], _comparison_pairs(res, mset, reference), n_boot=n_boot, seed=seed
        )
        res["n_items"] = len(items)
        results["tasks"][task] = res
    write_results(results, out)
    return results


@dataclass(frozen=True)
class _RunSettings:
    """The run-wide options every task evaluation takes."""

    cache_dir: Path
    batch_size: int
    max_new_tokens: int | None
    mc_prompt_style: str
    max_length: int | None
    n_boot: int
    seed: int
    progress: bool


def _model_record(model) -> dict[str, Any]:
    return {
        "base_model": model.steering.base_model,
        "adapted_model": model.steering.adapted_model,
        "adapter_type": model.steering.adapter_type,
        "streams": getattr(model.streams, "kind", ""),
        "fingerprint": model_fingerprint(model),
        "dtype": str(model.dtype),
        "device": str(model.device),
    }


def calibration_choice_items(
    task: str, calib: Sequence[Any] | None, mc_prompt_style: str
) -> tuple[list[ChoiceItem] | None, ItemMetric]:
    """The calibration examples' multiple-choice view for the task objective and the guard:
    TruthfulQA MC answers after the evaluation's own MC prompt, commonsense label options."""
    if not calib:
        return None, choice_accuracy
    if task.startswith("truthfulqa"):
        from svdecode.data import load_truthfulqa_mc

        by_id = {it.id: it for it in load_truthfulqa_mc()}
        items = [
            mc_choice_item(by_id[c.id], mc_prompt(by_id[c.id].question, mc_prompt_style))
            for c in calib
            if getattr(c, "id", None) in by_id
        ]
        return (items or None), truthfulqa_mc_average
    return calibration_choices(calib)


def _check_disjoint(task: str, calib: Sequence[Any] | None, items: Sequence[Any]) -> None:
    """Calibration pairs must never be test items."""
    if calib is None:
        return
    test_ids = {it.id for it in items}
    overlap = [getattr(c, "id", None) for c in calib if getattr(c, "id", None) in test_ids]
    if overlap:
        raise ValueError(
            f"{task}: {len(overlap)} calibration example(s) are also test items, e.g. {overlap[:3]}"
        )


def _evaluate_task(
    task: str, model, items: Sequence[Any], specs: list[MethodSpec], judge: Judge | None, run: _RunSettings
) -> dict[str, Any]:
    common = dict(batch_size=run.batch_size, cache_dir=run.cache_dir, progress=run.progress, seed=run.seed)
    if task == "truthfulqa_mc":
        return evaluate_mc(
            model, items, specs, prompt_style=run.mc_prompt_style, max_length=run.max_length, n_boot=run.n_boot,
            **common,
        )  # fmt: skip
    if task == "commonsense":
        return evaluate_commonsense(model, items, specs, max_new_tokens=run.max_new_tokens or 32, **common)
    return evaluate_truthfulqa_gen(
        model, items, specs, judge, max_new_tokens=run.max_new_tokens or 50, **common
    )


def _method_records(task: str, mset: MethodSet, out: Path) -> dict[str, Any]:
    """Each method's spec as JSON; calibration mu*_t arrays are saved beside the results for the
    report's histograms."""
    records = {}
    for spec in mset:
        sj = spec.to_json()
        key = spec.calibration.get("key")
        if key is not None and key in mset.token_mu and len(mset.token_mu[key]):
            rel = Path("token_mu") / task / f"{slug(key)}.npy"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(out / rel, mset.token_mu[key])
            sj["token_mu_file"] = str(rel)
        records[spec.name] = sj
    return records


def _comparison_pairs(res: Mapping[str, Any], mset: MethodSet, reference: str) -> list[tuple[str, str]]:
    """Every method against ``reference``, plus each spec's own reference (e.g. its decoding's PEFT)."""
    present = list(res["items"])
    pairs = [(m, reference) for m in present if m != reference and reference in present]
    pairs += [
        (s.name, s.reference)
        for s in mset
        if s.reference and s.reference in present and s.name in present and s.reference != reference
    ]
    return pairs


def write_results(results: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` atomically (temp file + ``os.replace``)."""
    from svdecode.eval.report import results_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = jsonable(results)
    json_path = write_json_atomic(out / "results.json", clean)
    md_path = write_text_atomic(out / "results.md", results_markdown(clean))
    return json_path, md_path


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` (a file or the folder holding it) and check its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    data = json.loads(path.read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {data.get('schema')!r} is not {SCHEMA!r}")
    return data
