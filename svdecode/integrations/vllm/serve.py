"""``svdecode serve --engine vllm``: svdecode's OpenAI-compatible app with vLLM behind it.

The FastAPI app, its schemas, validation, errors and response objects are the default engine's
(:mod:`svdecode.integrations.server`); only the part that runs requests changes. In place of the
micro-batching :class:`~svdecode.integrations.server.batcher.Batcher`, :class:`VLLMRunner` hands
every row (one choice of one prompt) to vLLM's ``AsyncLLM`` as its own request, so vLLM's
scheduler batches them continuously, and turns vLLM's streamed outputs into the same engine
events (``delta`` / ``done`` / ``error``) the app already consumes. The three model ids map to
per-request settings (``SamplingParams.extra_args``) of the one steered vLLM model.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from svdecode.integrations.server.batcher import QueueFullError, ShuttingDownError
from svdecode.integrations.server.engine import SEED_MASK, GenRequest
from svdecode.integrations.vllm.logits import KEY, RequestSteering
from svdecode.integrations.vllm.plugin import register
from svdecode.integrations.vllm.prepare import prepare
from svdecode.model.config import CONFIG_NAME, SteeringConfig
from svdecode.model.loading import load_tokenizer
from svdecode.steering import Steerer

log = logging.getLogger("svdecode.server")


@dataclass(frozen=True)
class ContextLimit:
    """The engine's context length, read by the app where a model config has it."""

    max_position_embeddings: int


@dataclass
class ServedModel:
    """What the app reads from a served model (the default engine hands it a ``SteeredModel``):
    its tokenizer, steering settings and steerer, and its context length."""

    tokenizer: Any
    steering: SteeringConfig
    config: ContextLimit

    @property
    def steerer(self) -> Steerer:
        return self.steering.steerer


def served_model(
    folder: Path, adapter_dir: Path, max_model_len: int, mu: float | None, alpha: float | None
) -> ServedModel:
    cfg = SteeringConfig.load(adapter_dir) if (adapter_dir / CONFIG_NAME).is_file() else SteeringConfig()
    cfg.override(mu=mu, alpha=alpha)
    return ServedModel(load_tokenizer(str(folder)), cfg, ContextLimit(max_model_len))


class VLLMRunner:
    """The app's request runner (the :class:`Batcher` interface) over vLLM's ``AsyncLLM``."""

    def __init__(self, engine_args: AsyncEngineArgs, served: Steerer, max_queue: int):
        self.engine_args, self.served, self.max_queue = engine_args, served, max_queue
        self.stats: Counter[str] = Counter()
        self._live: dict[int, GenRequest] = {}
        self._tasks: set[asyncio.Task] = set()
        self._rids: set[str] = set()
        self._closing = False
        self.llm: AsyncLLM | None = None

    @property
    def running(self) -> list[GenRequest]:
        return list(self._live.values())

    def queued(self) -> int:
        return 0  # vLLM's scheduler holds the waiting rows; /health reports them as running

    async def start(self) -> None:
        register()
        self.llm = AsyncLLM.from_engine_args(self.engine_args)

    def submit(self, request: GenRequest) -> None:
        if self._closing or self.llm is None:
            raise ShuttingDownError("the server is shutting down")
        if len(self._live) >= self.max_queue:
            self.stats["rejected_queue_full"] += 1
            raise QueueFullError(f"{self.max_queue} requests are in flight (--max-queue); retry later")
        self.stats["requests"] += 1
        self._live[id(request)] = request
        task = asyncio.create_task(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _extra(self, steering: Steerer) -> dict[str, Any] | None:
        if steering == self.served:
            return None  # the served settings, calibrated binned strengths included
        if not steering.rule.strength:
            return {KEY: {"method": steering.method}}
        return {KEY: {"method": steering.method, "mu": steering.mu, "alpha": steering.alpha}}

    async def _run(self, req: GenRequest) -> None:
        try:
            rows = [(p * req.n + c, ids) for p, ids in enumerate(req.prompts) for c in range(req.n)]
            await asyncio.gather(*(self._row(req, index, ids) for index, ids in rows))
            self.stats["rows"] += len(rows)
        finally:
            self._live.pop(id(req), None)

    async def _row(self, req: GenRequest, index: int, ids: list[int]) -> None:
        assert self.llm is not None
        seed = None if req.seed is None or req.temperature == 0 else hash((req.seed, index)) & SEED_MASK
        params = SamplingParams(
            n=1,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=seed,
            max_tokens=req.max_tokens,
            stop=list(req.stop) or None,
            output_kind=RequestOutputKind.DELTA,
            extra_args=self._extra(req.steering),
        )
        rid = f"svdecode-{uuid.uuid4().hex}"
        self._rids.add(rid)
        state = {"tokens": 0, "finish": None}

        async def consume() -> None:
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params, rid):
                if req.cancelled.is_set():
                    await self.llm.abort(rid)
                    state["finish"] = "cancelled"
                    return
                choice = out.outputs[0]
                state["tokens"] += len(choice.token_ids)
                if choice.text:
                    req.sink(("delta", index, choice.text))
                if choice.finish_reason == "stop" and choice.stop_reason is None:
                    state["tokens"] -= 1  # vLLM counts the EOS token; the default engine does not
                state["finish"] = choice.finish_reason or state["finish"]

        try:
            await asyncio.wait_for(consume(), max(0.0, req.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            await self.llm.abort(rid)
            state["finish"] = "timeout"
        except Exception as err:  # one request's failure must not take the server down
            log.exception("vLLM generation failed")
            req.sink(("error", f"generation failed: {type(err).__name__}: {err}"))
            return
        finally:
            self._rids.discard(rid)
        finish = state["finish"]
        req.sink(("done", index, "length" if finish == "length" else finish or "stop", state["tokens"]))

    async def stop(self, timeout: float) -> None:
        """Refuse new requests, let in-flight ones finish for up to ``timeout`` s, then abort."""
        self._closing = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for req in self._live.values():
                req.cancelled.set()
            if pending and self.llm is not None:
                await self.llm.abort(list(self._rids))
        if self.llm is not None:
            self.llm.shutdown()


def build(
    adapter_dir: str | Path,
    base: str | None,
    mu: float | None,
    alpha: float | None,
    max_batch: int,
    max_queue: int,
    max_model_len: int,
    kv_cache_mib: int,
    dtype: str = "float32",
) -> tuple[ServedModel, VLLMRunner]:
    """(the model view the app reads, the runner) for ``adapter_dir`` on vLLM."""
    adapter_dir = Path(adapter_dir)
    folder = prepare(adapter_dir, base=base, mu=mu, alpha=alpha)
    model = served_model(folder, adapter_dir, max_model_len, mu, alpha)
    args = AsyncEngineArgs(
        model=str(folder),
        dtype=dtype,
        enforce_eager=True,
        max_model_len=max_model_len,
        max_num_seqs=max_batch,
        kv_cache_memory_bytes=kv_cache_mib << 20,
        logits_processors=[RequestSteering],
    )
    return model, VLLMRunner(args, model.steerer, max_queue)
