"""``svdecode run``: warm-start -> calibrate mu_bar -> save the steering artifact, resumable by stage.

One output folder holds everything: the warm-started adapter with its tokenizer, split manifest
and training log (written by :mod:`svdecode.train`), then ``steering_config.json`` with mu_bar
and the calibration statistics, and the run manifest (:mod:`svdecode.runs.rundir`) recording what
each stage was asked. A rerun reuses a finished stage only when it was asked the same; otherwise
it stops, naming the difference, unless ``overwrite`` (which redoes every stage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svdecode.calibration.calibrate import CalibrationResult
from svdecode.calibration.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, ChoiceItem, ItemMetric
from svdecode.checks import (
    NONNEGATIVE_INT,
    POSITIVE_INT,
    SEED,
    UNIT_INTERVAL,
    Rule,
    check,
    check_model_source,
)
from svdecode.data import Example, Splits, make_splits
from svdecode.errors import InputError
from svdecode.fileio import short_hash
from svdecode.model.config import CONFIG_NAME
from svdecode.model.loading import load_tokenizer, portable_base_name
from svdecode.model.steered_model import SteeredModel
from svdecode.runs import rundir
from svdecode.train.adapters import load_adapter
from svdecode.train.checkpoints import (
    REUSE_IGNORED,
    finish_publish,
    partial_dir,
    read_info,
    warmstart_request,
)
from svdecode.train.config import WarmstartConfig, WarmstartError, validate
from svdecode.train.trainer import warmstart

log = logging.getLogger("svdecode")


@dataclass
class PipelineResult:
    out_dir: Path
    splits: Splits
    model: SteeredModel
    warmstart_info: dict
    stages_run: list[str]
    seconds: dict[str, float]
    calibration: CalibrationResult | None = None  # when calibration ran in this call


def split_pool(
    pool: Sequence[Example],
    n_train: int | float | None,
    n_calib: int | float,
    n_test: int | float | None,
    seed: int,
) -> Splits:
    """Train / calibration / (optional) test split of one pool of examples, seeded and recorded."""
    return make_splits(pool, n_calib=n_calib, n_test=n_test or 0, n_train=n_train, seed=seed)


def _check_sizes(n_train: Any, n_calib: Any, n_test: Any) -> None:
    """Counts are ints >= 1 (n_test may be 0), fractions floats in (0, 1]: 0 never means "all"."""
    for name, value, optional in (
        ("n_train", n_train, True),
        ("n_calib", n_calib, False),
        ("n_test", n_test, True),
    ):
        if value is None and optional:
            continue
        if isinstance(value, float) and not isinstance(value, bool):
            check(name, value, UNIT_INTERVAL)
            if value == 0:
                raise InputError(f"{name} must be a count >= 1 or a fraction in (0, 1], got 0.0")
        elif not (name == "n_test" and value == 0):
            check(name, value, POSITIVE_INT)


def calibration_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The recordable part of ``SteeredModel.calibrate`` options: objective, guard, folds, bins,
    seed, and which choice items (by id) and metric the task objective and the guard judge on."""
    choices = options.get("choices")
    metric = options.get("choice_metric")
    return {
        **{k: options[k] for k in ("objective", "guard", "folds", "bins", "seed") if k in options},
        "choices": None
        if not choices
        else {"n": len(choices), "ids_sha256": short_hash([c.id for c in choices])},
        "choice_metric": getattr(metric, "__name__", None) if choices else None,
    }


def calibration_request(
    splits: Splits, options: dict[str, Any], alpha: float, adapter: str | None
) -> dict[str, Any]:
    """What the calibration stage is asked: its examples, settings, alpha and the adapter (by
    content hash) it calibrates."""
    return {
        **calibration_settings(options),
        "alpha": alpha,
        "method": "svdecode",
        "data": {"n": len(splits.calib), "ids_sha256": splits.manifest["sha256"]["calib"]},
        "adapter_sha256": adapter,
    }


