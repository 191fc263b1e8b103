"""What both transports of the client share: a chunk as bytes, the server's URL, the token's header, and whether a
server stream is in step with the client (a reply as an array: ``_width``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from edge_rnn.client._resume import ServiceError, interrupted
from edge_rnn.errors import EdgeRnnError

__all__ = ["ABANDON_S", "GIVEN_UP", "InStep", "chunk_bytes", "auth_headers", "http_base", "said", "shown"]

ABANDON_S = 1.0  # seconds a stream given up for a resumed one may take to close (best effort)
GIVEN_UP = "the stream was given up by this client (for a resumed one, or by a resume that failed)"
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}  # a URL's scheme -> the server's HTTP


def chunk_bytes(x: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(x, dtype="<f4")).tobytes()


_FORMS = "http://host:port (or ws://host:port, or the socket's ws://host:port/v1/streams/ws)"


def _parts(text: str) -> tuple[str, str, str]:
    """``text`` as its ``scheme://`` (or nothing), its authority (``user:password@host:port``) and the rest."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return scheme + sep, rest[:end], rest[end:]


def shown(url: object) -> str:
    """``url`` as a message may quote it: a ``user:password@`` masked as ``***@``, a query or a fragment (which
    may hold a token) as ``?...`` or ``#...``: never the secret, whatever else the text is.

    >>> shown("http://user:pw@h:1/p?token=t")
    'http://***@h:1/p?...'
    """
    scheme, authority, tail = _parts(url if isinstance(url, str) else repr(url))
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    end = min((i for i in (tail.find(c) for c in "?#") if i >= 0), default=len(tail))
    return scheme + authority + tail[:end] + (tail[end] + "..." if end < len(tail) else "")


def http_base(url: str) -> str:
    """The server's HTTP base URL from what a client was given: ``http(s)://host:port``, or the ``ws(s)://`` form,
    each with or without a path ending in ``/v1/streams/ws`` (the socket) or ``/v1/streams``; a path before that
    (a proxy's prefix) is kept. A URL with a ``user:password@`` is refused (httpx would send it as Basic auth in
    place of the token's Bearer: a token goes as ``token=``), and so is one with a query or a fragment, which no
    request path may follow. No message quotes a password or a query (:func:`shown`)."""
    text = url if isinstance(url, str) else ""
    _, authority, tail = _parts(text)
    if "@" in authority:
        raise EdgeRnnError(f"url: expected a server URL without user:password@, got {shown(url)!r}; pass the "
                           "token with token= (the CLI: --token-file)")
    if "?" in tail or "#" in tail:
        raise EdgeRnnError(f"url: expected the server's base URL, {_FORMS}, without a query or fragment, got "
                           f"{shown(url)!r} (a token goes as token=; the CLI: --token-file)")
    base = text.rstrip("/")
    base = next((base.removesuffix(e) for e in ("/v1/streams/ws", "/v1/streams") if base.endswith(e)), base)
    scheme, sep, rest = base.partition("://")
    if not sep or scheme.lower() not in _SCHEMES or not rest:
        raise EdgeRnnError(f"url: expected the server's base URL, {_FORMS}, got {shown(url)!r}")
    return _SCHEMES[scheme.lower()] + "://" + rest


def said(value: Any, limit: int | None = None) -> str:
    """``value`` (a field of a JSON answer) as text, of at most ``limit`` characters, whatever its nesting (a
    hostile one's str() raises RecursionError)."""
    try:
        return str(value)[:limit]
    except RecursionError:
        return "(a value nested too deep)"


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
