"""The bearer token: checked in constant time on every route but the health checks, and on the stream socket.
No web framework here: the headers are anything with ``get(name, default)`` over lower-case names."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from edge_rnn.errors import EdgeRnnError
from edge_rnn.service._errors import Refusal
from edge_rnn.service._recorder import Recorder
from edge_rnn.service._status import HTTP_401_UNAUTHORIZED

__all__ = ["authorize", "read_token", "ScopeHeaders"]


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


def read_token(path: Path | None, flag: str = "--token-file") -> str | None:
    """The bearer token in ``path`` (None: no token): UTF-8 text whose stripped content is at least 16 visible
    ASCII characters, as an HTTP header can carry it (a header is latin-1 on the wire: a token of other
    characters could never be sent, so no one could log in)."""
    if path is None:
        return None
    if not path.exists():
        raise EdgeRnnError(f"{flag} {path}: no such file")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "a device, pipe or socket, not a regular file"
        raise EdgeRnnError(f"{flag} {path}: expected a file, got {kind}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EdgeRnnError(f"{flag} {path}: expected UTF-8 text, got byte 0x{raw[e.start]:02x} at offset "
                           f"{e.start}, which is not") from None
    token = text.strip()
    odd = next((c for c in token if not "!" <= c <= "~"), None)
    if odd is not None:
        raise EdgeRnnError(f"{flag} {path}: expected a token of visible ASCII characters (an HTTP header carries "
                           f"it: no spaces, control or non-ASCII characters), got {odd!r} at position "
                           f"{token.index(odd)}")
    if len(token) < 16:
        raise EdgeRnnError(f"{flag} {path}: expected a token of at least 16 characters, got {len(token)}")
    return token
