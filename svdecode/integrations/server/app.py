"""The FastAPI app: OpenAI-compatible routes over one steered model, served by uvicorn.

Three model ids share one set of weights: ``NAME`` (steered: the model's calibrated mu, alpha
and method), ``NAME:adapter`` (the plain PEFT adapter) and ``NAME:base`` (the base model).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from svdecode.integrations.server.batcher import Batcher, QueueFullError, ShuttingDownError
from svdecode.integrations.server.engine import Engine, GenRequest, tokenizer_of
from svdecode.integrations.server.errors import APIError, Guard, error_body
from svdecode.integrations.server.responses import Reply, sse
from svdecode.integrations.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    describe_validation_error,
)
from svdecode.model.steered_model import SteeredModel
from svdecode.steering import Steerer, SteeringError

log = logging.getLogger("svdecode.server")

ADAPTER_SUFFIX, BASE_SUFFIX = ":adapter", ":base"
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DISCONNECT_POLL_S = 0.25


@dataclass
class ServerSettings:
    """The server's limits (all of them ``svdecode serve`` flags)."""

    model_name: str = "svdecode"
    max_batch: int = 16  # rows (prompts x n) per forward pass
    max_queue: int = 128  # requests waiting for a batch
    max_tokens: int = 512  # per request
    max_prompt_tokens: int | None = None  # None: the model's context length
    request_timeout: float = 300.0  # seconds from arrival to the last token
    batch_wait_ms: float = 5.0
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    shutdown_timeout: float = 30.0


