"""One server's state, whatever serves it: the model, its open streams, the codec, the batcher and what it counts.

The FastAPI app (``_app``) and the stream socket (``_socket``) drive a
:class:`Service`; so can a second server path, since nothing here imports a
web framework or Prometheus (the metrics come in as a
:class:`~edge_rnn.service._recorder.Recorder`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from edge_rnn.errors import EdgeRnnError
from edge_rnn.runtime import StreamingModel
from edge_rnn.service._batcher import Batcher
from edge_rnn.service._codec import Codec
from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._errors import Refusal, refusal
from edge_rnn.service._recorder import NO_METRICS, Recorder
from edge_rnn.service._registry import Entry, Registry
from edge_rnn.service._status import HTTP_503_SERVICE_UNAVAILABLE, WS_1001_GOING_AWAY

__all__ = ["Service"]


class Service:
    """The state of one server; :meth:`start` and :meth:`stop` bracket its life on an event loop."""

    def __init__(self, model: StreamingModel, config: ServiceConfig, metrics: Recorder = NO_METRICS):
        self.model, self.config, self.metrics = model, config, metrics
        self.registry = Registry(model, config, metrics)
        self.codec = Codec(model, config.max_message_bytes)
        self.batcher: Batcher | None = None  # from start(): None while starting
        self.closing = False  # draining or stopped: no new streams or steps; snapshots still answered
        self.sockets: dict[str, Any] = {}  # stream id -> the ASGI send of its WebSocket, to close it at the end
        self._reaper: asyncio.Task | None = None

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
        """The step queued; its future. A refusal at once (overloaded, shutting down) raises :class:`Refusal`."""
        if self.closing:
            raise Refusal(HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down: no new steps; "
                          "a snapshot of the stream can still be fetched")
        try:
            return self.batcher.submit(entry.stream, chunk)
        except EdgeRnnError as e:
            raise refusal(e, self.metrics) from None

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
        """Wait until every stream is closed, or ``timeout`` seconds; then close the sockets left with 1001."""
        deadline = time.monotonic() + timeout
        while self.registry.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for send in list(self.sockets.values()):
            try:
                await send({"type": "websocket.close", "code": WS_1001_GOING_AWAY, "reason": "shutting_down"})
            except (OSError, RuntimeError):  # already gone
                pass
