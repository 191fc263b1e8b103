"""inspect's summary of an ONNX file, read with the runtime's protobuf wire-format reader (onnx is not needed); its
operators counted at any depth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from edge_rnn._inspect._ort import describe_ort
from edge_rnn._inspect._table import _contract_lines, _operator_line, _Value, _value_lines
from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.errors import ModelFormatError
from edge_rnn.runtime._external import MalformedProto, map_entry, operator_counts_of, read_varint, wire_fields

if TYPE_CHECKING:
    import onnx

__all__ = ["describe", "operator_counts", "recurrent_without_contract"]


def operator_counts(graph: onnx.GraphProto) -> Counter:
    """Operators in ``graph`` and every subgraph (Scan, Loop, If bodies)."""
    ops: Counter = Counter()
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ops[key] += 1
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                ops.update(operator_counts(sub))
    return ops


# ---------------------------------------------------------------- an ONNX file, read from its wire format
# onnx.proto's TensorProto.DataType, by number
_DTYPES = ("undefined", "float", "uint8", "int8", "uint16", "int16", "int32", "int64", "string", "bool", "float16",
           "double", "uint32", "uint64", "complex64", "complex128", "bfloat16", "float8e4m3fn", "float8e4m3fnuz",
           "float8e5m2", "float8e5m2fnuz", "uint4", "int4", "float4e2m1", "float8e8m0", "uint2", "int2",
           "float6e2m3", "float6e3m2")

Span = tuple[int, int]


class _Message:
    """One protobuf message's fields: ``ints`` (varints) and ``spans`` (length-delimited), by field number.

    A message given as several copies (several ``spans``: a singular message field repeated in the file) is read as
    protobuf, and so onnxruntime, reads it: merged, as if the copies were one, fields in order (a repeated field's
    entries concatenated, the last value of a singular one, singular messages within merged in turn)."""

    def __init__(self, data: bytes, *spans: Span):
        self.data = data
        self.ints: dict[int, list[int]] = {}
        self.spans: dict[int, list[Span]] = {}
        for span in spans:
            for field, wire, value in wire_fields(data, *span):
                (self.ints if wire == 0 else self.spans).setdefault(field, []).append(value)

    def number(self, field: int, default: int = 0) -> int:
        return self.ints.get(field, [default])[-1]

    def text(self, field: int) -> str:
        spans = self.spans.get(field)
        return self.data[spans[-1][0]:spans[-1][1]].decode("utf-8", "replace") if spans else ""

    def has(self, field: int) -> bool:
        return field in self.ints or field in self.spans

    def children(self, field: int) -> list[_Message]:
        """A repeated message field: one message per entry."""
        return [_Message(self.data, s) for s in self.spans.get(field, [])]

    def child(self, field: int) -> _Message:
        """A singular message field: its copies merged (an empty message where there is none)."""
        return _Message(self.data, *self.spans.get(field, []))

    def numbers(self, field: int) -> list[int]:
        """A repeated integer field, packed or not."""
        out = list(self.ints.get(field, []))
        for start, stop in self.spans.get(field, []):
            while start < stop:
                value, start = read_varint(self.data, start, stop)
                out.append(value)
        return [v - (1 << 64) if v >= 1 << 63 else v for v in out]  # int64 as two's complement


def _value_info(vi: _Message) -> _Value:
    """``name dtype (dims)`` of a ValueInfoProto: type 2 -> TypeProto.tensor_type 1 -> elem_type 1, shape 2."""
    tensor = vi.child(2).child(1)
    code = tensor.number(1)
    dtype = _DTYPES[code] if 0 <= code < len(_DTYPES) else str(code)
    dims = None
    if tensor.has(2):  # TensorShapeProto.dim 1 -> Dimension: dim_value 1, dim_param 2
        dims = tuple(d.text(2) or (str(d.number(1)) if d.has(1) else "?") for d in tensor.child(2).children(1))
    return _Value(vi.text(1), dtype, dims)



class _OnnxFile(NamedTuple):
    """What the summary of an ONNX file shows, read from its wire format."""

    model: _Message  # ModelProto
    graph: _Message  # GraphProto
    empty: bool  # neither nodes nor inputs: not an ONNX model
    metadata: dict[str, str]
    params: int
    opsets: str
    inputs: list[_Value]  # initializers left out
    outputs: list[_Value]
    ops: Counter

    @classmethod
    def read(cls, data: bytes, source: str) -> _OnnxFile:
        """Raises MalformedProto or IndexError where ``data`` is no ONNX protobuf, ModelFormatError where the
        runtime's reader refuses it or a metadata entry is not UTF-8."""
        ops = operator_counts_of(data, source)  # first: it refuses a file padded past its caps before it is read
        if ops is None:
            raise MalformedProto("not an ONNX protobuf")
        model = _Message(data, (0, len(data)))
        g = model.child(7)  # ModelProto.graph
        nodes, inputs = g.children(1), g.children(11)
        metadata = dict(map_entry(data, *span) for span in model.spans.get(14, []))
        inits = g.children(5)  # TensorProto: dims 1, name 8
        names = {i.text(8) for i in inits}
        params = sum(int(np.prod(i.numbers(1), dtype=np.int64)) for i in inits)
        opsets = ", ".join(f"{o.text(1) or 'ai.onnx'} {o.number(2)}" for o in model.children(8))
        ins = [_value_info(vi) for vi in inputs if vi.text(1) not in names]
        outs = [_value_info(vi) for vi in g.children(12)]
        text = _utf8(metadata, [*inputs, *g.children(12)], source)
        return cls(model, g, not nodes and not inputs, text, params, opsets, ins, outs, ops)


