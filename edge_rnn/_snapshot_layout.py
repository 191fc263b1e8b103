"""A snapshot's layout, which the runtime writes and reads and the client reads without the runtime: the magic
``EDGERNN-SNAPSHOT``, a little-endian uint32 header length, the JSON header, then the state bytes. What the header
holds, and every check of it, is the runtime's (``edge_rnn.runtime._snapshot``)."""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = ["MAGIC", "pack", "unpack"]

MAGIC = b"EDGERNN-SNAPSHOT"


def pack(header: dict, body: bytes) -> bytes:
    """A snapshot of ``header`` (as JSON) and the state bytes ``body``."""
    head = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + body


def unpack(data: Any) -> tuple[Any, int]:
    """The JSON header of ``data`` (any JSON value: the caller checks it), which starts with :data:`MAGIC`, and where
    its state bytes start; ``struct.error``, ``ValueError`` or ``RecursionError`` where the header cannot be read."""
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(bytes(data[start : start + n])), start + n
