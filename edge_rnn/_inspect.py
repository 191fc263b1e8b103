"""A readable summary of any ONNX or ORT-format file, with its edge_rnn contract when it has one; a bundle's
listing with each file checked against its hash. Needs neither onnx nor torch: an ONNX file is read with the
runtime's protobuf wire-format reader, an ORT file through onnxruntime (its operators with the runtime's reader of
its flatbuffer). What the runtime refuses to load, a name or a metadata entry that is not UTF-8, inspect refuses
in the same one line."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.errors import ModelFormatError, described
from edge_rnn.runtime._external import (
    MalformedProto,
    map_entry,
    operator_counts_of,
    ort_operator_counts,
    read_varint,
    wire_fields,
)
from edge_rnn.runtime._session import describe_session

if TYPE_CHECKING:
    import onnx

__all__ = ["describe", "describe_ort", "describe_bundle", "operator_counts"]


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


class _Value(NamedTuple):
    """A graph input or output as inspect prints it: its dims as text, None where the file gives no shape."""

    name: str
    dtype: str
    dims: tuple[str, ...] | None

    def rest(self) -> str:
        return f"{self.dtype:<8} " + ("?" if self.dims is None else "(" + ", ".join(self.dims) + ")")


def _value_info(vi: _Message) -> _Value:
    """``name dtype (dims)`` of a ValueInfoProto: type 2 -> TypeProto.tensor_type 1 -> elem_type 1, shape 2."""
    tensor = vi.child(2).child(1)
    code = tensor.number(1)
    dtype = _DTYPES[code] if 0 <= code < len(_DTYPES) else str(code)
    dims = None
    if tensor.has(2):  # TensorShapeProto.dim 1 -> Dimension: dim_value 1, dim_param 2
        dims = tuple(d.text(2) or (str(d.number(1)) if d.has(1) else "?") for d in tensor.child(2).children(1))
    return _Value(vi.text(1), dtype, dims)


_NAME_BOUND = 40  # columns align to the longest name up to this; a longer one is printed whole on its own line


def _width(names: list[str], least: int = 8) -> int:
    """The name column's width: the longest name within the bound, at least ``least``."""
    return max([least, *(len(n) for n in names if len(n) <= _NAME_BOUND)])


def _row(name: str, width: int, rest: str) -> str:
    """``  name  rest`` with ``rest`` at column ``width``; a name wider than that on a line of its own above."""
    if len(name) > width:
        return f"  {name}\n  {'':<{width}} {rest}"
    return f"  {name:<{width}} {rest}"


def _value_lines(inputs: list[_Value], outputs: list[_Value]) -> list[str]:
    """The inputs and outputs, their columns aligned across both."""
    from edge_rnn.runtime._bundle import printable

    width = _width([printable(v.name, 400) for v in inputs + outputs], 16)
    return ["inputs:", *(_row(printable(v.name, 400), width, v.rest()) for v in inputs),
            "outputs:", *(_row(printable(v.name, 400), width, v.rest()) for v in outputs)]


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


# ---------------------------------------------------------------- a bundle, each file checked against its hash
def describe_bundle(folder: Path) -> tuple[str, list[str], int]:
    """The listing of a bundle's manifest with each file it lists checked against its SHA-256, as the runtime
    checks a variant it loads; the files that fail (``"name: what is wrong"``); and how many were checked."""
    from edge_rnn.runtime._bundle import number, printable, read_manifest

    manifest = read_manifest(folder)
    rows = [f"{folder}: a bundle of {len(manifest['variants'])} variant(s) of "
            f"{printable(manifest.get('source_model', '?'), 80)}"]
    failed: list[str] = []
    checked: list[Any] = []

    def row(label: str, spec: Any, what: str, model: bool = False) -> None:
        checked.append(spec)
        file, problem = _check_file(folder, spec)
        if problem is None and model:
            problem = _weights_problem(folder / file, spec)
        if problem is not None:
            failed.append(f"{file}: {problem}")
        rows.append(f"  {printable(label, 40):<12} {printable(file, 80):<28} {printable(what, 80):<38} "
                    f"{printable(problem or 'sha256 ok', 200)}")

    for name, e in manifest["variants"].items():
        err, step = number(e, "error", "max_abs"), number(e, "speed", "step_us")
        grows = isinstance(e.get("error"), dict) and e["error"].get("grows") is True
        row(name, e, f"max err {'?' if err is None else f'{err:.2e}'}{' GROWS' if grows else ''}  step "
                     f"{'?' if step is None else f'{step:.1f}'} us", model=True)
        if "ort" in e:
            row("", e["ort"], "the same in ORT format", model=True)
    if "required_operators" in manifest:
        row("operators", manifest["required_operators"], "a minimal onnxruntime build's config")
    known = {id(spec) for spec in checked}
    for where, spec in _listed_files(manifest):  # any other file the manifest names (a later format's)
        if id(spec) not in known:
            row("", spec, f"listed at {where}")
    return "\n".join(rows), failed, len(checked)


