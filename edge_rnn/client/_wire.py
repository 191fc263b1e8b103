"""What both transports of the client share: a chunk as bytes, the server's URL, the token's header, and whether a
server stream is in step with the client (a reply as an array: ``_width``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from edge_rnn.client._resume import ServiceError, interrupted
from edge_rnn.errors import EdgeRnnError

__all__ = ["ABANDON_S", "GIVEN_UP", "InStep", "chunk_bytes", "auth_headers", "http_base"]

ABANDON_S = 1.0  # seconds a stream given up for a resumed one may take to close (best effort)
GIVEN_UP = "the stream was given up by this client (for a resumed one, or by a resume that failed)"
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}  # a URL's scheme -> the server's HTTP


def chunk_bytes(x: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(x, dtype="<f4")).tobytes()


def http_base(url: str) -> str:
    """The server's HTTP base URL from what a client was given: ``http(s)://host:port``, or the ``ws(s)://`` form,
    each with or without a path ending in ``/v1/streams/ws`` (the socket) or ``/v1/streams``; a path before that
    (a proxy's prefix) is kept."""
    base = url.rstrip("/") if isinstance(url, str) else ""
    base = next((base.removesuffix(e) for e in ("/v1/streams/ws", "/v1/streams") if base.endswith(e)), base)
    scheme, sep, rest = base.partition("://")
    if not sep or scheme.lower() not in _SCHEMES or not rest:
        raise EdgeRnnError(f"url: expected the server's base URL, http://host:port (or ws://host:port, or the "
                           f"socket's ws://host:port/v1/streams/ws), got {url!r}")
    return _SCHEMES[scheme.lower()] + "://" + rest


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class InStep:
    """Whether the client's current server stream can take a call: in step, or why not. Once not, every call
    raises why (a :class:`ServiceError` that a resume cures: ``out_of_step`` or ``unknown_stream``) until a new
    stream is opened (with a new InStep). ``out_of_step`` and ``unknown``: those errors' statuses in the
    transport's numbers (HTTP statuses, or WebSocket close codes)."""

    def __init__(self, out_of_step: int, unknown: int):
        self._statuses = (out_of_step, unknown)
        self._why: Callable[[], ServiceError] | None = None

    def check(self) -> None:
        """Raises why the stream cannot take a call, if it cannot."""
        if self._why is not None:
            raise self._why()

    def sending(self) -> None:
        """A request that changes the stream goes out: until :meth:`answered`, a call interrupted (cancelled,
        Ctrl-C, a reply lost) leaves the server's stream maybe a step ahead of the client, or its reply unread."""
        self.check()
        self._why = partial(interrupted, self._statuses[0])

    def answered(self) -> None:
        self._why = None

    def give_up(self, why: str) -> None:
        """The stream is gone for this client (given up for another, closed by the server): ``why``."""
        self._why = partial(ServiceError, self._statuses[1], "unknown_stream", why)
