"""A request's body and media type, read within limits: refused as it arrives, never buffered whole first.

A declared ``Content-Length`` over the limit is refused before a byte of the
body is read; a body without one (chunked) is refused once what arrived passes
the limit. Either way the refusal is a 413 ``too_large`` that closes the
connection (:class:`BodyTooLarge`: the routes add ``Connection: close``), so the rest is never read.
No web framework here: the body comes in as any async iterator of byte pieces.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

from edge_rnn.service._errors import Refusal
from edge_rnn.service._status import HTTP_413_CONTENT_TOO_LARGE, HTTP_415_UNSUPPORTED_MEDIA_TYPE

__all__ = ["JSON", "BINARY", "BodyTooLarge", "media_kind", "read_body"]

JSON, BINARY = "application/json", "application/octet-stream"
_UTF8 = (None, "", "utf-8", "utf8", "us-ascii", "ascii")  # JSON's charsets: none said, UTF-8, or a subset of it


class BodyTooLarge(Refusal):
    """A body over the limit, refused before its rest is read: the answer closes the connection."""

    def __init__(self, limit: int, got: str):
        super().__init__(HTTP_413_CONTENT_TOO_LARGE, "too_large", f"expected a body of at most {limit} bytes, got "
                         f"{got}")


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


async def read_body(pieces: AsyncIterable[bytes], headers: Mapping[str, str], limit: int) -> bytearray:
    """The whole body, at most ``limit`` bytes; a 413 as soon as it is known to be longer (see the module)."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, f"Content-Length {int(declared)}")
    body = bytearray()
    async for piece in pieces:
        if len(body) + len(piece) > limit:
            raise BodyTooLarge(limit, f"at least {len(body) + len(piece)}")
        body += piece
    return body