def _listed_files(tree: Any, where: str = "") -> list[tuple[str, dict]]:
    """Every ``{"file": ..., "sha256": ...}`` entry in a manifest, with where it sits (``variants.fp32.ort``)."""
    if isinstance(tree, dict):
        found = [(where, tree)] if "file" in tree and "sha256" in tree else []
        items = tree.items()
    elif isinstance(tree, list):
        found, items = [], enumerate(tree)
    else:
        return []
    for key, value in items:
        found += _listed_files(value, f"{where}.{key}" if where else str(key))
    return found


def _check_file(folder: Path, spec: Any) -> tuple[str, str | None]:
    """A manifest entry's file name, and None when the file is in ``folder`` and matches its SHA-256, else what is
    wrong with it (in capitals: it stands out in the listing)."""
    file = spec.get("file") if isinstance(spec, dict) else None
    if not isinstance(file, str) or not file or file in (".", "..") or Path(file).name != file:
        return repr(file) if file is not None else "?", "BAD ENTRY: not a file name in the bundle"
    return file, _file_problem(folder, file, spec.get("sha256"))


def _weights_problem(path: Path, spec: dict) -> str | None:
    """A variant's model file that names an external weights file its manifest entry does not hash, or that the
    runtime's reader cannot parse: what the runtime refuses to load; None when neither."""
    from edge_rnn.runtime._external import scan_model

    try:
        scan = scan_model(path.read_bytes(), str(path))
    except ModelFormatError:
        return "CANNOT BE PARSED"
    external = spec.get("external")
    listed = {e.get("file") for e in external if isinstance(e, dict)} if isinstance(external, list) else set()
    named = [(x.location or b"").decode("utf-8", "replace") for x in scan.external]
    uncovered = [n for n in named if n not in listed]
    return None if not uncovered else f"WEIGHTS FILE {uncovered[0]!r} NOT HASHED IN THE MANIFEST"


def _file_problem(folder: Path, file: str, digest: Any) -> str | None:
    """What is wrong with ``folder / file`` against its manifest's ``digest``; None when nothing is."""
    from edge_rnn.runtime._bundle import sha256_of

    path = folder / file
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        return "A LINK OUT OF THE BUNDLE"
    if not path.is_file():
        return "MISSING"
    if not isinstance(digest, str):
        return "BAD ENTRY: no sha256 for it"
    if sha256_of(path) != digest:
        return "SHA-256 MISMATCH"
    return None


# ---------------------------------------------------------------- an ORT-format file
def describe_ort(path: Path) -> str:
    """The same summary for an ORT-format file (mobile builds): read through onnxruntime and its flatbuffer
    schema, since onnx cannot parse it."""
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    data = path.read_bytes()
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        model = fbs.InferenceSession.InferenceSession.GetRootAs(data, 0).Model()
        graph = model.Graph()
    except Exception as e:  # noqa: BLE001 - onnxruntime's Fail, or a flatbuffer that does not parse
        raise ModelFormatError(f"{path}: expected an ORT-format model, could not read it ({described(e)})") from None
    ins, outs, metadata = describe_session(sess, str(path))  # refused in one line where they are not UTF-8
    params = 0
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        params += int(np.prod([t.Dims(k) for k in range(t.DimsLength())], dtype=np.int64))
    contract = Contract.from_metadata(metadata)
    onnx_opset = next((model.OpsetImport(i).Version() for i in range(model.OpsetImportLength())
                       if model.OpsetImport(i).Domain() in (b"", b"ai.onnx")), "?")
    producer = (model.ProducerName() or b"").decode("utf-8", "replace") or "?"
    values_in = [_ort_value(n, *v) for n, v in ins.items()]
    values_out = [_ort_value(n, *v) for n, v in outs.items()]
    lines = [
        f"model:     ORT format (producer {producer}, IR {model.IrVersion()})",
        f"opset:     ai.onnx {onnx_opset}",
        f"size:      {len(data) / 1024:.1f} KiB, {params:,} parameters",
        *_value_lines(values_in, values_out),
    ]
    return "\n".join(lines + _contract_lines(contract, values_in, values_out)
                     + [_operator_line(ort_operator_counts(data))])


