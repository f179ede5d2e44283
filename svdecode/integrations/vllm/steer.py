"""The one place where the vLLM engine turns (z_phi, z_theta) into the logits it samples from.

The steering object does it (:class:`~svdecode.steering.Steerer`; a batch of rows with their own
steerers: :class:`~svdecode.steering.BatchSteerer`), so every registered combine rule is served.
Per row: the served steerer (the calibrated strength, binned strengths included), or a request's
own (:func:`with_request`: ``method``, ``mu``, ``alpha``). Imports only core svdecode modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from svdecode.steering import RULES, BatchSteerer, Steerer

REQUEST_FIELDS = ("method", "mu", "alpha")


def with_request(served: Steerer, extra: Mapping[str, Any] | None) -> Steerer:
    """The served steerer with a request's overrides: a rule without a strength ("adapted",
    "base") keeps only the served mask settings; a new ``mu`` or ``alpha`` drops the calibrated
    bins. Raises :class:`~svdecode.steering.SteeringError` (a ``ValueError``) on bad values."""
    if not extra:
        return served
    unknown = set(extra) - set(REQUEST_FIELDS)
    if unknown:
        raise ValueError(f"unknown steering field(s) {sorted(unknown)}; a request may set {REQUEST_FIELDS}")
    method = extra.get("method", served.method)
    if method in RULES and not RULES[method].strength:
        return Steerer(method, 0.0, served.alpha, served.lam)
    changes = {k: extra[k] for k in ("mu", "alpha") if extra.get(k) is not None}
    if changes:
        changes["mu_bins"] = None
    if method != served.method:
        changes["method"] = method
    return served.replace(**changes) if changes else served


def combine_rows(z_phi: torch.Tensor, z_theta: torch.Tensor, rows: Sequence[Steerer]) -> torch.Tensor:
    """fp32 logits ``[N, V]``: row i from ``z_phi[i]``, ``z_theta[i]`` with ``rows[i]``."""
    return BatchSteerer(tuple(rows))(z_phi, z_theta)
