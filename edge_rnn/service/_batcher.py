"""The batching consumer: steps of many streams, from many clients, in few onnxruntime calls.

A request handler awaits :meth:`Batcher.step`; the consumer task awaits its
queue (no polling: one future per wait, woken when enough steps are queued),
takes what is queued, and waits for more until ``max_batch`` steps or until
``max_wait_ms`` after the first step of the batch arrived (a step that queued
while the last batch ran goes at once). It runs them as one
``step_batch(..., on_error="isolate")`` in a worker thread, off the event
loop. Two steps of one stream never share a batch, and each stream's steps are
applied in the order they were submitted: a later step of a stream that is
already in the batch waits for the next one, and so does every step behind it.
The queue is bounded: when it is full, :class:`Overloaded` is raised at once,
so latency cannot grow without end.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_rnn._numbers import is_int, is_number
from edge_rnn.errors import EdgeRnnError, UnsupportedError
from edge_rnn.runtime import Stream, StreamingModel

__all__ = ["Batcher", "Overloaded", "ShuttingDown"]


class Overloaded(EdgeRnnError):
    """The step queue is full: try again later (HTTP 503 with Retry-After, WebSocket close 1013)."""


class ShuttingDown(EdgeRnnError):
    """The server is stopping and takes no new steps (HTTP 503, WebSocket close 1001)."""


class _Pending:
    __slots__ = ("stream", "chunk", "future", "queued_at")

    def __init__(self, stream: Stream, chunk: Any, future: asyncio.Future):
        self.stream, self.chunk, self.future, self.queued_at = stream, chunk, future, time.perf_counter()


class Batcher:
    """Batches the steps of many streams of one model; see the module docstring."""

    def __init__(self, model: StreamingModel, *, max_batch: int = 64, max_wait_ms: float = 2.0,
                 max_queue: int = 1024, on_batch: Callable[[int, list[float], float], None] | None = None):
        for name, value, least in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1)):
            if not is_int(value, least):
                raise UnsupportedError(f"{name}: expected an int >= {least}, got {value!r}")
        if not is_number(max_wait_ms, 0, 1e4):
            raise UnsupportedError(f"max_wait_ms: expected a number in 0..10000, got {max_wait_ms!r}")
        self.model = model
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._waiter: asyncio.Future | None = None  # the consumer's, while it waits for _want queued steps
        self._want = 1
        self._held: deque[_Pending] = deque()  # taken from the queue, waiting for a later batch (stream order)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-rnn-batch")
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, from start() (get_running_loop costs a
        # getpid() system call on each use in Python 3.11)
        self._closing = False
        self._on_batch = on_batch  # (batch size, queue waits in s, step seconds) -> None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._consume(), name="edge-rnn-batcher")

    async def stop(self) -> None:
        """Take no new steps; finish every step already accepted (the batch in flight too); then stop."""
        self._closing = True
        self._wake()  # a consumer waiting on an empty queue sees that it may end
        if self._task is not None:
            await self._task  # it ends once the queue and the held steps are empty
            self._task = None
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------ submitting
    def submit(self, stream: Stream, chunk: Any) -> asyncio.Future:
        """Queue a step of ``stream`` for the next batch it fits in; the future of its outputs (or of its
        EdgeRnnError). Raises :class:`Overloaded` or :class:`ShuttingDown` at once."""
        if self._closing:
            raise ShuttingDown("the server is shutting down and takes no new steps")
        future = (self._loop or asyncio.get_running_loop()).create_future()
        try:
            self._queue.put_nowait(_Pending(stream, chunk, future))
        except asyncio.QueueFull:
            raise Overloaded(f"overloaded: {self._queue.maxsize} steps already queued; retry shortly") from None
        if self._waiter is not None and self._queue.qsize() >= self._want:
            self._wake()
        return future

    async def step(self, stream: Stream, chunk: Any) -> dict:
        """Step ``stream`` by ``chunk`` in the next batch it fits in; its outputs, or its EdgeRnnError."""
        return await self.submit(stream, chunk)

    # ------------------------------------------------------------ the consumer
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, want: int, timeout: float | None) -> None:
        """Until ``want`` steps are queued, the batcher is stopping, or ``timeout`` seconds passed (None: no
        limit). One future and at most one timer per wait: woken once per batch, not once per step."""
        loop = self._loop or asyncio.get_running_loop()
        self._want, self._waiter = want, loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _take(self, batch: list[_Pending], taken: set[int], blocked: set[int]) -> None:
        """Move queued steps into the batch, up to max_batch; a stream's step behind one of its own is held."""
        queue = self._queue
        while len(batch) < self.max_batch and not queue.empty():
            p = queue.get_nowait()
            key = id(p.stream)
            if key in taken or key in blocked:
                blocked.add(key)
                self._held.append(p)
            else:
                taken.add(key)
                batch.append(p)

    async def _gather(self) -> list[_Pending]:
        """One batch: held steps first (in order), then the queue, at most one step per stream; up to max_batch
        steps, or what came within max_wait of the first step's arrival."""
        batch: list[_Pending] = []
        taken: set[int] = set()
        blocked: set[int] = set()  # streams with a step held back: their later steps wait behind it
        held, self._held = self._held, deque()
        for p in held:
            key = id(p.stream)
            if key in taken or key in blocked or len(batch) >= self.max_batch:
                blocked.add(key)
                self._held.append(p)
            else:
                taken.add(key)
                batch.append(p)
        while not batch:
            if self._queue.empty():
                if self._closing:
                    return batch
                await self._wait(1, None)
            self._take(batch, taken, blocked)
        first = min(p.queued_at for p in batch)  # a step that waited through the last batch goes at once
        while len(batch) < self.max_batch:
            self._take(batch, taken, blocked)
            remaining = first + self.max_wait - time.perf_counter()
            if len(batch) >= self.max_batch or remaining <= 0 or self._closing:
                break
            await self._wait(self.max_batch - len(batch), remaining)
        return batch

    async def _consume(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch and self._closing and self._queue.empty() and not self._held:
                return
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            started = time.perf_counter()
            try:  # awaited here, not in a helper coroutine: one frame to resume per batch
                results = await loop.run_in_executor(self._executor, self._run, [(p.stream, p.chunk) for p in live])
            except asyncio.CancelledError:  # this task is cancelled (the loop is closing): end, and say why
                _abandon(live)
                raise
            except BaseException as e:  # noqa: BLE001 - never leave a client waiting for ever
                results = [e] * len(live)
            self._settle(live, results, started)

    def _settle(self, live: list[_Pending], results: list, started: float) -> None:
        """Each step's outputs or error to its future (a client that gave up is skipped); the batch reported."""
        seconds = time.perf_counter() - started
        for p, r in zip(live, results):
            if p.future.cancelled():
                continue
            if isinstance(r, BaseException):
                p.future.set_exception(r)
            else:
                p.future.set_result(r)
        if self._on_batch is not None:
            self._on_batch(len(live), [started - p.queued_at for p in live], seconds)

    def _run(self, items: list[tuple[Stream, Any]]) -> list:
        return self.model.step_batch(items, on_error="isolate")


def _abandon(live: list[_Pending]) -> None:
    """The consumer is cancelled while ``live`` runs: each client still waiting is told."""
    for p in live:
        if not p.future.done():
            p.future.set_exception(ShuttingDown("the server stopped while this step ran; its stream may or may not "
                                                "have advanced"))
