"""``run_eval``: the whole evaluation of one model -- build the methods, evaluate each task, compare
every method with the reference, write ``results.json`` / ``results.md`` -- and reading results back.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdecode.calibration.config import CalibrationConfig, split_options
from svdecode.calibration.objectives import (
    ChoiceItem,
    ItemMetric,
)
from svdecode.catalog import TRUTHFULQA_MC
from svdecode.checks import UNIT_INTERVAL, check
from svdecode.errors import InputError
from svdecode.eval.cache import merge_rank_caches, rank_cache_dir
from svdecode.eval.compare import paired_comparisons
from svdecode.eval.curves import mu_curve
from svdecode.eval.judges import Judge
from svdecode.eval.methods import (
    NOT_IMPLEMENTED,
    MethodSet,
    MethodSpec,
    _specs_for,
    build_methods,
    expand_method_names,
    lam_json,
)
from svdecode.eval.options import EvalOptions
from svdecode.eval.report import results_markdown
from svdecode.eval.strengths import model_fingerprint
from svdecode.eval.tasks import get_task
from svdecode.fileio import jsonable, read_json_file, short_hash, slug, write_json_atomic, write_text_atomic
from svdecode.runs import distributed, rundir
from svdecode.versions import HARNESS_DEPENDENCIES, dependency_versions

log = logging.getLogger("svdecode")

TASKS_DEFAULT = (TRUTHFULQA_MC,)


SCHEMA = "svdecode.eval/1"


def library_versions() -> dict[str, str]:
    """The library versions an evaluation records: the core's list plus the harness's metrics and plots."""
    return {"platform": platform.platform(), **dependency_versions(HARNESS_DEPENDENCIES)}


def run_eval(
    model,
    out_dir: str | Path,
    tasks: Sequence[str] = TASKS_DEFAULT,
    *,
    calib: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
    methods: MethodSet | Mapping[str, MethodSet] | None = None,
    data: Mapping[str, Sequence[Any]] | None = None,
    judge: Judge | None = None,
    options: EvalOptions | None = None,
    calibration: CalibrationConfig | None = None,
    run_info: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` for every method and write ``results.json`` and
    ``results.md`` (atomically) plus per-item caches and calibration mu*_t arrays in ``out_dir``.

    ``tasks``: names in the task registry :data:`svdecode.eval.tasks.TASKS` (TruthfulQA MC,
    commonsense, TruthfulQA generation). ``data`` maps a task to its items (MCItems or Examples);
    missing tasks load the shared data. Methods: a prebuilt :class:`MethodSet` (or one per task),
    else built with :func:`build_methods` from ``options.method_names`` and ``calib``
    (calibration pairs, shared or per task; they must not overlap the test ids). ``options``
    (:class:`~svdecode.eval.options.EvalOptions`): the methods, reference, limit, seed, batch
    size, ...; ``calibration`` (:class:`~svdecode.calibration.config.CalibrationConfig`): how the
    calibrated methods are calibrated (objective, guard, folds, bins, alpha), judged on the
    calibration questions' own choices; its seed, batch size, max_length and progress are the
    run's. Keyword arguments set the fields of either by name (``seed=1``, ``folds=3``,
    ``estimator`` is the old name of ``objective``), as ``generate`` takes overrides of its
    ``GenerationConfig``. ``run_info``: free-form facts about the run stored in
    ``config.run_info`` (e.g. ``{"warmstart_fraction": 0.5}`` for the warm-start plot).
    A calibration the model itself just ran with the same request (e.g. ``svdecode run``'s) is
    reused, not computed again.
    Rerunning with the same arguments resumes from the caches; the run manifest
    (:mod:`svdecode.runs.rundir`) records what the evaluation was asked, and a directory holding an
    evaluation asked for something else is refused unless ``overwrite=True`` (which replaces its
    results; per-item caches are reused only where their settings match).
    """
    out = Path(out_dir)
    opts, cal = split_options(kwargs, options or EvalOptions(), calibration or CalibrationConfig())
    opts = dataclasses.replace(opts, method_names=tuple(opts.method_names))
    for t in tasks:
        get_task(t)
    opts.validate()
    cal = cal.replace(
        seed=opts.seed, batch_size=opts.batch_size, max_length=opts.max_length, progress=opts.progress
    ).validate()
    if methods is None:
        check_method_names(opts.method_names)
    check_eval_dir(out, overwrite)
    cache_dir = out / "cache"
    config = _eval_config(model, tasks, opts, cal)
    config["run_info"] = dict(run_info or {})
    task_items = {
        name: get_task(name).subset(
            list(data[name]) if data is not None and name in data else get_task(name).load(),
            opts.limit,
            opts.seed,
        )
        for name in tasks
    }
    request = _eval_request(config, task_items, calib, methods)
    with rundir.locked(out):
        distributed.on_main(lambda: _start_eval_dir(out, request, overwrite))
        results: dict[str, Any] = {
            "schema": SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": config,
            "versions": library_versions(),
            "not_implemented": dict(NOT_IMPLEMENTED),
            "tasks": {},
        }
        for name, items in task_items.items():
            mset = _task_methods(name, model, items, methods, calib, opts, cal, cache_dir)
            res = _task_results(name, model, items, mset, judge, opts, out)
            if distributed.is_main():  # the others scored their share; the main process reports
                results["tasks"][name] = res
        return distributed.on_main(lambda: _finish_eval(results, out, request))


