"""A request's body and media type, read within limits: refused as it arrives, never buffered whole first.

A declared ``Content-Length`` over the limit is refused before a byte of the
body is read; a body without one (chunked) is refused once what arrived passes
the limit. Either way the refusal is a 413 ``too_large`` that closes the
connection (:class:`BodyTooLarge`: the routes add ``Connection: close``), so the rest is never read.
The bytes of all the bodies still arriving are bounded together by a :class:`Budget`: one piece more than it
allows is a 503 ``overloaded`` that closes the connection too. A header that decides what a request means,
repeated, is a 400 ``bad_request`` (:func:`single_headers`). No web framework here: the body comes in as any
async iterator of byte pieces.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Mapping

from edge_rnn.service._errors import Refusal
from edge_rnn.service._status import (
    HTTP_400_BAD_REQUEST,
    HTTP_413_CONTENT_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_503_SERVICE_UNAVAILABLE,
)

__all__ = ["JSON", "BINARY", "BodyRefused", "BodyTooLarge", "Budget", "media_kind", "read_body", "single_headers"]

JSON, BINARY = "application/json", "application/octet-stream"
_UTF8 = (None, "", "utf-8", "utf8", "us-ascii", "ascii")  # JSON's charsets: none said, UTF-8, or a subset of it
# the headers that decide what a request means (its media type, its framing, its place in the stream, who sends
# it): two of one, and a server and a proxy in front of it could each read another
_ONCE = frozenset((b"content-type", b"content-length", b"transfer-encoding", b"x-step", b"authorization"))


class BodyRefused(Refusal):
    """A refusal that leaves the rest of the body unread: the answer closes the connection."""


class BodyTooLarge(BodyRefused):
    """A body over the limit, refused before its rest is read."""

    def __init__(self, limit: int, got: str):
        super().__init__(HTTP_413_CONTENT_TOO_LARGE, "too_large", f"expected a body of at most {limit} bytes, got "
                         f"{got}")


class Budget:
    """The bytes of the bodies being received, all requests together: at most ``limit``. A body takes its bytes
    as they arrive (a client sending slowly holds only what it sent) and gives them back once it is read whole, or
    refused; ``on_full`` is called at each refusal (to count it)."""

    def __init__(self, limit: int, on_full: Callable[[], None] = lambda: None):
        self.limit, self.used, self.on_full = limit, 0, on_full

    def take(self, n: int) -> None:
        if self.used + n > self.limit:
            self.on_full()
            raise BodyRefused(HTTP_503_SERVICE_UNAVAILABLE, "overloaded", f"overloaded: expected at most {self.limit} "
                              f"bytes of bodies arriving at once, got {self.used + n}; retry shortly", retry_after=1)
        self.used += n


def single_headers(raw: Iterable[tuple[bytes, bytes]]) -> None:
    """A 400 ``bad_request`` (closing the connection) if a header that decides what a request means is repeated:
    Content-Type, Content-Length, Transfer-Encoding, X-Step, Authorization."""
    seen: set[bytes] = set()
    for name, _ in raw:
        name = name.lower()
        if name in _ONCE:
            if name in seen:
                raise BodyRefused(HTTP_400_BAD_REQUEST, "bad_request", f"expected one {name.decode()} header, got "
                                  "more than one")
            seen.add(name)


def media_kind(content_type: str | None) -> str:
    """:data:`JSON` or :data:`BINARY`, from a Content-Type header: the type is compared without regard to case and
    its parameters are ignored, but for a charset other than UTF-8 on JSON; anything else (or none) is a 415."""
    kind, _, params = (content_type or "").partition(";")
    kind = kind.strip().lower()
    if kind == JSON and _charset(params) in _UTF8:
        return JSON
    if kind == BINARY:
        return BINARY
    got = f"{content_type!r}" if content_type else "none"
    raise Refusal(HTTP_415_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", f"expected Content-Type {BINARY} "
                  f"(float32 frames) or {JSON} (UTF-8, {{\"x\": ...}}), got {got}")


def _charset(params: str) -> str | None:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


async def read_body(pieces: AsyncIterable[bytes], headers: Mapping[str, str], limit: int,
                    budget: Budget | None = None) -> bytearray:
    """The whole body, at most ``limit`` bytes; a 413 as soon as it is known to be longer, a 503 when ``budget``
    has no room for a piece (see the module)."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, f"Content-Length {int(declared)}")
    body = bytearray()
    try:
        async for piece in pieces:
            if len(body) + len(piece) > limit:
                raise BodyTooLarge(limit, f"at least {len(body) + len(piece)}")
            if budget is not None:
                budget.take(len(piece))
            body += piece
    finally:
        if budget is not None:
            budget.used -= len(body)
    return body
