"""External weight files: find the ones a model names, and keep them inside the model's folder.

The same small reader also lists a model's operator types (:func:`scan_model`), which the runtime needs to know
whether streams may share a call; an ORT-format file's are read from its flatbuffer (:func:`ort_operator_counts`).

An ONNX file may keep its tensors in other files (``external_data``, with a
``location`` relative to the model). onnxruntime reads them relative to the
model's folder when given a path, but relative to the *working directory* when
given bytes, and older releases follow ``..``, absolute paths and symlinks out
of the folder. So the runtime reads the locations itself, with a small reader
of the protobuf wire format (the runtime has no ``onnx`` package), refuses any
that leave the folder, and always hands onnxruntime the path. The reader reads
every wire type protobuf does (groups skipped, as protobuf skips unknown
fields), and a file it cannot parse is refused: what it cannot read, it cannot
check.

It walks every place onnx.proto (onnx 1.23, checked field by field) keeps a
TensorProto, a SparseTensorProto or a GraphProto: the model's graph, its
training_info graphs (initialization, algorithm) and its local functions; a
graph's nodes, initializers and sparse initializers; a node's attributes; a
function's nodes and the defaults of its attributes (``attribute_proto``, which
a node inside takes by ``ref_attr_name`` and onnxruntime inlines); an
attribute's t, g, tensors, graphs, sparse_tensor and sparse_tensors; a sparse
tensor's values and indices; subgraphs to :data:`_MAX_DEPTH`. Every copy of a
singular message field given more than once is read (protobuf merges them).
A model of more than :data:`MAX_NODES` nodes or :data:`MAX_ENTRIES` entries is
refused before onnxruntime builds it.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from edge_rnn.errors import ModelFormatError

__all__ = ["MAX_NODES", "MAX_ENTRIES", "ModelScan", "scan_model", "weight_files", "external_locations",
           "check_external_data", "operator_types", "operator_counts_of", "ort_operator_counts", "wire_fields",
           "read_varint", "map_entry", "MalformedProto"]

# Which length-delimited fields lead to tensors, graphs and nodes, by message: every place onnx.proto (onnx 1.23,
# field by field) keeps a TensorProto, a SparseTensorProto or a GraphProto, and the messages on the way to them.
#   ModelProto        graph 7, training_info 20, functions 25
#   TrainingInfoProto initialization 1, algorithm 2 (graphs)
#   FunctionProto     node 7, attribute_proto 11 (the defaults of its attributes: a node inside takes a tensor or a
#                     graph from there by ref_attr_name, and onnxruntime inlines it)
#   GraphProto        node 1, initializer 5, sparse_initializer 15
#   NodeProto         attribute 5
#   AttributeProto    t 5, g 6, tensors 10, graphs 11, sparse_tensor 22, sparse_tensors 23
#   SparseTensorProto values 1, indices 2
# The rest hold no tensor or graph (TypeProto, ValueInfoProto, TensorShapeProto, OperatorSetIdProto, the
# string-string entries, TensorAnnotation, the device and sharding configurations, TensorProto.Segment). A
# singular message field given more than once is merged by protobuf; the walk reads every copy, so it sees what
# the merged message holds.
_MODEL, _GRAPH, _FUNCTION, _NODE, _ATTRIBUTE, _TENSOR, _SPARSE, _TRAINING = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
# onnxruntime builds an object for every node (about 1 KB each, measured: 2,000,000 empty nodes, a 4 MB file,
# took `run` to 1.9 GB), so a file padded with empty entries is refused before it is handed over. The largest real
# exports (transformer LLMs) have some 10**4 nodes, an exported RNN of edge-rnn's a handful; 100,000 nodes in all
# (graphs, subgraphs and functions together) bounds onnxruntime's graph to about 100 MB. Every other entry of a
# graph, node or function (inputs, outputs, value_info, initializers, attributes, names) counts towards
# MAX_ENTRIES, ten per node: what a real node carries with it.
MAX_NODES = 100_000
MAX_ENTRIES = 1_000_000
_MAX_DEPTH = 64  # nested subgraphs (If/Loop/Scan bodies), or groups, deeper than this are refused
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_FIELD = (1 << 29) - 1  # protobuf's largest field number
_VARINT, _I64, _LEN, _START_GROUP, _END_GROUP, _I32 = range(6)  # the wire types; 6 and 7 are invalid
# A location onnxruntime takes for a memory address (its offset), not a file: never one a model file may name
_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"
_ORT_MARK = b"ORTM"  # an ORT-format (flatbuffer) model's file identifier, at bytes 4..8


class MalformedProto(Exception):
    """The bytes are not a well-formed protobuf message; ``str()`` says where."""


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise MalformedProto(f"a varint cut off at byte {pos}")
        if shift > 63:
            raise MalformedProto(f"a varint longer than 10 bytes at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _key(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the key) of the field key at ``pos``."""
    at = pos
    key, pos = read_varint(data, pos, end)
    field, wire = key >> 3, key & 7
    if not 1 <= field <= _MAX_FIELD:
        raise MalformedProto(f"field number {field} at byte {at}")
    if wire > _I32:
        raise MalformedProto(f"wire type {wire} at byte {at}")
    return field, wire, pos


