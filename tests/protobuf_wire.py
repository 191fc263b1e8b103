"""The tests' own reading and rewriting of an ONNX file's protobuf wire format, independent of the runtime's reader
they test: a fixture's messages rebuilt with fields inserted, replaced or removed, every enclosing length rewritten.

Reads well-formed files without groups only (the committed fixtures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

# The messages rebuilt, by path of field numbers from the ModelProto: its graph (7), the graph's nodes (1) and
# their attributes (5), its initializers (5) and their external_data entries (13).
MESSAGES = ((), (7,), (7, 1), (7, 1, 5), (7, 5), (7, 5, 13))

Edit = Callable[[tuple[int, ...], list[bytes]], list[bytes]]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        value |= (data[pos] & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if data[pos - 1] < 0x80:
            return value, pos


def fields(data: bytes, start: int, stop: int) -> Iterator[tuple[int, int, bytes, tuple[int, int]]]:
    """(field, wire, the field's raw bytes, (value start, value stop)) of each field of a message."""
    pos = start
    while pos < stop:
        first = pos
        k, pos = _varint_at(data, pos)
        wire = k & 7
        if wire == 0:
            a = pos
            pos = _varint_at(data, pos)[1]
        elif wire == 2:
            size, a = _varint_at(data, pos)
            pos = a + size
        else:
            assert wire in (1, 5), f"wire type {wire}: the fixtures have no groups"
            a, pos = pos, pos + (8 if wire == 1 else 4)
        yield k >> 3, wire, data[first:pos], (a, pos)


def rebuilt(data: bytes, edit: Edit, path: tuple[int, ...] = (), span: tuple[int, int] | None = None) -> bytes:
    """``data`` (an ONNX model) with ``edit(path, parts)`` applied to every message of :data:`MESSAGES`: ``parts``
    are its fields' raw bytes (its children already rebuilt); what it returns is written instead."""
    start, stop = span if span is not None else (0, len(data))
    parts = []
    for field, wire, raw, (a, b) in fields(data, start, stop):
        child = (*path, field)
        if wire == 2 and child in MESSAGES:
            body = rebuilt(data, edit, child, (a, b))
            parts.append(key(field, 2) + varint(len(body)) + body)
        else:
            parts.append(raw)
    return b"".join(edit(path, parts))


def nested_group(depth: int, field: int = 100) -> bytes:
    """``depth`` groups one inside the other, the innermost holding a field of every other wire type."""
    inner = key(1, 0) + b"\x01" + key(2, 1) + b"\0" * 8 + key(3, 5) + b"\0" * 4 + key(4, 2) + b"\x02ab"
    return key(field, 3) * depth + inner + key(field, 4) * depth
