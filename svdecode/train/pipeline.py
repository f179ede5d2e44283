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
from svdecode.calibration.config import DEFAULT_ALPHA, CalibrationConfig, split_options
from svdecode.calibration.config import calibration_request as core_request
from svdecode.calibration.objectives import ChoiceItem, ItemMetric
from svdecode.checks import (
    POSITIVE_INT,
    SEED,
    UNIT_INTERVAL,
    check,
    check_model_source,
)
from svdecode.data import Example, Splits, make_splits
from svdecode.errors import InputError
from svdecode.model.config import CONFIG_NAME
from svdecode.model.loading import load_tokenizer, portable_base_name
from svdecode.model.steered_model import SteeredModel
from svdecode.runs import distributed, rundir
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

ChoiceView = tuple[list[ChoiceItem] | None, ItemMetric | None]


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


@dataclass(frozen=True)
class SplitOptions:
    """Which examples of the pool each stage gets: ``n_calib`` held out for calibration,
    ``n_test`` (optional) for testing, ``n_train`` (default: all the rest) trained on -- counts
    >= 1 or fractions in (0, 1] -- drawn with ``seed``; ``source`` names the pool in the split
    manifest, so ``svdecode eval`` can reload the calibration split from it alone."""

    n_train: int | float | None = None
    n_calib: int | float = 128
    n_test: int | float | None = None
    seed: int = 0
    source: str | None = None

    def validate(self) -> SplitOptions:
        _check_sizes(self.n_train, self.n_calib, self.n_test)
        check("seed", self.seed, SEED)
        return self


def calibration_request(
    splits: Splits, cal: CalibrationConfig, view: ChoiceView, adapter: str | None
) -> dict[str, Any]:
    """What the calibration stage is asked (:func:`svdecode.calibration.config.calibration_request`):
    its settings and choice items, the calibration split, alpha and the adapter (by content hash)."""
    data = {"n": len(splits.calib), "ids_sha256": splits.manifest["sha256"]["calib"]}
    return core_request(cal, data, adapter, *view, alpha=cal.alpha, method="svdecode")


def run_pipeline(
    pool: Sequence[Example],
    out_dir: str | Path,
    cfg: WarmstartConfig | None = None,
    *,
    base: str = "default",
    splits: SplitOptions | None = None,
    calibration: CalibrationConfig | None = None,
    choices: Callable[[Sequence[Example]], ChoiceView] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> PipelineResult:
    """Warm-start on the train split of ``pool``, calibrate on its calibration split, save.

    ``splits`` (:class:`SplitOptions`): the split sizes, seed and the pool's name; without
    ``n_train`` everything not in the calibration/test splits is trained on. ``calibration``
    (:class:`~svdecode.calibration.config.CalibrationConfig`): how the strength is calibrated (its
    ``alpha``, default 0.1, is the saved model's mask); keyword arguments set the fields of
    either by name (``n_calib=64``, ``objective="nll"``; ``seed`` sets both). ``choices`` maps
    the calibration examples to their multiple-choice view and task metric (e.g.
    :func:`svdecode.eval.choices.calibration_choices`). A finished stage in ``out_dir`` is reused
    only when its recorded request (options, base, data ids) equals this one and its files are
    unchanged; a different one stops with the difference, unless ``overwrite=True``, which redoes
    both stages. ``resume`` continues an interrupted warm-start; ``force`` loads a reused adapter
    onto a base whose fingerprint differs. ``trainer_args=`` (keyword): more TrainingArguments for
    the warm-start (FSDP, DeepSpeed). Under a launcher every process runs this: the warm-start trains
    data-parallel, calibration scores a share of the items on each.
    """
    cfg = cfg or WarmstartConfig()
    validate(cfg)
    trainer_args = kwargs.pop("trainer_args", None)
    sp, cal = split_options(kwargs, splits or SplitOptions(), calibration or CalibrationConfig())
    sp.validate()
    cal = cal.replace(alpha=DEFAULT_ALPHA if cal.alpha is None else cal.alpha, progress=progress).validate()
    check_model_source(base)
    split = split_pool(pool, sp.n_train, sp.n_calib, sp.n_test, sp.seed)
    if sp.source:  # lets `svdecode eval` reload the calibration split from the manifest alone
        split.manifest["source"] = sp.source
    if not split.train:
        raise WarmstartError(
            "the training split is empty: ask for n_train or leave examples outside calib/test"
        )
    out = Path(out_dir)
    base_name = portable_base_name(base)
    with rundir.locked(out):
        ws_request = warmstart_request(cfg.to_dict(), base_name, split.train, split.manifest)

        def reusable() -> dict[str, Any] | None:
            finish_publish(out)
            return (
                None
                if overwrite
                else rundir.check_reuse(out, "warmstart", ws_request, "warm-start", REUSE_IGNORED)
            )

        reuse = distributed.on_main(reusable)
        stages, seconds = [], {}
        if reuse is None or reuse["status"] != "complete" or partial_dir(out).exists():
            t0 = time.time()
            result = warmstart(
                split.train, out, cfg, base=base, manifest=split.manifest, resume=resume,
                overwrite=overwrite, progress=progress, trainer_args=trainer_args,
            )  # fmt: skip
            seconds["warmstart"] = time.time() - t0
            stages.append("warmstart")
            info = result.info
        else:
            log.info("warm-start in %s matches this request: reusing it", out)
            info = read_info(out)
        view = choices(split.calib) if choices is not None else (None, None)
        model, calib = _calibrated(out, split, base, cal, view, force, stages, seconds)
    return PipelineResult(out, split, model, info, stages, seconds, calib)


def _calibrated(
    out: Path, splits: Splits, base: str, cal: CalibrationConfig, view: ChoiceView, force: bool,
    stages: list[str], seconds: dict[str, float],
) -> tuple[SteeredModel, CalibrationResult | None]:  # fmt: skip
    """The steered model of ``out`` (and the calibration result, when one ran): the recorded
    calibration when it was asked the same (and the warm-start was not redone), else a fresh one, saved."""
    request = calibration_request(splits, cal, view, rundir.adapter_digest(out))
    redo = "warmstart" in stages or not (out / CONFIG_NAME).exists()
    if not redo and distributed.on_main(
        lambda: rundir.check_reuse(out, "calibration", request, "calibration")
    ):
        log.info("calibration in %s matches this request: reusing it", out)
        return SteeredModel.from_pretrained(out, base=base, force=force), None
    t0 = time.time()
    peft_model = load_adapter(out, base, strict=not force)
    model = SteeredModel.from_peft(peft_model, load_tokenizer(str(out)), alpha=cal.alpha)
    model.adapter_digest = rundir.adapter_digest(out)
    choice_items, metric = view
    extra = {"choice_metric": metric} if metric is not None else {}
    result = model.calibrate(splits.calib, cal, choices=choice_items, **extra)
    model.save_pretrained(out, request=request)
    seconds["calibrate"] = time.time() - t0
    stages.append("calibrate")
    return model, result
