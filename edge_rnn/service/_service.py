"""One server's state, whatever serves it: the model, its open streams, the codec, the batcher and what it counts.

The FastAPI app (``_app``) and the stream socket (``_socket``) drive a
:class:`Service`; so can a second server path, since nothing here imports a
web framework or Prometheus (the metrics come in as a
:class:`~edge_rnn.service._recorder.Recorder`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from edge_rnn.errors import EdgeRnnError
from edge_rnn.runtime import StreamingModel
from edge_rnn.service._batcher import Batcher
from edge_rnn.service._codec import Codec
from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._errors import Refusal, refusal
from edge_rnn.service._recorder import NO_METRICS, Recorder
from edge_rnn.service._registry import Entry, Registry
from edge_rnn.service._status import HTTP_404_NOT_FOUND, HTTP_503_SERVICE_UNAVAILABLE

__all__ = ["Service", "CLOSE_GRACE"]

CLOSE_GRACE = 1.0  # seconds the server's closing messages to one socket may take; then it stops waiting on them


class Service:
    """The state of one server; :meth:`start` and :meth:`stop` bracket its life on an event loop."""

    def __init__(self, model: StreamingModel, config: ServiceConfig, metrics: Recorder = NO_METRICS, *,
                 replica: str | None = None):
        self.model, self.config, self.metrics = model, config, metrics
        self.replica = replica  # on Ray Serve, this replica's id: its streams' ids start with it and a dot
        self.registry = Registry(model, config, metrics, prefix=f"{replica}." if replica else "")
        self.codec = Codec(model, config.max_message_bytes)
        self.batcher: Batcher | None = None  # from start(): None while starting
        self.closing = False  # draining or stopped: no new streams or steps; snapshots still answered
        # stream id -> the ASGI send of its WebSocket while open; the server closes it (expired, drained) with
        # close_socket, which takes it out first
        self.sockets: dict[str, Any] = {}
        # on Ray Serve, a new HTTP stream this replica has no room for, opened on another replica that has:
        # ``await overflow(snapshot)`` is that stream's id, or None where no replica has room
        self.overflow: Callable[[bytes | None], Awaitable[str | None]] | None = None
        self._reaper: asyncio.Task | None = None
        self._closers: set[asyncio.Task] = set()
        self.registry.on_expire = self._expired

    def start(self) -> None:
        """On the running loop: start the batcher and the reaper of idle streams."""
        c = self.config
        self.batcher = Batcher(self.model, max_batch=c.max_batch, max_wait_ms=c.max_wait_ms, max_queue=c.max_queue,
                               max_batch_frames=c.max_batch_frames, on_batch=self.metrics.on_batch)
        self.batcher.start()
        self._reaper = asyncio.get_running_loop().create_task(self.registry.reap())

    async def stop(self) -> None:
        """Take no new steps, finish the steps already accepted, stop reaping."""
        self.closing = True
        await self.batcher.stop()
        self._reaper.cancel()

    def submit(self, entry: Entry, chunk: Any) -> asyncio.Future:
        """The step queued; its future. A refusal at once (overloaded, shutting down) raises :class:`Refusal`.
        Until the future is done the stream is busy, never idle (whichever transport sent the step); its idle time
        counts from then."""
        if self.closing:
            raise Refusal(HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down: no new steps; "
                          "a snapshot of the stream can still be fetched")
        try:
            future = self.batcher.submit(entry.stream, chunk)
        except EdgeRnnError as e:
            raise refusal(e, self.metrics) from None
        entry.busy += 1
        future.add_done_callback(partial(_done, entry))
        return future

    async def step(self, entry: Entry, chunk: Any) -> dict:
        """The step's outputs; any refusal or engine error as a :class:`Refusal`."""
        try:
            return await self.submit(entry, chunk)
        except EdgeRnnError as e:
            raise refusal(e, self.metrics) from None

    def begin_drain(self) -> None:
        """Stop taking new streams and steps; steps already accepted finish, snapshots are still answered."""
        self.closing = True

    async def drain(self, timeout: float) -> None:
        """Wait until every stream is closed, or ``timeout`` seconds; then close the sockets left with 1001, in
        at most :data:`CLOSE_GRACE` seconds more whatever their clients do."""
        deadline = time.monotonic() + timeout
        while self.registry.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        going = Refusal(HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
        closers = [self.close_socket(sid, going, tell=False) for sid in list(self.sockets)]
        if closers:
            await asyncio.wait(closers)

    def close_socket(self, sid: str, e: Refusal, *, tell: bool = True) -> asyncio.Task:
        """Close stream ``sid``'s socket with ``e``'s close code, after its error message (``tell``), in a task of
        its own taking at most :data:`CLOSE_GRACE` seconds: the socket's handler then receives its disconnect.
        A client that takes neither message is dropped by the protocol (``write_timeout``)."""
        task = asyncio.get_running_loop().create_task(_close(self.sockets.pop(sid), e, tell))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)
        return task

    def _expired(self, sid: str) -> None:
        if sid in self.sockets:
            self.close_socket(sid, Refusal(HTTP_404_NOT_FOUND, "unknown_stream", "the stream expired after idling"))


def _done(entry: Entry, future: asyncio.Future) -> None:
    entry.busy -= 1
    entry.last_used = time.monotonic()


async def _close(send: Any, e: Refusal, tell: bool) -> None:
    try:
        await asyncio.wait_for(_close_messages(send, e, tell), CLOSE_GRACE)
    except (OSError, RuntimeError, asyncio.TimeoutError):  # gone, closed already, or not reading
        pass


async def _close_messages(send: Any, e: Refusal, tell: bool) -> None:
    if tell:
        await send({"type": "websocket.send", "text": json.dumps(e.body())})
    await send({"type": "websocket.close", "code": e.close_code, "reason": e.code})