def _utf8(metadata: dict[bytes, bytes], values: list[_Message], source: str) -> dict[str, str]:
    """The metadata as text, refused as the runtime refuses it (onnxruntime's accessors) where an entry or the
    name of a graph input or output (``values``, ValueInfoProto: name 1) is not UTF-8."""
    try:
        for vi in values:
            for a, b in vi.spans.get(1, []):
                vi.data[a:b].decode("utf-8")
        return {k.decode("utf-8"): v.decode("utf-8") for k, v in metadata.items()}
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"{source}: a name or a metadata entry is not valid UTF-8 ({e.reason} at byte "
                               f"{e.start})") from None


def describe(path: Path) -> str:
    """The summary ``edge-rnn inspect`` prints for an ONNX file (or, by its header, an ORT-format file)."""
    data = path.read_bytes()
    if data[4:8] == b"ORTM":  # an ORT-format file (mobile builds): a flatbuffer, not a protobuf
        return describe_ort(path)
    try:
        f = _OnnxFile.read(data, str(path))
    except (MalformedProto, IndexError) as e:
        raise ModelFormatError(f"{path}: expected an ONNX model, could not parse it (not a protobuf message"
                               f"{f': {e}' if str(e) else ''})") from None
    if f.empty:
        raise ModelFormatError(f"{path}: expected an ONNX model, got an empty or non-ONNX file")
    contract = Contract.from_metadata(f.metadata)
    producer = f"{f.model.text(2) or '?'} {f.model.text(3)}".rstrip()
    lines = [
        f"model:     {f.graph.text(2) or '?'} (producer {producer}, IR {f.model.number(1)})",
        f"opset:     {f.opsets}",
        f"size:      {len(data) / 1024:.1f} KiB, {f.params:,} parameters",
        *_value_lines(f.inputs, f.outputs),
    ]
    return "\n".join(lines + _contract_lines(contract, f.inputs, f.outputs) + [_operator_line(f.ops)])


def recurrent_without_contract(path: Path) -> bool:
    """Whether ``path`` is an ONNX file with ``RNN``/``GRU``/``LSTM`` nodes (at any depth) and no ``edge_rnn``
    contract: one that ``edge-rnn lift`` may make streamable."""
    data = path.read_bytes()
    if data[4:8] == b"ORTM":
        return False
    try:
        f = _OnnxFile.read(data, str(path))
    except (MalformedProto, IndexError, ModelFormatError):
        return False
    return METADATA_KEY not in f.metadata and any(k in ("RNN", "GRU", "LSTM") for k in f.ops)
