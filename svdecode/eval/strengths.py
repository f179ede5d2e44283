"""Calibrating each compared method's strength once per (combine method, alpha): in memory, and on
disk under the run's cache so a rerun reuses it; plus the model fingerprint every cache key holds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svdecode.calibration.calibrate import calibrate_streams, result_key
from svdecode.calibration.config import CalibrationConfig, data_hash
from svdecode.calibration.objectives import (
    ChoiceItem,
    ChoiceStats,
    ItemMetric,
    choice_accuracy,
)
from svdecode.calibration.strength import DIRECTION_OF, TokenStats, nll, search_grid
from svdecode.fileio import jsonable, short_hash, slug, write_json_atomic
from svdecode.model.scoring import split_pairs
from svdecode.runs import distributed
from svdecode.steering import ESTIMATORS

log = logging.getLogger("svdecode")


def model_fingerprint(model) -> str:
    """A cheap fingerprint of the weights that matter: the adapter's parameters and the output
    layer (sums and shapes), plus the steering metadata. Changing the adapter changes it."""
    parts: list[Any] = [
        model.steering.base_model,
        model.steering.adapter_type,
        model.steering.adapted_model,
        getattr(model.streams, "kind", ""),
    ]
    for module in model.streams.modules:
        adapter = getattr(module, "active_adapter", None)
        named = list(module.named_parameters())
        chosen = [(n, p) for n, p in named if adapter and f".{adapter}." in n]
        if named:
            chosen.append(named[-1])
            chosen.append(named[0])
        with torch.no_grad():
            for n, p in chosen:
                parts.append((n, tuple(p.shape), float(p.double().sum()), float(p.double().abs().sum())))
    return short_hash(parts)


class Calibrator:
    """Calibrates (method, alpha) once, in memory and optionally on disk; a calibration the model
    itself just ran with the same request (``model.last_calibration``, e.g. the one of ``svdecode
    run`` before its evaluation) is taken as it is, not computed again.

    Besides the decision it records the calibration curve: the mean per-token NLL (and the task
    metric on the calibration choices) at every point of the strength grid.
    """

    def __init__(
        self,
        model,
        calib,
        settings: CalibrationConfig,
        cache_dir: str | Path | None = None,
        choices: Sequence[ChoiceItem] | None = None,
        choice_metric: ItemMetric = choice_accuracy,
    ):
        self.model, self.settings = model, settings
        self.prompts, self.answers = split_pairs(calib) if calib is not None else ([], [])
        self.ids = [str(getattr(c, "id", i)) for i, c in enumerate(calib or [])]
        self.has_data = calib is not None and len(self.prompts) > 0
        self.choices, self.choice_metric = (list(choices) if choices else None), choice_metric
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.data_hash = data_hash(self.prompts, self.answers, self.choices) if self.has_data else None
        self.memo: dict[str, tuple[dict[str, Any], np.ndarray]] = {}

    def key(self, method: str, alpha: float) -> str:
        return f"{method}@alpha={alpha:g}"

    def __call__(self, method: str, alpha: float) -> tuple[dict[str, Any], np.ndarray]:
        key = self.key(method, alpha)
        if key in self.memo:
            return self.memo[key]
        if not self.has_data:
            self.memo[key] = (self._stored(method, alpha), np.zeros(0))
            return self.memo[key]
        json_path = npy_path = None
        if self.cache_dir is not None:
            ident = short_hash(
                {
                    "key": key,
                    "data": self.data_hash,
                    "settings": self.settings.cache_key(),
                    "model": model_fingerprint(self.model),
                }
            )
            # explicit suffixes: "alpha=0.2" must not read as a file extension
            path = self.cache_dir / f"{slug(key)}-{ident}"
            json_path, npy_path = path.with_name(path.name + ".json"), path.with_name(path.name + ".npy")
            if json_path.is_file() and npy_path.is_file():
                stats = json.loads(json_path.read_text())
                self.memo[key] = (stats, np.load(npy_path))
                log.info("calibration %s: reused %s", key, json_path)
                return self.memo[key]
        stats, token_mu = self._calibrate(method, alpha)
        stats = jsonable({**stats, "key": key, "calib_pairs_sha": self.data_hash})
        if json_path is not None and distributed.is_main():
            json_path.parent.mkdir(parents=True, exist_ok=True)
            with npy_path.open("wb") as fh:
                np.save(fh, token_mu)
            write_json_atomic(json_path, stats)
        self.memo[key] = (stats, token_mu)
        return self.memo[key]

    def _calibrate(self, method: str, alpha: float) -> tuple[dict[str, Any], np.ndarray]:
        st = self.settings
        linear = method in DIRECTION_OF
        objective = st.objective if linear or st.objective in ESTIMATORS else "mean"
        cfg = st.replace(objective=objective, alpha=alpha)
        choices = self.choices if linear else None
        key = result_key(
            cfg, method, alpha, self.prompts, self.answers, self.ids, choices, self.choice_metric
        )
        result = getattr(self.model, "last_calibration", None)
        if result is not None and result.key == key:
            log.info(
                "calibration %s: the model's own calibration was asked the same; reusing it",
                self.key(method, alpha),
            )
        else:
            result = calibrate_streams(
                self.model.streams,
                self.model.tokenizer,
                self.prompts,
                self.answers,
                cfg,
                method=method,
                ids=self.ids,
                choices=choices,
                choice_metric=self.choice_metric,
            )
        stats = dict(result.stats)
        if result.token_stats is not None:
            stats["curve"] = calibration_curve(result.token_stats, result.choice_stats, stats["estimates"])
        return stats, result.token_mu.double().numpy()

    def _stored(self, method: str, alpha: float) -> dict[str, Any]:
        """The model's own calibrated strength, when no calibration pairs were given."""
        current = self.model.steering
        if (
            method == current.method == "svdecode"
            and math.isclose(alpha, current.alpha)
            and (current.mu != 0.0 or current.calibration)
        ):
            stats = dict(current.calibration or {})
            stats.setdefault("mu", current.mu)
            stats.setdefault("objective", current.objective)
            stats.setdefault("estimates", {current.objective: current.mu})
            stats["source"] = "model steering config (no calibration pairs given)"
            return stats
        raise ValueError(
            f"method {method!r} at alpha={alpha} needs a calibrated strength: pass calibration pairs "
            "(calib=...), or use a model whose steering config holds a calibrated svdecode mu"
        )


def calibration_curve(
    stats: TokenStats, choices: ChoiceStats | None, estimates: dict[str, float]
) -> dict[str, Any]:
    """The calibration objective along the strength grid: mean NLL per answer token, and the task
    metric on the calibration choices (when there are choices)."""
    grid = search_grid(list(estimates.values()), limit=1e3, per_decade=6)
    n = max(len(stats), 1)
    out: dict[str, Any] = {"mu": grid, "nll_per_token": [nll(stats, m) / n for m in grid]}
    if choices is not None:
        out["task"] = [choices.value(m) for m in grid]
    return out
