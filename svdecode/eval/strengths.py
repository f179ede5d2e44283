"""Calibrating each compared method's strength once per (combine method, alpha): in memory, and on
disk under the run's cache so a rerun reuses it; plus the model fingerprint every cache key holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svdecode.calibration import calibrate_streams
from svdecode.fileio import jsonable, short_hash, slug, write_json_atomic
from svdecode.scoring import split_pairs

log = logging.getLogger("svdecode")


def _pairs_hash(prompts: Sequence[str], answers: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p, a in zip(prompts, answers, strict=True):
        h.update(p.encode())
        h.update(b"\x00")
        h.update(a.encode())
        h.update(b"\x01")
    return h.hexdigest()[:16]


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
    """Calibrates (method, alpha) once, in memory and optionally on disk."""

    def __init__(self, model, calib, estimator, trim, batch_size, max_length, progress, cache_dir):
        self.model = model
        self.prompts, self.answers = split_pairs(calib) if calib is not None else ([], [])
        self.has_data = calib is not None and len(self.prompts) > 0
        self.estimator, self.trim = estimator, trim
        self.batch_size, self.max_length, self.progress = batch_size, max_length, progress
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.data_hash = _pairs_hash(self.prompts, self.answers) if self.has_data else None
        self.memo: dict[str, tuple[dict[str, Any], np.ndarray]] = {}

    def key(self, method: str, alpha: float) -> str:
        return f"{method}@alpha={alpha:g}"

    def __call__(self, method: str, alpha: float) -> tuple[dict[str, Any], np.ndarray]:
        key = self.key(method, alpha)
        if key in self.memo:
            return self.memo[key]
        if not self.has_data:
            current = self.model.steering
            if (
                method == current.method == "svdecode"
                and math.isclose(alpha, current.alpha)
                and (current.mu != 0.0 or current.calibration)
            ):
                stats = dict(current.calibration or {})
                stats.setdefault("mu", current.mu)
                stats.setdefault("estimates", {current.estimator: current.mu})
                stats["source"] = "model steering config (no calibration pairs given)"
                self.memo[key] = (stats, np.zeros(0))
                return self.memo[key]
            raise ValueError(
                f"method {method!r} at alpha={alpha} needs a calibrated strength: pass calibration pairs "
                "(calib=...), or use a model whose steering config holds a calibrated svdecode mu"
            )
        path = None
        if self.cache_dir is not None:
            ident = short_hash(
                {
                    "key": key,
                    "data": self.data_hash,
                    "trim": self.trim,
                    "max_length": self.max_length,
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
        result = calibrate_streams(
            self.model.streams,
            self.model.tokenizer,
            self.prompts,
            self.answers,
            alpha=alpha,
            estimator=self.estimator,
            method=method,
            batch_size=self.batch_size,
            trim=self.trim,
            max_length=self.max_length,
            progress=self.progress,
        )
        stats = jsonable({**result.stats, "key": key, "calib_pairs_sha": self.data_hash})
        token_mu = result.token_mu.double().numpy()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with npy_path.open("wb") as fh:
                np.save(fh, token_mu)
            write_json_atomic(json_path, stats)
        self.memo[key] = (stats, token_mu)
        return self.memo[key]
