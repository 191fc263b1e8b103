"""A readable summary of any ONNX file, with its edge_rnn contract when it has one (needs onnx)."""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import TensorProto

from edge_rnn.contract import Contract

__all__ = ["describe", "operator_counts"]


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
    if contract is None:
        lines.append("states:    no edge_rnn contract in the metadata (not written by edge-rnn); "
                     "the runtime needs a state_map to stream it")
    else:
        lines.append(f"states:    (edge_rnn contract, format {contract.format}"
                     f"{'' if contract.streamable else ', NOT streamable: one whole sequence per call'})")
        for s in contract.states:
            shape = ", ".join("batch" if d is None else str(d) for d in s.shape)
            lines.append(f"  {s.input:<8} -> {s.output:<8} {s.dtype:<8} ({shape})")
        for t in contract.inputs:
            time = "none (one step per call)" if t.time_axis is None else t.time_axis
            within = "" if t.values is None else f", values in [{t.values[0]}, {t.values[1]}]"
            lines.append(f"  input {t.name}: batch axis {t.batch_axis}, time axis {time}{within}")
        src = contract.source
        if src:
            lines.append("source:    " + ", ".join(f"{k}={v}" for k, v in src.items()))
    ops = operator_counts(g)
    lines.append("operators: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))))
    return "\n".join(lines)


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n
