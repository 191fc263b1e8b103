"""The bearer token: checked in constant time on every route but the health checks, and on the stream socket.
No web framework here: the headers are anything with ``get(name, default)`` over lower-case names."""

from __future__ import annotations

import hmac
from typing import Any

from edge_rnn.service._errors import Refusal
from edge_rnn.service._recorder import Recorder
from edge_rnn.service._status import HTTP_401_UNAUTHORIZED

__all__ = ["authorize", "ScopeHeaders"]


def authorize(token: str | None, headers: Any, metrics: Recorder) -> None:
    """Pass when no token is configured or ``headers`` carry ``Authorization: Bearer <token>``; else a 401
    :class:`Refusal`, counted as ``unauthorized``."""
    if token is None:
        return
    given = headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):  # constant time
        metrics.reject("unauthorized")
        raise Refusal(HTTP_401_UNAUTHORIZED, "unauthorized", "expected Authorization: Bearer <token>")


class ScopeHeaders:
    """The lower-case header look-up :func:`authorize` needs, over an ASGI scope's raw headers."""

    def __init__(self, scope: dict):
        self._raw = scope.get("headers", ())

    def get(self, name: str, default: str = "") -> str:
        key = name.encode("latin-1")
        return next((v.decode("latin-1") for k, v in self._raw if k.lower() == key), default)
