"""The open streams of one server, by id: opened (from zeros or a snapshot), looked up, closed, and expired
after idling. No web framework here."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edge_rnn.errors import StateError
from edge_rnn.runtime import Stream, StreamingModel
from edge_rnn.runtime._snapshot import MAX_STEPS, encode_snapshot, stream_shape
from edge_rnn.service._body import Budget
from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._errors import Refusal
from edge_rnn.service._recorder import Recorder
from edge_rnn.service._status import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_503_SERVICE_UNAVAILABLE,
)

__all__ = ["Entry", "Registry"]


@dataclass
class Entry:
    stream: Stream
    last_used: float = field(default_factory=time.monotonic)
    next_step: int = 0
    # HTTP steps of one stream run one at a time: X-Step is checked and counted around the whole step (the lock
    # is let go when the engine is done with it), so a retry sent while the first is still queued is refused
    # (409), never applied twice
    order: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: int = 0  # HTTP steps of this stream admitted and not yet answered (their body arriving too)
    busy: int = 0  # steps of this stream in the engine (queued or running), either transport's: never idle then


class Registry:
    """Open streams by id, at most ``config.max_streams``; each idle longer than ``config.idle_timeout`` (no step
    in flight, and none ended for that long) is closed by :meth:`reap` and counted as expired."""

    def __init__(self, model: StreamingModel, config: ServiceConfig, metrics: Recorder, *, prefix: str = ""):
        self.model, self.config, self.metrics = model, config, metrics
        self.prefix = prefix  # every stream id starts with it: on Ray Serve, the replica's id and a dot (routing)
        self.streams: dict[str, Entry] = {}
        self.on_expire: Callable[[str], None] | None = None  # called with each expired stream's id, once closed
        self.in_flight = 0  # HTTP steps of all streams whose body is whole, not yet answered: the engine's slots
        # the bytes of all HTTP bodies still arriving: as many as the engine's slots hold whole
        self.bodies = Budget((config.max_batch + config.max_queue) * config.max_message_bytes,
                             lambda: metrics.reject("overloaded"))
        self.snapshot_limit = _snapshot_limit(model)  # the most bytes a snapshot of this model takes

    def open(self, snapshot: bytes | None = None) -> str:
        """A new stream's id: from zeros, or resumed from ``snapshot`` (refused as :meth:`restored` refuses it)."""
        if len(self.streams) >= self.config.max_streams:
            self.metrics.reject("too_many_streams")
            raise Refusal(HTTP_429_TOO_MANY_REQUESTS, "too_many_streams", f"{self.config.max_streams} streams are "
                          "open; close one first")
        stream = self.restored(snapshot) if snapshot else self.model.open_stream()
        sid = self.prefix + secrets.token_urlsafe(24)  # 192 random bits
        self.streams[sid] = Entry(stream)
        self.metrics.set_active(len(self.streams))
        return sid

    def restored(self, snapshot: bytes) -> Stream:
        """A stream resumed from ``snapshot``; another model's, a corrupt one or another version's is a 400
        ``bad_snapshot`` (and takes no slab row)."""
        try:
            return self.model.restore(snapshot)
        except StateError as e:
            raise Refusal(HTTP_400_BAD_REQUEST, "bad_snapshot", str(e)) from None

    def full(self) -> bool:
        """No room for another stream (``config.max_streams`` are open)."""
        return len(self.streams) >= self.config.max_streams

    def get(self, sid: str) -> Entry:
        """The open stream ``sid``, marked as used now."""
        entry = self.streams.get(sid)
        if entry is None:
            raise Refusal(HTTP_404_NOT_FOUND, "unknown_stream", "no such stream (never opened, closed, or expired)")
        entry.last_used = time.monotonic()
        return entry

    @contextmanager
    def admitted(self, entry: Entry) -> Iterator[Callable[[], None]]:
        """An HTTP step of ``entry`` counted in flight for the block, if there is room; else refused at once (before
        its body is read): a 429 ``stream_busy`` beyond ``config.max_stream_inflight`` of one stream, a 503
        ``overloaded`` when ``max_batch + max_queue`` steps of all hold an engine slot (as many as the engine holds
        running and queued: more can only wait). Both say Retry-After. The block is given ``engage``, to call once
        the body is whole: it takes an engine slot, or is that 503. A body still arriving holds no engine slot (a
        slow client cannot take them all): its bytes are bounded by :attr:`bodies` instead. The stream's idle
        time counts from the block's end."""
        c = self.config
        if entry.in_flight >= c.max_stream_inflight:
            self.metrics.reject("stream_busy")
            raise Refusal(HTTP_429_TOO_MANY_REQUESTS, "stream_busy", f"expected at most {c.max_stream_inflight} "
                          "steps of one stream in flight at once, got one more: wait for an answer", retry_after=1)
        self._room()
        engaged = False

        def engage() -> None:
            nonlocal engaged
            self._room()
            self.in_flight += 1
            engaged = True

        entry.in_flight += 1
        try:
            yield engage
        finally:
            entry.in_flight -= 1
            self.in_flight -= engaged
            entry.last_used = time.monotonic()

    def _room(self) -> None:
        """A 503 ``overloaded`` if every engine slot is taken."""
        if self.in_flight >= self.config.max_batch + self.config.max_queue:
            self.metrics.reject("overloaded")
            raise Refusal(HTTP_503_SERVICE_UNAVAILABLE, "overloaded", f"overloaded: {self.in_flight} steps already "
                          "in flight; retry shortly", retry_after=1)

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
            for sid in [s for s, e in self.streams.items() if _idle(e, now, self.config.idle_timeout)]:
                self.close(sid)
                self.metrics.expire()
                if self.on_expire is not None:
                    self.on_expire(sid)


def _idle(entry: Entry, now: float, timeout: float) -> bool:
    """No step in flight (an HTTP body arriving, a step waiting for its turn, queued or running), and none for
    longer than ``timeout``."""
    return not entry.in_flight and not entry.busy and now - entry.last_used > timeout


def _snapshot_limit(model: StreamingModel) -> int:
    """The size of a snapshot of ``model`` at the largest step count, and 4 KiB for a header another edge-rnn
    version writes: a body beyond it is no snapshot of this model, refused before it is read."""
    zeros = {s.input: np.zeros(stream_shape(s), np.dtype(s.dtype)) for s in model.states}
    return len(encode_snapshot(model.fingerprint, model.states, zeros, MAX_STEPS)) + 4096