def run_pipeline(
    pool: Sequence[Example],
    out_dir: str | Path,
    cfg: WarmstartConfig | None = None,
    *,
    base: str = "default",
    n_train: int | float | None = None,
    n_calib: int | float = 128,
    n_test: int | float | None = None,
    seed: int = 0,
    objective: str = DEFAULT_OBJECTIVE,
    guard: bool = True,
    folds: int = 5,
    bins: int = 3,
    choices: Callable[[Sequence[Example]], tuple[list[ChoiceItem] | None, ItemMetric]] | None = None,
    alpha: float = 0.1,
    calib_batch_size: int = 8,
    source: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
) -> PipelineResult:
    """Warm-start on the train split of ``pool``, calibrate on its calibration split, save.

    Without ``n_train`` everything not in the calibration/test splits is trained on. A finished
    stage in ``out_dir`` is reused only when its recorded request (options, base, data ids) equals
    this one and its files are unchanged; a different one stops with the difference, unless
    ``overwrite=True``, which redoes both stages. ``resume`` continues an interrupted warm-start;
    ``force`` loads a reused adapter onto a base whose fingerprint differs. ``objective``,
    ``guard``, ``folds``, ``bins``: how the strength is calibrated (:meth:`SteeredModel.calibrate`);
    ``choices`` maps the calibration examples to their multiple-choice view and task metric
    (e.g. :func:`svdecode.eval.choices.calibration_choices`).
    """
    cfg = cfg or WarmstartConfig()
    validate(cfg)
    _check_sizes(n_train, n_calib, n_test)
    check("seed", seed, SEED)
    check("alpha", alpha, UNIT_INTERVAL)
    check("calib_batch_size", calib_batch_size, POSITIVE_INT)
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    check("folds", folds, Rule("int", lo=2))
    check("bins", bins, NONNEGATIVE_INT)
    check_model_source(base)
    splits = split_pool(pool, n_train, n_calib, n_test, seed)
    if source:  # lets `svdecode eval` reload the calibration split from the manifest alone
        splits.manifest["source"] = source
    if not splits.train:
        raise WarmstartError(
            "the training split is empty: ask for n_train or leave examples outside calib/test"
        )
    out = Path(out_dir)
    base_name = portable_base_name(base)
    with rundir.locked(out):
        finish_publish(out)
        ws_request = warmstart_request(cfg.to_dict(), base_name, splits.train, splits.manifest)
        reuse = (
            None
            if overwrite
            else rundir.check_reuse(out, "warmstart", ws_request, "warm-start", REUSE_IGNORED)
        )
        stages, seconds = [], {}
        if reuse is None or reuse["status"] != "complete" or partial_dir(out).exists():
            t0 = time.time()
            result = warmstart(
                splits.train, out, cfg, base=base, manifest=splits.manifest, resume=resume,
                overwrite=overwrite, progress=progress,
            )  # fmt: skip
            seconds["warmstart"] = time.time() - t0
            stages.append("warmstart")
            info = result.info
        else:
            log.info("warm-start in %s matches this request: reusing it", out)
            info = read_info(out)
        options = {"objective": objective, "guard": guard, "folds": folds, "bins": bins, "seed": seed}
        if choices is not None:
            options["choices"], options["choice_metric"] = choices(splits.calib)
        model, calib = _calibrated(
            out, splits, base, options, alpha, calib_batch_size, force, progress, stages, seconds
        )
    return PipelineResult(out, splits, model, info, stages, seconds, calib)


def _calibrated(
    out: Path, splits: Splits, base: str, options: dict[str, Any], alpha: float, batch_size: int, force: bool,
    progress: bool, stages: list[str], seconds: dict[str, float],
) -> tuple[SteeredModel, CalibrationResult | None]:  # fmt: skip
    """The steered model of ``out`` (and the calibration result, when one ran): the recorded
    calibration when it was asked the same (and the warm-start was not redone), else a fresh one, saved."""
    request = calibration_request(splits, options, alpha, rundir.adapter_digest(out))
    redo = "warmstart" in stages or not (out / CONFIG_NAME).exists()
    if not redo and rundir.check_reuse(out, "calibration", request, "calibration") is not None:
        log.info("calibration in %s matches this request: reusing it", out)
        return SteeredModel.from_pretrained(out, base=base, force=force), None
    t0 = time.time()
    peft_model = load_adapter(out, base, strict=not force)
    model = SteeredModel.from_peft(peft_model, load_tokenizer(str(out)), alpha=alpha)
    model.adapter_digest = rundir.adapter_digest(out)
    result = model.calibrate(splits.calib, batch_size=batch_size, progress=progress, **options)
    model.save_pretrained(out, request=request)
    seconds["calibrate"] = time.time() - t0
    stages.append("calibrate")
    return model, result
