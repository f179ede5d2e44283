"""``svdecode run``: warm-start -> calibrate mu_bar -> save the steering artifact, resumable by stage.

One output folder holds everything: the warm-started adapter with its tokenizer, split manifest
and training log (written by :mod:`svdecode.train`), then ``steering_config.json`` with mu_bar
and the calibration statistics. A stage whose output is complete is skipped on a rerun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from svdecode.calibration import CalibrationResult
from svdecode.config import CONFIG_NAME
from svdecode.data import Example, Splits, make_splits, splits_from_manifest
from svdecode.steered_model import SteeredModel
from svdecode.train import WarmstartConfig, is_complete, load_adapter, read_info, warmstart

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
    calibration: Callable[[Sequence[Example]], dict] | None = None,
    alpha: float = 0.1,
    calib_batch_size: int = 8,
    source: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> PipelineResult:
    """Warm-start on the train split of ``pool``, calibrate on its calibration split, save.

    Without ``n_train`` everything not in the calibration/test splits is trained on. A finished
    warm-start in ``out_dir`` is reused (its recorded split is reloaded, so calibration never sees
    a training example); an existing ``steering_config.json`` is reused too. ``calibration``
    maps the calibration examples to ``SteeredModel.calibrate`` options (objective, choices, guard).
    """
    out = Path(out_dir)
    stages, seconds = [], {}
    calib_result = None
    if is_complete(out):
        info = read_info(out)
        manifest = _read_manifest(out)
        splits = splits_from_manifest(pool, manifest)
        log.info("warm-start in %s is complete: skipping it", out)
    else:
        splits = split_pool(pool, n_train, n_calib, n_test, seed)
        if source:  # lets `svdecode eval` reload the calibration split from the manifest alone
            splits.manifest["source"] = source
        if not splits.train:
            raise ValueError(
                "the training split is empty: ask for n_train or leave examples outside calib/test"
            )
        t0 = time.time()
        result = warmstart(
            splits.train, out, cfg, base=base, manifest=splits.manifest, resume=resume, progress=progress
        )
        seconds["warmstart"] = time.time() - t0
        info = result.info or read_info(out)
        stages.append("warmstart")

    if (out / CONFIG_NAME).is_file():
        model = SteeredModel.from_pretrained(out)
        log.info("steering artifact in %s exists: skipping calibration", out)
    else:
        from svdecode.models import load_tokenizer

        t0 = time.time()
        peft_model = load_adapter(out)
        model = SteeredModel.from_peft(peft_model, load_tokenizer(str(out)), alpha=alpha)
        model.steering.base_model = base
        options = calibration(splits.calib) if calibration is not None else {}
        calib_result = model.calibrate(
            splits.calib, batch_size=calib_batch_size, progress=progress, **options
        )
        model.save_pretrained(out)
        seconds["calibrate"] = time.time() - t0
        stages.append("calibrate")
    return PipelineResult(out, splits, model, info, stages, seconds, calib_result)


def _read_manifest(out: Path) -> dict:
    import json

    path = out / "split_manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the warm-start in {out} did not record its split")
    return json.loads(path.read_text())
