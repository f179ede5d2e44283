"""Per-request steering inside vLLM: a v1 custom logits processor.

The steered model's ``compute_logits`` already returns the served settings' steered logits. A
request that carries ``SamplingParams(extra_args={"svdecode": {...}})`` -- ``method``
(``svdecode`` / ``adapted`` / ``base``), ``mu``, ``alpha`` -- gets its row recomputed here from
the same step's two logit tensors (:attr:`SVDecodeSteeredLlamaForCausalLM.last`), through the same
:func:`~svdecode.integrations.vllm.steer.combine_rows`. Rows are the persistent batch's indices,
kept in step with vLLM's add / remove / move bookkeeping (:class:`BatchUpdate`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from svdecode.integrations.vllm.model import active_model
from svdecode.integrations.vllm.steer import METHODS, RowSettings, combine_rows

KEY = "svdecode"  # the SamplingParams.extra_args entry


def request_overrides(params: SamplingParams) -> dict[str, Any] | None:
    extra = (params.extra_args or {}).get(KEY)
    return dict(extra) if extra else None


class RequestSteering(LogitsProcessor):
    """Re-steers the rows whose request asked for its own method, mu or alpha."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = request_overrides(sampling_params)
        if extra is None:
            return
        unknown = set(extra) - {"method", "mu", "alpha"}
        if unknown:
            raise ValueError(f"extra_args['{KEY}']: unknown field(s) {sorted(unknown)}")
        if extra.get("method", "svdecode") not in METHODS:
            raise ValueError(f"extra_args['{KEY}']['method'] must be one of {METHODS}")
        mu, alpha = extra.get("mu"), extra.get("alpha")
        if mu is not None and not (isinstance(mu, (int, float)) and math.isfinite(mu)):
            raise ValueError(f"extra_args['{KEY}']['mu'] must be a finite number, got {mu!r}")
        if alpha is not None and not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"extra_args['{KEY}']['alpha'] must be in [0, 1], got {alpha!r}")

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        served = getattr(vllm_config.model_config.hf_config, "svdecode", None)
        self.default = RowSettings.from_config(served) if isinstance(served, dict) else None
        self.rows: dict[int, RowSettings] = {}  # batch index -> settings, only where they differ

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None or self.default is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _, _ in batch_update.added:
            settings = self.default.with_request(request_overrides(params))
            if settings != self.default:
                self.rows[index] = settings
            else:
                self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        z_phi, z_theta = active_model().last
        if z_phi.shape[0] != logits.shape[0]:
            raise RuntimeError(
                f"svdecode: {logits.shape[0]} logit rows to sample but the model computed {z_phi.shape[0]}; "
                "per-request steering needs one row per request (no speculative decoding)"
            )
        idx = sorted(i for i in self.rows if i < logits.shape[0])
        sel = torch.tensor(idx, device=logits.device)
        logits[sel] = combine_rows(z_phi[sel], z_theta[sel], [self.rows[i] for i in idx]).to(logits.dtype)
        return logits
