"""The one place where the vLLM engine turns (z_phi, z_theta) into the logits it samples from.

Per-row settings: the served steered model (the calibrated strength, binned strengths included),
a request's own ``mu`` / ``alpha``, the plain adapter (``adapted``) or the base (``base``). Rows
sharing a method, alpha and bins go through the core function together with their ``mu`` values
as a per-row tensor. Imports only core svdecode modules (no vLLM).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from svdecode.calibration.strength import binned_strength
from svdecode.steering import steer_logits

METHODS = ("svdecode", "adapted", "base")


@dataclass(frozen=True)
class RowSettings:
    """How one row's logits come from the two streams."""

    method: str = "svdecode"
    mu: float = 0.0
    alpha: float = 0.1
    lam: float | None = float("-inf")
    bins: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (edges, mu per bin)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS} in the vLLM engine, got {self.method!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> RowSettings:
        """From a steering settings dict (``steering_config.json``'s decoding fields)."""
        bins = cfg.get("mu_bins")
        return cls(
            method=cfg.get("method", "svdecode"),
            mu=float(cfg.get("mu", 0.0)),
            alpha=float(cfg.get("alpha", 0.1)),
            lam=cfg.get("lam", float("-inf")),
            bins=(tuple(bins["edges"]), tuple(bins["mu"])) if bins else None,
        )

    def with_request(self, extra: Mapping[str, Any] | None) -> RowSettings:
        """These settings with a request's overrides (``SamplingParams.extra_args``: ``method``,
        ``mu``, ``alpha``); a new ``mu`` or ``alpha`` drops the calibrated bins."""
        if not extra:
            return self
        method = extra.get("method", self.method)
        if method != "svdecode":
            return RowSettings(method, 0.0, self.alpha, self.lam)
        mu, alpha = extra.get("mu"), extra.get("alpha")
        if mu is None and alpha is None:
            return self
        return RowSettings(
            "svdecode",
            self.mu if mu is None else float(mu),
            self.alpha if alpha is None else float(alpha),
            self.lam,
        )


def _one(z_phi: torch.Tensor, z_theta: torch.Tensor, s: RowSettings, mu: Any) -> torch.Tensor:
    if s.method == "adapted":
        return z_phi.float()
    if s.method == "base":
        return z_theta.float()
    if s.bins is not None:
        mu = binned_strength(z_phi, {"edges": list(s.bins[0]), "mu": list(s.bins[1])})
    return steer_logits(z_phi, z_theta, mu, alpha=s.alpha, lam=s.lam)


def combine_rows(z_phi: torch.Tensor, z_theta: torch.Tensor, rows: Sequence[RowSettings]) -> torch.Tensor:
    """fp32 logits ``[N, V]``: row i from ``z_phi[i]``, ``z_theta[i]`` with ``rows[i]``."""
    if len(rows) != z_phi.shape[0]:
        raise ValueError(f"{len(rows)} row settings for {z_phi.shape[0]} logit rows")
    if len(set(rows)) <= 1:
        return _one(z_phi, z_theta, rows[0], rows[0].mu) if rows else z_phi.float()
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.method, r.alpha, r.lam, r.bins), []).append(i)
    out = torch.empty(z_phi.shape, dtype=torch.float32, device=z_phi.device)
    for idx in groups.values():
        sel = torch.tensor(idx, device=z_phi.device)
        mu = torch.tensor([rows[i].mu for i in idx], dtype=torch.float32, device=z_phi.device).unsqueeze(-1)
        out[sel] = _one(z_phi[sel], z_theta[sel], rows[idx[0]], mu)
    return out
