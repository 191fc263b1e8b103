"""A stream of any of the client's four classes, driven from blocking code; and the final snapshot a stream of
the fixture must end with."""

from __future__ import annotations

import asyncio
from functools import cache

import numpy as np
from service_streams import MODEL_PATH

from edge_rnn.client import AsyncHttpStream, HttpStream, SyncWebSocketStream, WebSocketStream
from edge_rnn.runtime import StreamingModel

__all__ = ["Client", "KINDS", "offline_snapshot"]


@cache
def _model() -> StreamingModel:
    return StreamingModel.load(MODEL_PATH)


def offline_snapshot(parts: list[np.ndarray]) -> bytes:
    """The snapshot of a stream of its own after ``parts``: the state and step count a served one must end with."""
    model = _model()
    s = model.open_stream()
    for c in parts:
        model.step(s, c)
    return s.snapshot()


class Client:
    """A client of any of the four classes, called from blocking code (an async one on an event loop of its own)."""

    OPEN = {"http": HttpStream, "sync_ws": SyncWebSocketStream, "async_http": AsyncHttpStream.open,
            "ws": WebSocketStream.open}

    def __init__(self, kind: str, url: str, **kw):
        self.loop = asyncio.new_event_loop() if kind in ("async_http", "ws") else None
        self.s = self._call(self.OPEN[kind](url, width=6, **kw))

    def _call(self, x):
        return self.loop.run_until_complete(x) if self.loop is not None else x

    def step(self, x) -> np.ndarray:
        return self._call(self.s.step(x))

    def snapshot(self) -> bytes:
        return self._call(self.s.snapshot())

    def close(self) -> None:
        try:
            self._call(self.s.close())
        finally:
            if self.loop is not None:
                self.loop.close()


KINDS = list(Client.OPEN)