def _skip(data: bytes, pos: int, end: int, wire: int) -> tuple[Any, int]:
    """The value of a field of wire type 0, 1, 2 or 5 at ``pos`` (the varint, None, or the (start, stop) span of
    its bytes), and the position after it."""
    if wire == _VARINT:
        return read_varint(data, pos, end)
    if wire == _LEN:
        size, pos = read_varint(data, pos, end)
        if size > end - pos:
            raise MalformedProto(f"a field of {size} bytes with {end - pos} left at byte {pos}")
        return (pos, pos + size), pos + size
    pos += 8 if wire == _I64 else 4
    if pos > end:
        raise MalformedProto(f"a fixed-size field cut off at byte {end}")
    return None, pos


def _skip_group(data: bytes, pos: int, end: int, field: int) -> int:
    """The position after the group of ``field`` that starts at ``pos`` (after its start key): its fields skipped,
    groups in it too, up to the end key of the same field; nested at most _MAX_DEPTH deep."""
    open_groups = [field]
    while open_groups:
        if pos >= end:
            raise MalformedProto(f"a group that does not end (field {open_groups[-1]})")
        f, wire, at = _key(data, pos, end)
        if wire == _START_GROUP:
            if len(open_groups) >= _MAX_DEPTH:
                raise MalformedProto(f"groups nested more than {_MAX_DEPTH} deep at byte {pos}")
            open_groups.append(f)
            pos = at
        elif wire == _END_GROUP:
            if f != open_groups[-1]:
                raise MalformedProto(f"ends group {f} inside group {open_groups[-1]} at byte {pos}")
            open_groups.pop()
            pos = at
        else:
            pos = _skip(data, at, end, wire)[1]
    return pos


def wire_fields(data: bytes, pos: int, end: int):
    """(field number, wire type, value) for each varint (value: the int) and length-delimited field (value: the
    (start, stop) span of its bytes) of one message. Fixed-size fields and groups (which onnx.proto does not
    use) are skipped as protobuf skips unknown fields; anything protobuf itself would not parse raises
    MalformedProto: a wire type of 6 or 7, field number 0, a group that does not end or ends another's, an end
    of group outside one, a field cut off."""
    while pos < end:
        field, wire, pos = _key(data, pos, end)
        if wire == _START_GROUP:
            pos = _skip_group(data, pos, end, field)
        elif wire == _END_GROUP:
            raise MalformedProto(f"ends a group it is not in (field {field}) before byte {pos}")
        else:
            value, pos = _skip(data, pos, end, wire)
            if wire in (_VARINT, _LEN):
                yield field, wire, value


def map_entry(data: bytes, start: int, stop: int) -> tuple[bytes, bytes]:
    key = value = b""
    for field, wire, span in wire_fields(data, start, stop):
        if wire == 2 and field in (1, 2):
            text = data[span[0]:span[1]]
            key, value = (text, value) if field == 1 else (key, text)
    return key, value


class Located(NamedTuple):
    """A tensor kept outside the model file: its name, and its ``location`` as the file's bytes give it (None: it
    is marked external but names no file)."""

    tensor: str
    location: bytes | None


def _tensor(data: bytes, start: int, stop: int, found: list[Located]) -> None:
    """A tensor kept outside the file (or naming a location) is added to ``found``."""
    location, external, name = None, False, b""
    for field, wire, value in wire_fields(data, start, stop):
        if field == 14 and wire == _VARINT:
            external = value == _EXTERNAL
        elif field == 8 and wire == _LEN:
            name = data[value[0]:value[1]]
        elif field == 13 and wire == _LEN:
            key, text = map_entry(data, *value)
            if key == b"location":
                location = text
    if external or location is not None:
        found.append(Located(name.decode("utf-8", "replace"), location))


