"""External weight files: find the ones a model names, and keep them inside the model's folder.

The same small reader also lists a model's operator types (:func:`operator_types`), which the runtime
needs to know whether streams may share a call.

An ONNX file may keep its tensors in other files (``external_data``, with a
``location`` relative to the model). onnxruntime reads them relative to the
model's folder when given a path, but relative to the *working directory* when
given bytes, and older releases follow ``..``, absolute paths and symlinks out
of the folder. So the runtime reads the locations itself, with a small reader
of the protobuf wire format (the runtime has no ``onnx`` package), refuses any
that leave the folder, and always hands onnxruntime the path.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from edge_rnn.errors import ModelFormatError

__all__ = ["external_locations", "check_external_data", "operator_types", "operator_counts_of", "wire_fields",
           "read_varint", "map_entry", "MalformedProto"]

# Which length-delimited fields lead to tensors and nodes, by message (onnx.proto's field numbers); a tensor's own
# fields are read by _tensor.
_MODEL, _GRAPH, _FUNCTION, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE = range(7)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 25: _FUNCTION},
    _FUNCTION: {7: _NODE},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
_MAX_DEPTH = 64  # nested subgraphs (If/Loop/Scan bodies) deeper than this are refused
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class MalformedProto(Exception):
    pass


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedProto
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def wire_fields(data: bytes, pos: int, end: int):
    """(field number, wire type, value or (start, stop)) for each field of one message."""
    while pos < end:
        key, pos = read_varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(data, pos, end)
            yield field, wire, value
        elif wire == 2:
            size, pos = read_varint(data, pos, end)
            if pos + size > end:
                raise MalformedProto
            yield field, wire, (pos, pos + size)
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise MalformedProto
        else:  # groups (3, 4) are not used by onnx.proto
            raise MalformedProto


def map_entry(data: bytes, start: int, stop: int) -> tuple[bytes, bytes]:
    key = value = b""
    for field, wire, span in wire_fields(data, start, stop):
        if wire == 2 and field in (1, 2):
            text = data[span[0]:span[1]]
            key, value = (text, value) if field == 1 else (key, text)
    return key, value


def _tensor(data: bytes, start: int, stop: int, found: list[str]) -> None:
    """A tensor kept outside the file adds its ``location`` to ``found`` ("" when it names none)."""
    location, external = None, False
    for field, wire, value in wire_fields(data, start, stop):
        if field == 14 and wire == 0:
            external = value == _EXTERNAL
        elif field == 13 and wire == 2:
            key, text = map_entry(data, *value)
            if key == b"location":
                location = text.decode("utf-8", "replace")
    if external or location is not None:
        found.append(location if location is not None else "")


def _walk(data: bytes, kind: int, start: int, stop: int, depth: int, found: list[str], ops: Counter) -> None:
    """Collect external tensors' locations into ``found`` and count nodes by ``domain.op_type`` (``op_type`` alone
    in the default domain) into ``ops``."""
    if depth > _MAX_DEPTH:
        raise ModelFormatError(f"the model nests subgraphs more than {_MAX_DEPTH} deep")
    if kind == _TENSOR:
        _tensor(data, start, stop, found)
        return
    children = _CHILDREN.get(kind, {})
    names: dict[int, str] = {}  # a node's op_type (4) and domain (7)
    for field, wire, value in wire_fields(data, start, stop):
        if wire != 2:
            continue
        if kind == _NODE and field in (4, 7):
            names[field] = data[value[0]:value[1]].decode("utf-8", "replace")
        elif field in children:
            _walk(data, children[field], *value, depth + 1, found, ops)
    if 4 in names:
        op, domain = names[4], names.get(7, "")
        ops[op if domain in ("", "ai.onnx") else f"{domain}.{op}"] += 1


def _scan(data: bytes) -> tuple[list[str], Counter] | None:
    """(external locations in file order, operator counts) of an ONNX model; None when the bytes are not a
    well-formed protobuf message. An ORT-format (flatbuffer) model keeps its weights inside it; its operators are
    unknown."""
    if data[4:8] == b"ORTM":
        return None
    found: list[str] = []
    ops: Counter = Counter()
    try:
        _walk(data, _MODEL, 0, len(data), 0, found, ops)
    except MalformedProto:
        return None
    return found, ops


def external_locations(data: bytes) -> list[str] | None:
    """The ``location`` of each tensor kept outside the model file, in file order.

    None when the bytes are not a well-formed protobuf message: onnxruntime
    then says what is wrong with them.
    """
    if data[4:8] == b"ORTM":  # an ORT-format (flatbuffer) model: its weights are inside it
        return []
    scanned = _scan(data)
    return None if scanned is None else scanned[0]


def operator_counts_of(data: bytes) -> Counter | None:
    """How many nodes of each operator the model has (``domain.op_type``, ``op_type`` alone in the default
    domain), subgraphs and functions included; None for an ORT-format file or bytes that are not a well-formed ONNX
    message."""
    scanned = _scan(data)
    return None if scanned is None else scanned[1]


def operator_types(data: bytes) -> set[str] | None:
    """The operators of :func:`operator_counts_of`, as a set."""
    counts = operator_counts_of(data)
    return None if counts is None else set(counts)


def check_external_data(data: bytes, path: Path | None) -> list[Path]:
    """Refuse external weight files that are missing or lie outside the model's folder.

    ``path`` is where ``data`` was read from (None: the caller gave bytes).
    Returns the weight files, resolved, once each in file order (empty: none).
    """
    locations = external_locations(data)
    if not locations:
        return []
    where = "<bytes>" if path is None else str(path)
    if path is None:
        raise ModelFormatError(
            f"{where}: the model keeps its weights in other files ({_names(locations)}); load it from its path, so "
            "they are read from the model's folder and not from the working directory")
    folder, files = path.resolve().parent, []
    for location in dict.fromkeys(locations):
        if not location:
            raise ModelFormatError(f"{where}: a tensor is marked external but names no file")
        target = Path(location)
        resolved = (folder / target).resolve()
        if target.is_absolute() or not resolved.is_relative_to(folder):
            raise ModelFormatError(
                f"{where}: the weights file {location!r} lies outside the model's folder {folder}; edge-rnn only "
                "reads weight files from the model's own folder")
        if not resolved.is_file():
            raise ModelFormatError(f"{where}: the weights file {location!r} is missing (looked in {folder})")
        if not os.access(resolved, os.R_OK):
            raise ModelFormatError(f"{where}: the weights file {location!r} cannot be read")
        files.append(resolved)
    return list(dict.fromkeys(files))


def _names(locations: list[str]) -> str:
    names = list(dict.fromkeys(locations))
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
