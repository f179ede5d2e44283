"""Per-request steering inside vLLM: a v1 custom logits processor that tracks each row's settings.

A request may carry ``SamplingParams(extra_args={"svdecode": {...}})``: ``method`` (a registered
combine rule: ``svdecode``, ``adapted``, ``base``, ...), ``mu``, ``alpha``. This processor follows vLLM's persistent batch (its
add / remove / move bookkeeping, :class:`BatchUpdate`, delivered before every forward pass) and
keeps the settings of every row that differs from the served ones. The steered model's
``compute_logits`` asks it for the rows' settings (:func:`row_settings`), so the logits vLLM
samples from -- and the log-probs it reports -- are already each request's own; ``apply`` has
nothing left to do.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.config import VllmConfig
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from svdecode.integrations.vllm.steer import with_request
from svdecode.steering import Steerer

KEY = "svdecode"  # the SamplingParams.extra_args entry


def request_overrides(params: SamplingParams) -> dict[str, Any] | None:
    extra = (params.extra_args or {}).get(KEY)
    return dict(extra) if extra else None


class RequestSteering(LogitsProcessor):
    """Tracks the rows whose request asked for its own method, mu or alpha."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        extra = request_overrides(sampling_params)
        if extra is None:
            return
        if sampling_params.prompt_logprobs:
            raise ValueError(f"prompt_logprobs use the served steering; drop extra_args['{KEY}'] to ask for them")
        try:  # the values alone (the served settings are not known here; the worker combines them)
            with_request(Steerer(), extra)
        except ValueError as err:
            raise ValueError(f"extra_args['{KEY}']: {err}") from None

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool):
        served = getattr(vllm_config.model_config.hf_config, "svdecode", None)
        self.default = Steerer.from_json(served) if isinstance(served, dict) else None
        self.rows: dict[int, Steerer] = {}  # batch index -> settings, only where they differ
        self.batch_size = 0
        global _ACTIVE
        _ACTIVE = self

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token greedy decoding picks

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None or self.default is None:
            return
        self.batch_size = batch_update.batch_size
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _, _ in batch_update.added:
            settings = with_request(self.default, request_overrides(params))
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
        return logits  # compute_logits already used row_settings()

    def settings_for(self, n_rows: int, served: Steerer) -> list[Steerer]:
        # Sampling has one row per request of the batch. Other calls (prompt log-probs, which
        # validate_params allows only for requests without their own settings) get the served ones.
        if n_rows != self.batch_size:
            return [served] * n_rows
        return [self.rows.get(i, served) for i in range(n_rows)]


_ACTIVE: RequestSteering | None = None  # this worker's processor, if the engine was given one


def row_settings(n_rows: int, served: Steerer) -> list[Steerer]:
    """Each logit row's settings: the served ones, or its request's (when the processor runs)."""
    if _ACTIVE is None:
        return [served] * n_rows
    return _ACTIVE.settings_for(n_rows, served)