class _Tally:
    """What a walk collects: the external tensors, the operators, and how many nodes and entries it has read."""

    def __init__(self) -> None:
        self.found: list[Located] = []
        self.ops: Counter = Counter()
        self.nodes = self.entries = 0

    def count(self, kind: int) -> None:
        """One more field read in a message of ``kind`` (a node, when it is a node), refused past the caps."""
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise _TooMany(f"more than {MAX_ENTRIES:,} entries (nodes, their inputs, outputs and attributes, "
                           "initializers, value_info)")
        if kind == _NODE:
            self.nodes += 1
            if self.nodes > MAX_NODES:
                raise _TooMany(f"more than {MAX_NODES:,} nodes (graphs, subgraphs and functions together)")


class _TooMany(Exception):
    """A model with more entries than :data:`MAX_NODES` or :data:`MAX_ENTRIES` allow; ``str()`` says which."""


def _walk(data: bytes, kind: int, start: int, stop: int, depth: int, tally: _Tally) -> None:
    """Collect external tensors into ``tally.found`` and count nodes by ``domain.op_type`` (``op_type`` alone in
    the default domain) into ``tally.ops``."""
    if depth > _MAX_DEPTH:
        raise MalformedProto(f"subgraphs nested more than {_MAX_DEPTH} deep")
    if kind == _TENSOR:
        _tensor(data, start, stop, tally.found)
        return
    children = _CHILDREN.get(kind, {})
    names: dict[int, str] = {}  # a node's op_type (4) and domain (7)
    for field, wire, value in wire_fields(data, start, stop):
        if wire != _LEN:
            continue
        tally.count(children.get(field, -1))
        if kind == _NODE and field in (4, 7):
            names[field] = data[value[0]:value[1]].decode("utf-8", "replace")
        elif field in children:
            _walk(data, children[field], *value, depth + 1, tally)
    if 4 in names:
        op, domain = names[4], names.get(7, "")
        tally.ops[op if domain in ("", "ai.onnx") else f"{domain}.{op}"] += 1


class ModelScan(NamedTuple):
    """What the runtime reads of a model file itself: its external tensors, in file order, and its operator counts
    (``domain.op_type``, ``op_type`` alone in the default domain; None for an ORT-format file, whose operators
    :func:`ort_operator_counts` reads once onnxruntime has taken it)."""

    external: list[Located]
    ops: Counter | None


def scan_model(data: bytes, source: str = "<bytes>") -> ModelScan:
    """Read ``data`` (from ``source``, as messages name it) as an ONNX protobuf or an ORT-format file.

    Bytes this reader cannot parse are refused (ModelFormatError), never
    passed on: what it cannot read, it cannot check. Bytes that carry the ORT
    format's mark but read as a protobuf too are refused: onnxruntime would
    read them one way or the other depending on how it is handed them (bytes,
    or the path of a ``.onnx`` file), and the check would have read the other.
    An ORT flatbuffer never reads as a protobuf: its first bytes, the root
    table's offset, end in a zero byte, which protobuf takes for field 0.
    """
    tally = _Tally()
    marked = data[4:8] == _ORT_MARK
    try:
        _walk(data, _MODEL, 0, len(data), 0, tally)
    except _TooMany as e:
        raise ModelFormatError(f"{source}: expected an ONNX model of a real size, got {e}; refused before "
                               "onnxruntime builds it") from None
    except MalformedProto as e:
        if marked:
            return ModelScan([], None)  # an ORT-format (flatbuffer) model: its weights are inside it
        raise ModelFormatError(f"{source}: expected an ONNX model, could not parse it ({e})") from None
    if marked:
        raise ModelFormatError(f"{source}: carries the ORT format's mark ({_ORT_MARK.decode()} at bytes 4..8) but "
                               "reads as an ONNX protobuf; refused rather than read one way when onnxruntime may "
                               "read it the other")
    return ModelScan(tally.found, tally.ops)


def external_locations(data: bytes) -> list[str]:
    """The ``location`` of each tensor kept outside the model file, in file order ("" where a tensor names none;
    undecodable bytes replaced); [] for an ORT-format file. Raises ModelFormatError where the bytes do not parse."""
    return [(x.location or b"").decode("utf-8", "replace") for x in scan_model(data).external]


def operator_counts_of(data: bytes, source: str = "<bytes>") -> Counter | None:
    """How many nodes of each operator the model has (``domain.op_type``, ``op_type`` alone in the default
    domain), subgraphs and functions included; None for an ORT-format file (:func:`ort_operator_counts`). Raises
    ModelFormatError where the bytes do not parse."""
    return scan_model(data, source).ops


