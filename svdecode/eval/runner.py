"""``run_eval``: the whole evaluation of one model -- build the methods, evaluate each task, compare
every method with the reference, write ``results.json`` / ``results.md`` -- and reading results back.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdecode.calibration.objectives import (
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
    ChoiceItem,
    ItemMetric,
    choice_accuracy,
)
from svdecode.checks import NONNEGATIVE_INT, POSITIVE_INT, SEED, UNIT_INTERVAL, check
from svdecode.errors import InputError
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
    _specs_for,
    build_methods,
    expand_method_names,
    lam_json,
)
from svdecode.eval.report import results_markdown
from svdecode.eval.strengths import model_fingerprint
from svdecode.eval.truthfulqa_gen import evaluate_truthfulqa_gen
from svdecode.eval.truthfulqa_mc import evaluate_mc, mc_prompt
from svdecode.fileio import jsonable, read_json_file, short_hash, slug, write_json_atomic, write_text_atomic
from svdecode.runs import rundir
from svdecode.versions import HARNESS_DEPENDENCIES, dependency_versions

log = logging.getLogger("svdecode")


SCHEMA = "svdecode.eval/1"


TASKS = ("truthfulqa_mc", "commonsense", "truthfulqa_gen")


def library_versions() -> dict[str, str]:
    """The library versions an evaluation records: the core's list plus the harness's metrics and plots."""
    return {"platform": platform.platform(), **dependency_versions(HARNESS_DEPENDENCIES)}


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
    overwrite: bool = False,
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
    Calibrated methods apply ``objective`` (``estimator`` is its old name) with the guard
    (``guard``, ``folds``) and confidence bins (``bins``) of :func:`svdecode.calibration.objectives.choose_strength`,
    judged on the calibration questions' own choices. ``mu_curves``: for TruthfulQA MC and
    commonsense, one more scoring pass over the test items gives the test metric at every strength
    (the ORACLE curve, :mod:`svdecode.eval.curves`).
    Rerunning with the same arguments resumes from the caches; the run manifest
    (:mod:`svdecode.runs.rundir`) records what the evaluation was asked, and a directory holding an
    evaluation asked for something else is refused unless ``overwrite=True`` (which replaces its
    results; per-item caches are reused only where their settings match).
    """
    out = Path(out_dir)
    _check_args(tasks, limit, seed, batch_size, max_new_tokens, max_length, n_boot)
    check("alpha", alpha, UNIT_INTERVAL, optional=True)
    objective = estimator or objective
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    check("folds", folds, POSITIVE_INT)
    check("bins", bins, NONNEGATIVE_INT)
    cal = {"objective": objective, "guard": guard, "folds": folds, "bins": bins}
    if methods is None:
        check_method_names(method_names)
    check_eval_dir(out, overwrite)
    run = _RunSettings(
        out / "cache", batch_size, max_new_tokens, mc_prompt_style, max_length, n_boot, seed, progress
    )
    config = _eval_config(model, tasks, method_names, seed, limit, run, reference, score_lam, alpha, cal)
    config["run_info"] = dict(run_info or {})
    task_items = {
        task: _limit(
            task, list(data[task]) if data is not None and task in data else _default_data(task), limit, seed
        )
        for task in tasks
    }
    request = _eval_request(config, task_items, calib, methods)
    with rundir.locked(out):
        _claim_eval_dir(out, request, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        rundir.record_stage(out, "evaluation", request, [], status="running")
        results: dict[str, Any] = {
            "schema": SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config,
            "versions": library_versions(),
            "not_implemented": dict(NOT_IMPLEMENTED),
            "tasks": {},
        }
        for task, items in task_items.items():
            mset = _task_methods(task, model, items, methods, calib, method_names, run, alpha, cal, score_lam)
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
        rundir.record_stage(out, "evaluation", request, ["results.json", "results.md", "token_mu"])
    return results


def _eval_config(model, tasks, method_names, seed, limit, run, reference, score_lam, alpha, cal) -> dict:
    """The settings recorded in results.json (and, without run_info, compared for reuse)."""
    return {
        "tasks": list(tasks),
        "method_names": list(method_names),
        "seed": seed,
        "limit": limit,
        "batch_size": run.batch_size,
        "max_new_tokens": run.max_new_tokens,
        "reference": reference,
        "score_lam": lam_json(score_lam),
        "alpha": float(model.steering.alpha if alpha is None else alpha),
        **cal,
        "mc_prompt_style": run.mc_prompt_style,
        "max_length": run.max_length,
        "n_boot": run.n_boot,
        "model": _model_record(model),
    }


def _check_args(tasks, limit, seed, batch_size, max_new_tokens, max_length, n_boot) -> None:
    for t in tasks:
        if t not in TASKS:
            raise InputError(f"unknown task {t!r}; choose from {TASKS}")
    check("limit", limit, POSITIVE_INT, optional=True)
    check("seed", seed, SEED)
    check("batch_size", batch_size, POSITIVE_INT)
    check("max_new_tokens", max_new_tokens, POSITIVE_INT, optional=True)
    check("max_length", max_length, POSITIVE_INT, optional=True)
    check("n_boot", n_boot, POSITIVE_INT)


def _ids_sha(items: Sequence[Any] | None) -> str | None:
    """A hash of the items' ids ((prompt, answer) pairs without ids: of their text)."""
    if items is None:
        return None
    return short_hash([getattr(it, "id", None) or list(it) for it in items])


def _eval_request(
    config: Mapping[str, Any], task_items: Mapping[str, list[Any]], calib: Any, methods: Any
) -> dict[str, Any]:
    """What the evaluation is asked: its settings (not the free-form run_info), the model's
    fingerprint, and per task the test and calibration ids."""
    data = {}
    for task, items in task_items.items():
        task_calib = calib.get(task) if isinstance(calib, Mapping) else calib
        prebuilt = methods if isinstance(methods, MethodSet) else (methods or {}).get(task)
        data[task] = {
            "n": len(items),
            "ids_sha256": _ids_sha(items),
            "calib_sha256": _ids_sha(task_calib) if prebuilt is None else None,
            "prebuilt_methods": None if prebuilt is None else [s.name for s in prebuilt],
        }
    return {**{k: v for k, v in config.items() if k != "run_info"}, "data": data}


def check_eval_dir(out: str | Path, overwrite: bool) -> None:
    """Refuse, before any model work, an output directory that is a file, holds a model run, or
    was written by an older svdecode (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output directory {str(out)!r} is a file, not a directory")
    manifest = rundir.read_manifest(out) if out.is_dir() else None
    if manifest is not None and {"warmstart", "calibration"} & manifest["stages"].keys():
        raise rundir.RunDirError(
            f"{out} holds a model run ({', '.join(sorted(manifest['stages']))}), not an evaluation; write the "
            "evaluation to its own directory (--out)"
        )
    if not overwrite and rundir.is_legacy(out):
        rundir.check_reuse(out, "evaluation", {}, "evaluation")  # raises, naming the way out


def check_method_names(names: Sequence[str]) -> None:
    """Every method name (and its alpha/lam/estimator/decoding) valid, before any calibration."""

    def placeholder(name: str, method: str, alpha: float, **_: Any) -> MethodSpec:
        check(f"alpha of method {name!r}", alpha, UNIT_INTERVAL)
        return MethodSpec(name, method)

    if not names or not all(n.strip() for n in names):
        raise InputError(f"method names must not be empty, got {list(names)}")
    for name in expand_method_names(names):
        try:
            _specs_for(name, placeholder, 0.1, 0)
        except (ValueError, TypeError) as err:
            raise InputError(f"method {name!r}: {err}") from err


def _claim_eval_dir(out: Path, request: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse a directory holding another evaluation or another kind of run (unless overwrite)."""
    check_eval_dir(out, overwrite)
    if not overwrite:
        entry = rundir.check_reuse(out, "evaluation", request, "evaluation")
        if entry is not None and entry["status"] != "complete":
            log.warning("resuming the interrupted evaluation in %s from its per-item caches", out)
        return
    if (out / "results.json").exists():
        log.warning(
            "--overwrite: replacing the evaluation in %s (results.json, results.md, token_mu/); its per-item "
            "caches in %s are kept and reused only where their settings match",
            out,
            out / "cache",
        )


def _task_methods(task, model, items, methods, calib, method_names, run, alpha, cal, score_lam) -> MethodSet:
    """The task's methods: prebuilt, or built (and calibrated) from their names."""
    if isinstance(methods, MethodSet):
        return methods
    if isinstance(methods, Mapping):
        return methods[task]
    task_calib = calib.get(task) if isinstance(calib, Mapping) else calib
    _check_disjoint(task, task_calib, items)
    choices, metric = calibration_choice_items(task, task_calib, run.mc_prompt_style)
    return build_methods(
        model,
        task_calib,
        method_names,
        alpha=alpha,
        choices=choices,
        choice_metric=metric,
        **cal,
        score_lam=score_lam,
        seed=run.seed,
        batch_size=run.batch_size,
        max_length=run.max_length,
        progress=run.progress,
        cache_dir=run.cache_dir / "calibration",
    )


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
    data = read_json_file(path, "results file")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: schema {schema!r} is not {SCHEMA!r}")
    return data
