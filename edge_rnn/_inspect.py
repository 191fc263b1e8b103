"""A readable summary of any ONNX file, with its edge_rnn contract when it has one (needs onnx)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, described

__all__ = ["describe", "describe_ort", "operator_counts"]


def _dims(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return "?"
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return f"({', '.join(dims)})"


def _dtype(vi: onnx.ValueInfoProto) -> str:
    return TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()


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


def describe(model: onnx.ModelProto, contract: Contract | None, size_bytes: int) -> str:
    g = model.graph
    inits = {i.name for i in g.initializer}
    params = sum(int(_numel(i)) for i in g.initializer)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    lines = [
        f"model:     {g.name or '?'} (producer {model.producer_name or '?'} {model.producer_version}".rstrip()
        + f", IR {model.ir_version})",
        f"opset:     {opsets}",
        f"size:      {size_bytes / 1024:.1f} KiB, {params:,} parameters",
        "inputs:",
    ]
    lines += [f"  {vi.name:<16} {_dtype(vi):<8} {_dims(vi)}" for vi in g.input if vi.name not in inits]
    lines.append("outputs:")
    lines += [f"  {vi.name:<16} {_dtype(vi):<8} {_dims(vi)}" for vi in g.output]
    return "\n".join(lines + _contract_lines(contract) + [_operator_line(operator_counts(g))])


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
    params = 0
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        params += int(np.prod([t.Dims(k) for k in range(t.DimsLength())], dtype=np.int64))
    contract = Contract.from_metadata(sess.get_modelmeta().custom_metadata_map)
    ops = _ort_operators(graph)
    onnx_opset = next((model.OpsetImport(i).Version() for i in range(model.OpsetImportLength())
                       if model.OpsetImport(i).Domain() in (b"", b"ai.onnx")), "?")
    lines = [
        f"model:     ORT format (producer {model.ProducerName().decode() or '?'}, IR {model.IrVersion()})",
        f"opset:     ai.onnx {onnx_opset}",
        f"size:      {len(data) / 1024:.1f} KiB, {params:,} parameters",
        "inputs:",
    ]
    shape = lambda a: "(" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in a.shape) + ")"  # noqa: E731
    lines += [f"  {a.name:<16} {a.type.removeprefix('tensor(').rstrip(')'):<8} {shape(a)}" for a in sess.get_inputs()]
    lines.append("outputs:")
    lines += [f"  {a.name:<16} {a.type.removeprefix('tensor(').rstrip(')'):<8} {shape(a)}" for a in sess.get_outputs()]
    return "\n".join(lines + _contract_lines(contract) + [_operator_line(ops)])


def _ort_operators(graph) -> Counter:  # noqa: ANN001 - a flatbuffer Graph
    ops: Counter = Counter()
    for i in range(graph.NodesLength()):
        node = graph.Nodes(i)
        domain = node.Domain().decode()
        ops[node.OpType().decode() if domain in ("", "ai.onnx") else f"{domain}.{node.OpType().decode()}"] += 1
        for k in range(node.AttributesLength()):
            attr = node.Attributes(k)
            if attr.G() is not None:
                ops.update(_ort_operators(attr.G()))
    return ops


def _contract_lines(contract: Contract | None) -> list[str]:
    if contract is None:
        return ["states:    no edge_rnn contract in the metadata (not written by edge-rnn); "
                "the runtime needs a state_map to stream it"]
    lines = [f"states:    (edge_rnn contract, format {contract.format}"
             f"{'' if contract.streamable else ', NOT streamable: one whole sequence per call'})"]
    for s in contract.states:
        shape = ", ".join("batch" if d is None else str(d) for d in s.shape)
        lines.append(f"  {s.input:<8} -> {s.output:<8} {s.dtype:<8} ({shape})")
    for t in contract.inputs:
        time = "none (one step per call)" if t.time_axis is None else t.time_axis
        within = "" if t.values is None else f", values in [{t.values[0]}, {t.values[1]}]"
        lines.append(f"  input {t.name}: batch axis {t.batch_axis}, time axis {time}{within}")
    if contract.source:
        lines.append("source:    " + ", ".join(f"{k}={v}" for k, v in contract.source.items()))
    return lines


def _operator_line(ops: Counter) -> str:
    return "operators: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n