def operator_types(data: bytes, source: str = "<bytes>") -> set[str] | None:
    """The operators of :func:`operator_counts_of`, as a set."""
    counts = operator_counts_of(data, source)
    return None if counts is None else set(counts)


def ort_operator_counts(data: bytes) -> Counter:
    """The operators of an ORT-format file, read from its flatbuffer (subgraphs included), counted as
    :func:`operator_counts_of` counts them. Only for bytes onnxruntime has loaded: its verifier checked the
    flatbuffer's offsets, which this reading trusts."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    return _ort_graph_ops(fbs.InferenceSession.InferenceSession.GetRootAs(data, 0).Model().Graph(), 0)


def _ort_graph_ops(graph: Any, depth: int) -> Counter:
    if depth > _MAX_DEPTH:
        raise ModelFormatError(f"the model nests subgraphs more than {_MAX_DEPTH} deep")
    ops: Counter = Counter()
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        op, domain = (node.OpType() or b"").decode("utf-8", "replace"), (node.Domain() or b"").decode(
            "utf-8", "replace")
        ops[op if domain in ("", "ai.onnx") else f"{domain}.{op}"] += 1
        for k in range(node.AttributesLength()):
            attr = node.Attributes(k)
            subgraphs = [attr.G()] + [attr.Graphs(j) for j in range(attr.GraphsLength())]
            for sub in subgraphs:
                if sub is not None:
                    ops.update(_ort_graph_ops(sub, depth + 1))
    return ops


def _location(x: Located, where: str) -> str:
    """``x``'s location as a file name, refused where onnxruntime would read it as something else."""
    tensor = f"{where}: tensor {x.tensor!r}"
    if not x.location:
        raise ModelFormatError(f"{tensor} is marked external but names no file")
    try:
        location = x.location.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFormatError(f"{tensor}: its weights file location {x.location!r} is not UTF-8") from None
    if "\0" in location:
        raise ModelFormatError(f"{tensor}: its weights file location {location!r} holds a NUL byte")
    if location == _MEMORY_TAG:
        raise ModelFormatError(f"{tensor}: its location {location!r} is one onnxruntime reads as a memory address, "
                               "not a file")
    return location


def weight_files(scan: ModelScan, path: Path | None, source: str) -> dict[str, Path]:
    """The external weight files of a scanned model, ``{location: file resolved}`` in file order, each refused
    where it is missing, unreadable or lies outside the model's folder (``path``: where the model was read from;
    None: the caller gave bytes, and external weights are refused)."""
    if not scan.external:
        return {}
    locations = {x.location: _location(x, source) for x in scan.external}  # every tensor's checked, once each
    if path is None:
        raise ModelFormatError(
            f"{source}: the model keeps its weights in other files ({_names(list(locations.values()))}); load it "
            "from its path, so they are read from the model's folder and not from the working directory")
    folder, files = path.resolve().parent, {}
    for location in locations.values():
        target = Path(location)
        resolved = (folder / target).resolve()
        if target.is_absolute() or not resolved.is_relative_to(folder):
            raise ModelFormatError(
                f"{source}: the weights file {location!r} lies outside the model's folder {folder}; edge-rnn only "
                "reads weight files from the model's own folder")
        if not resolved.is_file():
            raise ModelFormatError(f"{source}: the weights file {location!r} {_not_a_file(resolved)}")
        if not os.access(resolved, os.R_OK):
            raise ModelFormatError(f"{source}: the weights file {location!r} cannot be read")
        files[location] = resolved
    return files


def _not_a_file(resolved: Path) -> str:
    """What a weights location that is not a regular file names instead."""
    if resolved.is_dir():
        return f"is a folder, not a file ({resolved})"
    if resolved.exists():
        return f"is not a regular file (a FIFO, a socket or a device: {resolved})"
    return f"is missing (looked in {resolved.parent})"


def check_external_data(data: bytes, path: Path | None) -> list[Path]:
    """Refuse a model this reader cannot parse, and external weight files that are missing or lie outside the
    model's folder.

    ``path`` is where ``data`` was read from (None: the caller gave bytes).
    Returns the weight files, resolved, once each in file order (empty: none).
    """
    source = "<bytes>" if path is None else str(path)
    return list(dict.fromkeys(weight_files(scan_model(data, source), path, source).values()))


def _names(locations: list[str]) -> str:
    names = list(dict.fromkeys(locations))
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
