"""What both transports of the client share: a chunk as bytes, a reply as an array, the token's header, and
whether a server stream is in step with the client."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from edge_rnn.client._resume import ServiceError, interrupted

__all__ = ["ABANDON_S", "GIVEN_UP", "InStep", "chunk_bytes", "output", "auth_headers", "http_base", "width_of",
           "ask_width", "aask_width"]

ABANDON_S = 1.0  # seconds a stream given up for a resumed one may take to close (best effort)
GIVEN_UP = "the stream was given up by this client (for a resumed one, or by a resume that failed)"


def chunk_bytes(x: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(x, dtype="<f4")).tobytes()


def output(data: bytes, width: int | None) -> np.ndarray:
    y = np.frombuffer(data, dtype="<f4")
    return y.reshape(-1, width) if width else y


def http_base(url: str) -> str:
    """The server's HTTP base URL from what a client was given (``ws://`` and the socket's path taken back)."""
    base = url.rstrip("/").removesuffix("/v1/streams/ws")
    return "http" + base[2:] if base.startswith("ws") else base


def width_of(model: Any) -> int | None:
    """The values per frame of the primary output, from ``GET /v1/model``'s answer (None where it says none)."""
    try:
        shape = model["outputs"][0]["shape"]
        return int(np.prod([d for d in shape if d is not None], dtype=np.int64)) or None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def ask_width(url: str, token: str | None, timeout: float = 30.0) -> int | None:
    """The primary output's width as the server describes its model: what shapes a step's reply ``(time,
    width)``. None (flat replies) where the server does not say; an error opening the stream says why then."""
    import httpx

    try:
        r = httpx.get(http_base(url) + "/v1/model", headers=auth_headers(token), timeout=timeout)
        return width_of(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def aask_width(url: str, token: str | None, timeout: float = 30.0) -> int | None:
    """:func:`ask_width`, async."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            r = await http.get(http_base(url) + "/v1/model", headers=auth_headers(token))
        return width_of(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


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
