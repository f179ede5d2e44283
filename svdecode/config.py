"""The steering settings and their JSON artifact (``steering_config.json`` beside the adapter)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from svdecode.fileio import write_json_atomic

CONFIG_NAME = "steering_config.json"
FORMAT_VERSION = 1

# How the two distributions are combined (the first is the method; the rest are the comparisons
# and ablations the evaluation needs, computed from the same two streams).
METHODS = ("svdecode", "prob_space", "logit_arithmetic", "adapted", "base")


class ConfigError(ValueError):
    """A steering configuration file is missing, corrupt or incompatible."""


@dataclass
class SteeringConfig:
    """Everything needed to reproduce steered decoding besides the weights.

    ``lam``: value for tokens outside the confidence mask: ``-inf`` (paper), a finite float, or
    ``None`` for the scoring mode (masked tokens keep their adapted logit).
    """

    mu: float = 0.0
    alpha: float = 0.1
    lam: float | None = float("-inf")
    method: str = "svdecode"
    objective: str = "nll"  # what chose mu (svdecode.objectives.OBJECTIVES; "estimator" before 0.2)
    # strengths that follow the adapted model's confidence, when calibration kept them:
    # {"observable": "log_max_p_adapted", "edges": [...], "mu": [...]} (len(mu) = len(edges) + 1)
    mu_bins: dict[str, Any] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    adapted_model: str | None = None  # a fully fine-tuned checkpoint, when there is no adapter
    adapter_type: str | None = None
    library_version: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.mu, (int, float)) or not math.isfinite(self.mu):
            raise ConfigError(f"steering strength mu must be a finite number, got {self.mu!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if self.lam is not None and (
            not isinstance(self.lam, (int, float))
            or math.isnan(self.lam)
            or self.lam > 0
            and math.isinf(self.lam)
        ):
            raise ConfigError(f"lam must be -inf, a finite float or None, got {self.lam!r}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown steering method {self.method!r}; choose one of {METHODS}")
        if self.mu_bins is not None:
            edges, mus = self.mu_bins.get("edges"), self.mu_bins.get("mu")
            if not isinstance(edges, list) or not isinstance(mus, list) or len(mus) != len(edges) + 1:
                raise ConfigError(f"mu_bins needs 'edges' and one more 'mu' than edges, got {self.mu_bins!r}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in edges + mus):
                raise ConfigError(f"mu_bins edges and strengths must be finite numbers, got {self.mu_bins!r}")
            if self.mu_bins.get("observable") != "log_max_p_adapted":
                raise ConfigError(f"unknown mu_bins observable {self.mu_bins.get('observable')!r}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # JSON has no infinity: store lam as a string so the file stays standard JSON.
        data["lam"] = None if self.lam is None else repr(float(self.lam))
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<dict>") -> SteeringConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"{source}: format_version {version!r} is not supported by this svdecode (expects {FORMAT_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"format_version", "estimator"}
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)}")
        if "estimator" in data and "objective" not in data:  # written before objectives existed
            data["objective"] = data.pop("estimator")
        data = {k: v for k, v in data.items() if k in known}
        try:
            if data.get("lam") is not None:
                data["lam"] = float(data["lam"])
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: {err}") from err

    def save(self, directory: str | Path) -> Path:
        """Write ``steering_config.json`` atomically (temp file + rename)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(directory / CONFIG_NAME, self.to_json())

    @classmethod
    def load(cls, directory: str | Path) -> SteeringConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path} not found: {directory} is not a saved SteeredModel directory")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is corrupt (not valid JSON): {err}") from err
        return cls.from_json(data, source=str(path))