def _start_eval_dir(out: Path, request: Mapping[str, Any], overwrite: bool) -> None:
    _claim_eval_dir(out, request, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rundir.record_stage(out, "evaluation", request, [], status="running")


def _finish_eval(results: dict[str, Any], out: Path, request: Mapping[str, Any]) -> dict[str, Any]:
    write_results(results, out)
    rundir.record_stage(out, "evaluation", request, ["results.json", "results.md", "token_mu"])
    return results


def _task_results(name, model, items, mset: MethodSet, judge, opts: EvalOptions, out: Path) -> dict[str, Any]:
    """One task evaluated: every method's results, its strength curve, records and comparisons."""
    family = get_task(name)
    res = _evaluate_shared(family, model, items, list(mset), judge, opts, out / "cache")
    if opts.mu_curves and family.curve:
        res["mu_curve"] = mu_curve(
            model, name, items, mset, mc_prompt_style=opts.mc_prompt_style, batch_size=opts.batch_size,
            max_length=opts.max_length, cache_dir=out / "cache", progress=opts.progress, n_boot=opts.n_boot,
            seed=opts.seed,
        )  # fmt: skip
    if not distributed.is_main():
        return res
    res["methods"] = _method_records(name, mset, out)
    res["paired"] = paired_comparisons(
        name, res["items"], _comparison_pairs(res, mset, opts.reference), n_boot=opts.n_boot, seed=opts.seed
    )
    res["n_items"] = len(items)
    return res


def _evaluate_shared(
    family, model, items, specs, judge, opts: EvalOptions, cache_dir: Path
) -> dict[str, Any]:
    """``family.evaluate``; under a launcher each process scores every world_size-th item into its
    own per-item caches (the main process into the run's), the main process merges them and
    reports from the merged caches (no model pass left), and hands the result to the others."""
    if not distributed.active():
        return family.evaluate(model, items, specs, judge, opts, cache_dir)
    mine = [items[i] for i in distributed.shard(len(items))]
    own = cache_dir if distributed.is_main() else rank_cache_dir(cache_dir, distributed.rank())
    family.evaluate(model, mine, specs, judge, opts, own)
    distributed.barrier()

    def report() -> dict[str, Any]:
        merge_rank_caches(cache_dir)
        return family.evaluate(model, items, specs, judge, opts, cache_dir)

    return distributed.on_main(report)


def _eval_config(model, tasks: Sequence[str], opts: EvalOptions, cal: CalibrationConfig) -> dict:
    """The settings recorded in results.json (and, without run_info, compared for reuse)."""
    return {
        "tasks": list(tasks),
        "method_names": list(opts.method_names),
        "seed": opts.seed,
        "limit": opts.limit,
        "batch_size": opts.batch_size,
        "max_new_tokens": opts.max_new_tokens,
        "reference": opts.reference,
        "score_lam": lam_json(opts.score_lam),
        "alpha": float(model.steering.alpha if cal.alpha is None else cal.alpha),
        **{k: v for k, v in cal.record().items() if k != "seed"},
        "mc_prompt_style": opts.mc_prompt_style,
        "max_length": opts.max_length,
        "n_boot": opts.n_boot,
        "model": _model_record(model),
    }


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


def _task_methods(
    name: str, model, items, methods, calib, opts: EvalOptions, cal: CalibrationConfig, cache_dir: Path
) -> MethodSet:
    """The task's methods: prebuilt, or built (and calibrated) from their names."""
    if isinstance(methods, MethodSet):
        return methods
    if isinstance(methods, Mapping):
        return methods[name]
    task_calib = calib.get(name) if isinstance(calib, Mapping) else calib
    _check_disjoint(name, task_calib, items)
    choices, metric = calibration_choice_items(name, task_calib, opts.mc_prompt_style)
    return build_methods(
        model,
        task_calib,
        opts.method_names,
        cal,
        choices=choices,
        choice_metric=metric,
        score_lam=opts.score_lam,
        cache_dir=cache_dir / "calibration",
    )


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
    name: str, calib: Sequence[Any] | None, mc_prompt_style: str
) -> tuple[list[ChoiceItem] | None, ItemMetric]:
    """The calibration examples' multiple-choice view for the task objective and the guard
    (:meth:`svdecode.eval.tasks.TaskFamily.calibration_choices`)."""
    return get_task(name).calibration_choices(calib, mc_prompt_style)


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
