"""The request queue: a bounded asyncio queue feeding micro-batches to one generation thread.

torch on the CPU is not async, and two generations at once would only split the same cores, so
one worker thread runs one ``generate()`` at a time. Requests that arrive while it runs wait in
the queue and form the next micro-batch together: up to ``max_batch`` rows (a request with
``n`` choices of ``k`` prompts takes ``n * k``), after a short ``batch_wait_s`` window that lets
a burst arrive. A full queue refuses new requests at once (the caller answers 429).

This is static micro-batching, not continuous batching: a request arriving during a batch waits
for that batch to end (see docs/scaling.md for what continuous batching would need).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from svdecode.integrations.server.engine import Engine, GenRequest

log = logging.getLogger("svdecode.server")


class QueueFullError(RuntimeError):
    """The request queue holds ``max_queue`` requests already."""


class ShuttingDownError(RuntimeError):
    """The server is shutting down and takes no new requests."""


class Batcher:
    """Owns the queue and the worker thread; start it inside the server's event loop."""

    def __init__(self, engine: Engine, max_batch: int, max_queue: int, batch_wait_s: float = 0.005):
        self.engine = engine
        self.max_batch, self.max_queue, self.batch_wait_s = max_batch, max_queue, batch_wait_s
        self.stats: Counter[str] = Counter()
        self.running: list[GenRequest] = []
        self._carry: GenRequest | None = None  # taken from the queue but too big for the last batch
        self._queue: asyncio.Queue[GenRequest] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svdecode-generate")
        self._task = asyncio.create_task(self._run(), name="svdecode-batcher")

    def submit(self, request: GenRequest) -> None:
        """Queue ``request`` or raise :class:`QueueFullError` / :class:`ShuttingDownError` at once."""
        if self._closing or self._queue is None:
            raise ShuttingDownError("the server is shutting down")
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            self.stats["rejected_queue_full"] += 1
            raise QueueFullError(
                f"the request queue is full ({self.max_queue} waiting); retry later"
            ) from None
        self.stats["requests"] += 1

    def queued(self) -> int:
        return (self._queue.qsize() if self._queue is not None else 0) + (self._carry is not None)

    async def _next_batch(self) -> list[GenRequest]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.n_rows
        if rows < self.max_batch and self.batch_wait_s > 0:
            await asyncio.sleep(self.batch_wait_s)
        while rows < self.max_batch and not self._queue.empty():
            nxt = self._queue.get_nowait()
            if rows + nxt.n_rows > self.max_batch:
                self._carry = nxt
                break
            batch.append(nxt)
            rows += nxt.n_rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            self.running = batch
            try:
                rows = await loop.run_in_executor(self._executor, self.engine.run_batch, batch)
            finally:
                self.running = []
            self.stats["batches"] += rows > 0
            self.stats["rows"] += rows
            self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], rows)

    async def stop(self, timeout: float) -> None:
        """Refuse new requests, end the queued ones, stop the running batch at its next token
        and wait (at most ``timeout`` seconds) for the worker thread to return."""
        self._closing = True
        for req in self.running:  # before the task is cancelled: its finally clears `running`
            req.cancelled.set()
        if self._task is not None:
            self._task.cancel()
        left = [self._carry] if self._carry is not None else []
        while self._queue is not None and not self._queue.empty():
            left.append(self._queue.get_nowait())
        for req in left:
            req.sink(("error", "the server shut down before this request ran"))
        if self._executor is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self._executor.shutdown, True), timeout)
            except asyncio.TimeoutError:
                log.error("the generation thread did not stop within %.0f s", timeout)