def context_length(model: SteeredModel) -> int | None:
    n = getattr(model.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


class OpenAIServer:
    """Request handling: validation -> :class:`GenRequest` -> batcher -> OpenAI responses."""

    def __init__(self, model: SteeredModel, settings: ServerSettings, batcher: Any = None):
        self.model, self.settings = model, settings
        self.tokenizer = tokenizer_of(model)
        # Another engine (svdecode.integrations.vllm.serve) brings its own runner with the
        # Batcher interface: start, submit, queued, running, stats, stop.
        self.batcher = batcher or Batcher(
            Engine(model), settings.max_batch, settings.max_queue, settings.batch_wait_ms / 1e3
        )
        self.context = context_length(model)
        self.created = int(time.time())
        steered, name = model.steerer, settings.model_name
        self.variants = {
            name: steered,
            name + ADAPTER_SUFFIX: Steerer("adapted", 0.0, steered.alpha, steered.lam),
            name + BASE_SUFFIX: Steerer("base", 0.0, steered.alpha, steered.lam),
        }

    # -- plain routes --------------------------------------------------------------------------
    async def models(self) -> dict[str, Any]:
        data = [
            {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "svdecode",
                "svdecode": {"method": v.method, "mu": v.mu, "alpha": v.alpha},
            }
            for name, v in self.variants.items()
        ]
        return {"object": "list", "data": data}

    async def health(self) -> dict[str, Any]:
        """Liveness for load balancers (no key needed), with the queue and the batch counters."""
        return {
            "status": "ok",
            "queued": self.batcher.queued(),
            "running": len(self.batcher.running),
            "stats": dict(self.batcher.stats),
        }

    # -- validation ----------------------------------------------------------------------------
    def _steering(self, body: CompletionRequest | ChatCompletionRequest) -> Steerer:
        variant = self.variants.get(body.model)
        if variant is None:
            names = ", ".join(self.variants)
            raise APIError(
                404,
                f"model '{body.model}' does not exist; this server has {names}",
                "model",
                "model_not_found",
            )
        if not variant.rule.strength:  # the plain adapter and the base model
            for field in ("mu", "alpha"):
                if getattr(body, field) is not None:
                    raise APIError(
                        400,
                        f"'{field}' applies to the steered model '{self.settings.model_name}' only",
                        field,
                    )
            return variant
        if body.mu is None and body.alpha is None:
            return variant  # the calibrated settings, confidence-binned strengths included
        asked = {k: v for k, v in (("mu", body.mu), ("alpha", body.alpha)) if v is not None}
        try:  # a request's own strength replaces the calibrated (binned) ones
            return variant.replace(mu_bins=None, **asked)
        except SteeringError as err:
            raise APIError(400, str(err), err.field) from None

    def _max_tokens(self, body: CompletionRequest | ChatCompletionRequest, default: int) -> int:
        limit = self.settings.max_tokens
        asked = body.requested_max_tokens()
        param = (
            "max_completion_tokens"
            if getattr(body, "max_completion_tokens", None) is not None
            else "max_tokens"
        )
        if asked is None:
            return min(default, limit)
        if asked < 1:
            raise APIError(400, f"{param} must be at least 1, got {asked}", param)
        if asked > limit:
            raise APIError(
                400, f"{param} = {asked} is over this server's limit of {limit} (--max-tokens)", param
            )
        return asked

    def _encode(self, texts: list[str], special: bool, param: str) -> list[list[int]]:
        ids = [self.tokenizer(t, add_special_tokens=special)["input_ids"] for t in texts]
        prompt_limit = self.settings.max_prompt_tokens or self.context
        for i, row in enumerate(ids):
            where = param if len(ids) == 1 else f"{param}[{i}]"
            if not row:
                raise APIError(400, f"{where} is empty: it must hold at least one token", param)
            if prompt_limit is not None and len(row) > prompt_limit:
                raise APIError(
                    400,
                    f"{where} has {len(row)} tokens, over the limit of {prompt_limit}",
                    param,
                    "context_length_exceeded",
                )
        return ids

    def _fit(self, ids: list[list[int]], max_tokens: int, asked: bool, param: str) -> int:
        """``max_tokens`` if every prompt leaves room for it in the context; a default (not
        asked for) shrinks to the room left, an explicit value over it is an error."""
        longest = max(len(row) for row in ids)
        room = self.context - longest if self.context is not None else max_tokens
        if not asked and room >= 1:
            return min(max_tokens, room)
        if max_tokens > room:
            raise APIError(
                400,
                f"this model's context is {self.context} tokens, but the {param} has {longest} and max_tokens "
                f"asks for {max_tokens} more",
                param,
                "context_length_exceeded",
            )
        return max_tokens

    def _chat_prompt(self, body: ChatCompletionRequest) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(
                400, "this model's tokenizer has no chat template: use /v1/completions", "messages"
            )
        try:
            return self.tokenizer.apply_chat_template(body.chat(), tokenize=False, add_generation_prompt=True)
        except jinja2.TemplateError as err:  # e.g. a template that wants alternating roles
            raise APIError(400, f"the chat template refused these messages: {err}", "messages") from err

    def _request(
        self, body: CompletionRequest | ChatCompletionRequest, texts: list[str], chat: bool
    ) -> tuple[GenRequest, asyncio.Queue]:
        unsupported = body.unimplemented()
        if unsupported is not None:
            raise APIError(
                400, f"'{unsupported}' is not supported by this server", unsupported, "unsupported_parameter"
            )
        steering = self._steering(body)
        max_tokens = self._max_tokens(body, self.settings.max_tokens if chat else DEFAULT_COMPLETION_TOKENS)
        if len(texts) * body.n > self.settings.max_batch:
            raise APIError(
                400,
                f"{len(texts)} prompt(s) x n={body.n} is {len(texts) * body.n} sequences, over this server's "
                f"--max-batch of {self.settings.max_batch}",
                "n",
            )
        param = "messages" if chat else "prompt"
        ids = self._encode(texts, special=not chat, param=param)
        max_tokens = self._fit(ids, max_tokens, body.requested_max_tokens() is not None, param)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def sink(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed (shutdown): nobody is listening
                pass

        gen = GenRequest(
            prompts=ids,
            n=body.n,
            max_tokens=max_tokens,
            stop=body.stop,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            steering=steering,
            deadline=time.monotonic() + self.settings.request_timeout,
            sink=sink,
        )
        return gen, events

    def _submit(self, gen: GenRequest) -> None:
        try:
            self.batcher.submit(gen)
        except QueueFullError as err:
            raise APIError(429, str(err), code="queue_full") from None
        except ShuttingDownError as err:
            raise APIError(503, str(err), code="shutting_down") from None

    # -- completion routes -------------------------------------------------------------------
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        gen, events = self._request(body, body.prompt, chat=False)
        return await self._respond(request, body, gen, events, chat=False)

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        gen, events = self._request(body, [self._chat_prompt(body)], chat=True)
        return await self._respond(request, body, gen, events, chat=True)

    async def _respond(self, request: Request, body: Any, gen: GenRequest, events: asyncio.Queue, chat: bool):
        self._submit(gen)
        reply = Reply(body.model, gen, chat)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                self._stream(reply, events, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        watch = asyncio.create_task(self._watch_disconnect(request, gen, events))
        try:
            finished = await self._collect(reply, events)
        finally:
            watch.cancel()
        if not finished:  # the client went away; nobody reads this
            return Response(status_code=499)
        return JSONResponse(reply.final())

    async def _watch_disconnect(self, request: Request, gen: GenRequest, events: asyncio.Queue) -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_S)
        gen.cancelled.set()
        events.put_nowait(("gone",))

    async def _collect(self, reply: Reply, events: asyncio.Queue) -> bool:
        """Read the engine's events until every choice ended; False if the client went away."""
        while not reply.complete():
            event = await events.get()
            if event[0] == "gone":
                self.batcher.stats["cancelled"] += 1
                return False
            self._check(reply.add(event), reply.gen)
        self.batcher.stats["completed"] += 1
        return True

    def _check(self, outcome: str | None, gen: GenRequest) -> None:
        """Turn an engine outcome into an API error (and stop the request's other rows)."""
        if outcome == "timeout":
            gen.cancelled.set()
            self.batcher.stats["timeouts"] += 1
            raise APIError(
                504,
                f"the request did not finish within {self.settings.request_timeout:g} s (--request-timeout)",
                code="timeout",
            )
        if outcome == "error":
            gen.cancelled.set()
            raise APIError(500, "generation failed inside the server; see its log", code="internal_error")

    async def _stream(self, reply: Reply, events: asyncio.Queue, usage: bool) -> AsyncIterator[str]:
        try:
            for chunk in reply.opening():
                yield sse(chunk)
            while not reply.complete():
                event = await events.get()
                try:
                    self._check(reply.add(event), reply.gen)
                except APIError as err:
                    yield sse(error_body(err.status, err.message, err.param, err.code))
                    break
                chunk = reply.chunk(event)
                if chunk is not None:
                    yield sse(chunk)
            else:
                self.batcher.stats["completed"] += 1
                if usage:
                    yield sse(reply.usage_chunk())
            yield "data: [DONE]\n\n"
        finally:
            if not reply.complete():  # the client disconnected (or an error ended the stream)
                reply.gen.cancelled.set()
                self.batcher.stats["cancelled"] += not reply.failed


def create_app(model: SteeredModel, settings: ServerSettings | None = None, batcher: Any = None) -> FastAPI:
    """The ASGI app (FastAPI behind :class:`Guard`) for ``model`` with ``settings`` (``batcher``:
    another engine's request runner in place of the default micro-batcher)."""
    settings = settings or ServerSettings()
    server = OpenAIServer(model, settings, batcher)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.batcher.start()
        yield
        await server.batcher.stop(settings.shutdown_timeout)

    app = FastAPI(title="svdecode OpenAI-compatible server", lifespan=lifespan)
    app.state.server = server
    app.get("/health")(server.health)
    app.get("/v1/models")(server.models)
    app.post("/v1/completions")(server.completions)
    app.post("/v1/chat/completions")(server.chat_completions)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        headers = {"Retry-After": "1"} if err.status in (429, 503) else None
        return err.response(headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(list(err.errors()))
        return APIError(400, message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return APIError(err.status_code, str(err.detail)).response(getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(
            500, f"internal server error ({type(err).__name__})", code="internal_error"
        ).response()

    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)
    return app


def serve(
    model: SteeredModel,
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    batcher: Any = None,
) -> None:
    """Serve ``model`` until SIGTERM/SIGINT; then in-flight requests get up to
    ``settings.shutdown_timeout`` seconds to finish (uvicorn's graceful shutdown)."""
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without an API key: anyone who reaches this port can use the model", host)
    config = uvicorn.Config(
        create_app(model, settings, batcher),
        host=host,
        port=port,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout)),
        log_level="info",
    )
    uvicorn.Server(config).run()
