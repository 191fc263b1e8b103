"""``serve --access-log``: uvicorn's own access log, one line per HTTP request and per WebSocket handshake, with
credentials kept out of it.

The service reads its bearer token from the ``Authorization`` header only, which uvicorn never logs; a client that
puts a token in the URL instead (``?token=...``: refused, as any request without the header) would have it written
to the log with the path, so query values under a credential's name are redacted before the line is formatted.
"""

from __future__ import annotations

import logging
import re

__all__ = ["ACCESS_LOGGER", "RedactQuery", "enable_access_log", "redact"]

ACCESS_LOGGER = "uvicorn.access"
SERVER_LOGGER = "uvicorn.error"  # uvicorn's own lines, and its WebSocket handshakes (at INFO, not on the access log)
_SECRET = re.compile(r"([?&;](?:token|access_token|api_key|apikey|key|auth|authorization|bearer|password|secret)=)"
                     r"[^&;#\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the value of every query parameter named like a credential replaced by ``[redacted]``."""
    return _SECRET.sub(r"\1[redacted]", text)


class RedactQuery(logging.Filter):
    """Redacts credential-like query values in a record's arguments (uvicorn's access line passes the path with its
    query string as one of them) and in its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


class _HandshakesOnly(logging.Filter):
    """On uvicorn's server logger at INFO: its warnings and errors as before, and of its INFO lines only the WebSocket
    handshakes (``"WebSocket /v1/streams/ws" [accepted]``), not its start-up chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or (isinstance(record.msg, str) and '"WebSocket ' in record.msg)


def enable_access_log() -> None:
    """Log every HTTP request at INFO on ``uvicorn.access`` (its handler: stdout, uvicorn's default) and every
    WebSocket handshake on ``uvicorn.error`` (stderr), both redacted. Called after ``uvicorn.Config`` is built,
    since that sets both loggers to the server's level (warning)."""
    for name, only in ((ACCESS_LOGGER, None), (SERVER_LOGGER, _HandshakesOnly)):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        for kind in (only, RedactQuery):
            if kind is not None and not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())
