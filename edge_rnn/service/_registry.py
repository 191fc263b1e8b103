"""The open streams of one server, by id: opened (from zeros or a snapshot), looked up, closed, and expired
after idling. No web framework here."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_rnn.runtime import Stream, StreamingModel
from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._errors import Refusal
from edge_rnn.service._recorder import Recorder
from edge_rnn.service._status import HTTP_404_NOT_FOUND, HTTP_429_TOO_MANY_REQUESTS

__all__ = ["Entry", "Registry"]


@dataclass
class Entry:
    stream: Stream
    last_used: float = field(default_factory=time.monotonic)
    next_step: int = 0
    # HTTP steps of one stream run one at a time: X-Step is checked and counted around the whole step, so a
    # retry sent while the first is still queued is refused (409), never applied twice
    order: asyncio.Lock = field(default_factory=asyncio.Lock)


class Registry:
    """Open streams by id, at most ``config.max_streams``; each idle longer than ``config.idle_timeout`` is
    closed by :meth:`reap` and counted as expired."""

    def __init__(self, model: StreamingModel, config: ServiceConfig, metrics: Recorder):
        self.model, self.config, self.metrics = model, config, metrics
        self.streams: dict[str, Entry] = {}
        self.on_expire: Callable[[str], None] | None = None  # called with each expired stream's id, once closed

    def open(self, snapshot: bytes | None = None) -> str:
        """A new stream's id: from zeros, or resumed from ``snapshot`` (a StateError if it is not this model's)."""
        if len(self.streams) >= self.config.max_streams:
            self.metrics.reject("too_many_streams")
            raise Refusal(HTTP_429_TOO_MANY_REQUESTS, "too_many_streams", f"{self.config.max_streams} streams are "
                          "open; close one first")
        stream = self.model.restore(snapshot) if snapshot else self.model.open_stream()
        sid = secrets.token_urlsafe(24)  # 192 random bits
        self.streams[sid] = Entry(stream)
        self.metrics.set_active(len(self.streams))
        return sid

    def get(self, sid: str) -> Entry:
        """The open stream ``sid``, marked as used now."""
        entry = self.streams.get(sid)
        if entry is None:
            raise Refusal(HTTP_404_NOT_FOUND, "unknown_stream", "no such stream (never opened, closed, or expired)")
        entry.last_used = time.monotonic()
        return entry

    def close(self, sid: str) -> None:
        """Close ``sid`` if it is open (closing twice is no error)."""
        entry = self.streams.pop(sid, None)
        if entry is not None:
            entry.stream.close()
        self.metrics.set_active(len(self.streams))

    async def reap(self) -> None:
        """Close streams idle longer than the timeout, for ever; counted as expirations."""
        while True:
            await asyncio.sleep(min(1.0, self.config.idle_timeout / 4))
            now = time.monotonic()
            for sid in [s for s, e in self.streams.items() if now - e.last_used > self.config.idle_timeout]:
                self.close(sid)
                self.metrics.expire()
                if self.on_expire is not None:
                    self.on_expire(sid)