def _ort_value(name: str, shape: tuple, ort_type: str) -> _Value:
    """An input or output as onnxruntime reads it, as :func:`_value_info` reads a graph's."""
    dims = tuple(str(d) if isinstance(d, int) else str(d or "?") for d in shape)
    return _Value(name, ort_type.removeprefix("tensor(").rstrip(")"), dims)


def _contract_lines(contract: Contract | None, inputs: list[_Value], outputs: list[_Value]) -> list[str]:
    """The contract's lines, its strings made safe to print (a file's: an escape sequence is shown, not run);
    without one, the state pairs the runtime detects by name in ``inputs`` and ``outputs``."""
    from edge_rnn.runtime._bundle import printable

    if contract is None:
        return _detected_lines(inputs, outputs)
    lines = [f"states:    (edge_rnn contract, format {contract.format}"
             f"{'' if contract.streamable else ', NOT streamable: one whole sequence per call'})",
             *_state_rows(contract)]
    for t in contract.inputs:
        time = "none (one step per call)" if t.time_axis is None else t.time_axis
        within = "" if t.values is None else f", values in [{t.values[0]}, {t.values[1]}]"
        lines.append(f"  input {printable(t.name, 80)}: batch axis {t.batch_axis}, time axis {time}{within}")
    if contract.source:
        lines.append("source:    " + printable(", ".join(f"{k}={v}" for k, v in contract.source.items()), 400))
    return lines


def _state_rows(contract: Contract) -> list[str]:
    """One row per state of a contract: input -> output, dtype, shape, and where a new stream starts."""
    from edge_rnn.runtime._bundle import printable

    width = _width([printable(s.input, 400) for s in contract.states])
    out_width = _width([printable(s.output, 400) for s in contract.states])
    rows = []
    for s in contract.states:
        shape = ", ".join("batch" if d is None else str(d) for d in s.shape)
        start = "" if s.initial is None else "  starts from its own initial value, not zeros"
        rows.append(_row(printable(s.input, 400), width,
                         f"-> {printable(s.output, 400):<{out_width}} {s.dtype:<8} ({shape}){start}"))
    return rows


def _detected_lines(inputs: list[_Value], outputs: list[_Value]) -> list[str]:
    """For a file without a contract: the state pairs the runtime finds by name (its own rules), or why it needs
    a state_map."""
    from edge_rnn.runtime._bundle import printable
    from edge_rnn.runtime._ports import detect_state_pairs

    head = "states:    no edge_rnn contract in the metadata (not written by edge-rnn); "
    shapes_out = {v.name: v.dims or () for v in outputs}
    try:
        pairs = detect_state_pairs({v.name: v.dims or () for v in inputs}, shapes_out)
    except ModelFormatError as e:  # none found, or several candidates: the runtime refuses it without state_map
        why = "no state pairs found by name" if str(e).startswith("no edge_rnn contract") else str(e)
        return [head + printable(f"the runtime needs a state_map to stream it ({why})", 400)]
    info = {v.name: v for v in outputs}
    width = _width([printable(k, 400) for k in pairs])
    out_width = _width([printable(v, 400) for v in pairs.values()])
    return [head + "the runtime pairs them by name (pass state_map to override):",
            *(_row(printable(k, 400), width, f"-> {printable(v, 400):<{out_width}} {info[v].rest()}")
              for k, v in pairs.items())]


def _operator_line(ops: Counter) -> str:
    return "operators: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
