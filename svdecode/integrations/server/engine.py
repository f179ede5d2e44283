"""Generation for the server: rows of different requests in one ``generate()`` call.

A micro-batch mixes requests: each row (one choice of one prompt) has its own steering (a
:class:`~svdecode.steering.Steerer`: steered, plain adapter or base; mu; alpha), sampling
(temperature, top_p, seed), ``max_tokens`` and stop strings. ``SteeredModel.generate()`` takes one
setting of each for the whole batch, so per-row objects make them per row:

* :class:`~svdecode.steering.BatchSteerer` -- the rows' steerers, passed to ``generate(steering=...)``;
* :class:`RowSampler` -- a ``LogitsProcessor`` that samples each row with its own temperature,
  top-p and ``torch.Generator`` and leaves only the drawn token for the greedy step;
* :class:`RowTracker` -- a ``StoppingCriteria`` that ends rows one by one (EOS, stop string,
  ``max_tokens``, cancellation, deadline) and streams each row's new text as it comes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from svdecode.model.config import CONFIG_NAME
from svdecode.model.loading import load_peft, load_tokenizer
from svdecode.model.steered_model import SteeredModel
from svdecode.steering import BatchSteerer, Steerer

log = logging.getLogger("svdecode.server")

SEED_MASK = (1 << 63) - 1


def tokenizer_of(model: SteeredModel) -> Any:
    if model.tokenizer is None:
        raise ValueError("serving needs a SteeredModel with a tokenizer (pass tokenizer= when building it)")
    return model.tokenizer


def load_model(
    adapter_dir: str | Path,
    base: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
) -> SteeredModel:
    """A saved SteeredModel directory (``steering_config.json`` + adapter) or a plain PEFT adapter
    directory (then mu = 0: the steered model only applies the confidence mask)."""
    directory = Path(adapter_dir)
    if (directory / CONFIG_NAME).is_file():
        return SteeredModel.from_pretrained(directory, base=base, dtype=dtype, device=device)
    peft_model = load_peft(directory, base, dtype=dtype, device=device)
    has_tok = (directory / "tokenizer_config.json").is_file()
    tok_src = str(directory) if has_tok else base or peft_model.active_peft_config.base_model_name_or_path
    log.warning("%s has no %s: serving mu = 0 (run svdecode calibrate to set it)", directory, CONFIG_NAME)
    return SteeredModel.from_peft(peft_model, load_tokenizer(tok_src or "default"))


Event = tuple  # ("delta", index, text) | ("done", index, finish_reason, n_tokens) | ("error", message)


@dataclass
class GenRequest:
    """One API request as the engine sees it: token ids and per-request settings."""

    prompts: list[list[int]]
    n: int
    max_tokens: int
    stop: tuple[str, ...]
    temperature: float
    top_p: float
    seed: int | None
    steering: Steerer
    deadline: float  # time.monotonic() after which the request's rows stop ("timeout")
    sink: Callable[[Event], None]  # thread-safe: the engine calls it from its worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def n_rows(self) -> int:
        return len(self.prompts) * self.n


@dataclass
class Row:
    """One output sequence: choice ``index`` of its request."""

    request: GenRequest
    index: int
    prompt: list[int]
    generator: torch.Generator | None  # None: greedy
    tokens: list[int] = field(default_factory=list)
    emitted: str = ""
    finish: str | None = None

    def end(self, reason: str) -> None:
        self.finish = reason
        self.request.sink(("done", self.index, reason, len(self.tokens)))


def _generator(seed: int | None, index: int) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:  # one stream per choice, fixed by (seed, choice): the same text alone or in any batch
        gen.manual_seed(hash((seed, index)) & SEED_MASK)
    return gen


class RowSampler(LogitsProcessor):
    """Per-row temperature / top-p sampling as a logits processor before the greedy step.

    transformers' sampling takes one temperature and top_p per call and draws from the global RNG,
    so rows of different requests could neither keep their settings nor their seeds in a shared
    batch. Here each sampled row is warped with transformers' own warpers, drawn with its own
    generator, and reduced to the drawn token, which ``generate()``'s greedy step then picks.
    Greedy rows (temperature 0) pass through unchanged.
    """

    def __init__(self, rows: Sequence[Row]):
        self.rows = rows
        self._warpers: dict[tuple[float, float], list[LogitsProcessor]] = {}

    def _warp(self, temperature: float, top_p: float) -> list[LogitsProcessor]:
        key = (temperature, top_p)
        if key not in self._warpers:
            warpers: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
            self._warpers[key] = warpers
        return self._warpers[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for i, row in enumerate(self.rows):
            if row.generator is None or row.finish is not None:
                continue
            # z - max <= 0, so dividing by a tiny temperature gives 0 or -inf, never inf - inf = NaN
            # (softmax and top-p are unchanged by the shift); a temperature below 1e-30 (1e-62 is
            # valid JSON, but 0 in fp32) samples as 1e-30 does: the top token
            z = scores[i : i + 1].float()
            z = z - z.amax(-1, keepdim=True)
            for warper in self._warp(max(row.request.temperature, 1e-30), row.request.top_p):
                z = warper(input_ids[i : i + 1], z)
            token = torch.multinomial(z.softmax(-1), 1, generator=row.generator).item()
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` not to stream yet: an incomplete UTF-8 character (the
    decoder shows it as U+FFFD) or the start of a stop string that the next tokens may finish."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    hold = len(text) - end
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold


class RowTracker(StoppingCriteria):
    """Ends rows one at a time and streams their text; ``generate()`` stops when all have ended.

    Streamed deltas are the only source of a row's text (the non-streamed response is their
    concatenation), so streamed and non-streamed answers are the same text by construction.
    """

    def __init__(self, rows: Sequence[Row], tokenizer: Any, eos_ids: set[int]):
        self.rows, self.tokenizer, self.eos_ids = rows, tokenizer, eos_ids

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        now = time.monotonic()
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if row.finish is None:
                self._step(row, token, now)
        return torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)

    def _step(self, row: Row, token: int, now: float) -> None:
        req = row.request
        if req.cancelled.is_set():
            return row.end("cancelled")
        if now > req.deadline:
            return row.end("timeout")
        if token in self.eos_ids:
            return row.end("stop")
        row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cuts = [i for i in (text.find(s) for s in req.stop) if i >= 0]
        if cuts:
            self._emit(row, text[: min(cuts)])
            return row.end("stop")
        if len(row.tokens) >= req.max_tokens:
            self._emit(row, text)
            return row.end("length")
        self._emit(row, text[: len(text) - _held_back(text, req.stop)])

    @staticmethod
    def _emit(row: Row, text: str) -> None:
        # Decoding a longer token prefix can rewrite earlier characters (rare; byte-level BPE does
        # not): text already sent is never taken back, so such a change is not streamed.
        if len(text) > len(row.emitted) and text.startswith(row.emitted):
            row.request.sink(("delta", row.index, text[len(row.emitted) :]))
            row.emitted = text


class Engine:
    """Runs micro-batches of :class:`GenRequest` through one ``generate()`` call each."""

    def __init__(self, model: SteeredModel):
        self.model = model
        self.tokenizer = tokenizer_of(model)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(eos_ids, default=0)

    def run_batch(self, requests: Sequence[GenRequest]) -> int:
        """Generate every live request's rows together; returns the number of rows run.

        Requests cancelled or past their deadline while queued end without running. A failure
        inside generation fails this batch's requests with an error event, never the worker.
        """
        rows = []
        now = time.monotonic()
        for req in requests:
            reason = "cancelled" if req.cancelled.is_set() else "timeout" if now > req.deadline else None
            for p, prompt in enumerate(req.prompts):
                for c in range(req.n):
                    index = p * req.n + c
                    gen = _generator(req.seed, index) if req.temperature > 0 else None
                    row = Row(req, index, prompt, gen)
                    if reason is None:
                        rows.append(row)
                    else:
                        row.end(reason)
        if not rows:
            return 0
        try:
            self._generate(rows)
        except Exception as err:  # the worker must outlive any one batch
            log.exception("generation failed for a batch of %d rows", len(rows))
            for req in {id(r.request): r.request for r in rows}.values():
                req.sink(("error", f"generation failed: {type(err).__name__}: {err}"))
            return len(rows)
        for row in rows:
            if row.finish is None:  # generate() reached max_new_tokens on the step it ended the row
                row.end("length")
        return len(rows)

    def _generate(self, rows: Sequence[Row]) -> None:
        batch = self.tokenizer.pad(
            {"input_ids": [row.prompt for row in rows]}, padding_side="left", return_tensors="pt"
        ).to(self.model.device)
        config = GenerationConfig(
            max_new_tokens=max(row.request.max_tokens for row in rows),
            do_sample=False,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.pad_id,
        )
        with torch.no_grad():
            self.model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                generation_config=config,
                steering=BatchSteerer(tuple(row.request.steering for row in rows)),
                logits_processor=LogitsProcessorList([RowSampler(rows)]),
                stopping_criteria=StoppingCriteriaList([RowTracker(rows, self.tokenizer, self.eos_ids)]),
            )
