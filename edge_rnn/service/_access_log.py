"""``serve --access-log``: uvicorn's own access log, one line per HTTP request and per WebSocket handshake, with
credentials kept out of it.

The service reads its bearer token from the ``Authorization`` header only, which uvicorn never logs. What a URL
carries is logged by an allow-list, so that no spelling lets a secret through:

- **Query:** the service takes no query parameter, so every value is replaced by ``[redacted]`` (whatever its
  name: ``token``, ``tok%65n``, ``x-api-key``, ``token[]`` alike); each name is logged percent-decoded (then
  quoted again, so the line stays one line), at most 32 characters. A parameter with no ``=`` is all value:
  ``[redacted]``.
- **Path:** on a server without a token a stream id is the only key to its stream (anyone who has it can step,
  snapshot or close it), so only the words of the service's own routes (``v1``, ``streams``, ``steps``, ...) are
  logged whole. Any other segment, a stream id above all, is logged as its first 4 characters and ``[...]``: enough
  to tell streams apart in a log, 24 of the id's 192 bits. Segments are percent-decoded first, so
  ``/v1/streams/%41bc...`` or ``/v1/streams%2F<id>`` show no more than ``/v1/streams/<id>``.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote, unquote_plus

__all__ = ["ACCESS_LOGGER", "RedactQuery", "enable_access_log", "redact"]

ACCESS_LOGGER = "uvicorn.access"
SERVER_LOGGER = "uvicorn.error"  # uvicorn's own lines, and its WebSocket handshakes (at INFO, not on the access log)
# the words of the service's routes (edge_rnn.service._routes, ._socket) and FastAPI's documentation pages
ROUTE_WORDS = frozenset({"", "v1", "streams", "steps", "snapshot", "ws", "model", "healthz", "readyz", "metrics",
                         "docs", "redoc", "openapi.json", "oauth2-redirect"})
SHOWN_PARAMETERS: frozenset[str] = frozenset()  # query parameters whose values are logged: the service takes none
KEPT = 4  # characters of any other path segment logged (a stream id's first 4 of 32)
NAME_CHARS = 32  # characters of a query parameter's name logged
REDACTED = "[redacted]"


def redact(target: str) -> str:
    """A request's path and query as logged: route words whole, any other path segment cut to its first
    :data:`KEPT` characters, query parameter names decoded and every value (but those of
    :data:`SHOWN_PARAMETERS`) replaced by ``[redacted]``.

    >>> redact("/v1/streams/AbCdEfGh/steps?tok%65n=s3cret&x")
    '/v1/streams/AbCd[...]/steps?token=[redacted]&[redacted]'
    """
    path, mark, query = target.partition("?")
    logged = "/".join(_segment(s) for s in path.split("/"))
    return logged + mark + "&".join(_parameter(p) for p in query.split("&") if p) if mark else logged


def _segment(raw: str) -> str:
    word = unquote(raw)
    if word in ROUTE_WORDS:
        return word
    return _shown(word[:KEPT]) + ("[...]" if len(word) > KEPT else "")


def _parameter(raw: str) -> str:
    name, eq, value = raw.partition("=")
    if not eq:
        return REDACTED
    name = unquote_plus(name)
    shown = _shown(name[:NAME_CHARS]) + ("[...]" if len(name) > NAME_CHARS else "")
    return f"{shown}={_shown(unquote_plus(value)) if name in SHOWN_PARAMETERS else REDACTED}"


def _shown(text: str) -> str:
    """``text`` quoted again where it must be: no space, quote, control character or separator reaches the line."""
    return quote(text, safe="[]-_.~!$'()*+,:@")


def _target(arg: object) -> bool:
    """Whether a log record's argument is a request target: its path begins with ``/`` (uvicorn logs the path
    parsed out of an absolute-form target too), or it is only a query. The client's address, the method, the HTTP
    version and the status never do."""
    return isinstance(arg, str) and arg.startswith(("/", "?"))


class RedactQuery(logging.Filter):
    """Redacts the request target among a record's arguments (uvicorn passes the path with its query string as
    one of them), as :func:`redact` does."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if _target(a) else a for a in record.args)
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
