"""Native ``RNN``/``GRU``/``LSTM`` nodes rewritten as the decomposed form, from the weights in the file.

onnxruntime quantises an ``LSTM`` node (to ``DynamicQuantizeLSTM``) but has no
quantiser for ``GRU`` or ``RNN``, and NPU execution providers take none of the
three. The decomposed form (an input ``MatMul``, then a ``Scan`` over
``MatMul``/``Add``/``Sigmoid``/``Tanh`` steps) is what both can work with. This
module rewrites each recurrent node in place, whatever graph it sits in (a bare
layer or a whole model), with the same inputs and outputs: no torch, and no
need for the module it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from edge_rnn.errors import UnsupportedError
from edge_rnn.gates import from_onnx_gate_order
from edge_rnn.graphs import GraphBuilder, emit_direction
from edge_rnn.spec import GATES_PER_KIND, RecurrentSpec

__all__ = ["decompose_recurrent", "RECURRENT_OPS", "splice", "all_nodes", "read_node"]

RECURRENT_OPS = ("RNN", "GRU", "LSTM")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


_DEFAULT_ACTIVATIONS = {"rnn": ["Tanh"], "gru": ["Sigmoid", "Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"]}


def _spec(node: onnx.NodeProto, w: np.ndarray) -> RecurrentSpec:
    """The layer a native node computes, refused where PyTorch's cells could not have produced it."""
    kind = node.op_type.lower()
    a = _attrs(node)
    where = f"{node.op_type} node {node.name or node.output[0]!r}"
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
    relu = kind == "rnn" and bool(acts) and set(acts) == {"Relu"}
    problems = _unsupported(node, kind, a, _activation_problems(kind, acts, relu))
    if problems:
        raise UnsupportedError(f"{where}: uses {', '.join(problems)}, which edge-rnn's decomposed form does not "
                               "compute; only graphs in PyTorch's conventions can be rewritten")
    directions = 2 if a.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    return RecurrentSpec(kind, input_size=int(w.shape[2]), hidden_size=int(a["hidden_size"]),
                         bidirectional=directions == 2, nonlinearity="relu" if relu else "tanh")


def _activation_problems(kind: str, acts: list[str], relu: bool) -> list[str]:
    """Activations other than PyTorch's for ``kind`` (a vanilla RNN's may be ReLU throughout)."""
    if relu or not acts or acts[: len(_DEFAULT_ACTIVATIONS[kind])] == _DEFAULT_ACTIVATIONS[kind]:
        return []
    return [f"activations {acts}"]


def _unsupported(node: onnx.NodeProto, kind: str, a: dict, activations: list[str]) -> list[str]:
    """What a native node uses that PyTorch's cells never do (its ``activations`` problems among them), in the
    order a message names them."""
    found = [
        ("clip", a.get("clip") is not None),
        ("input_forget=1", kind == "lstm" and a.get("input_forget", 0) != 0),
        ("layout=1", a.get("layout", 0) != 0),
        ("linear_before_reset=0 (PyTorch's GRU is linear_before_reset=1)",
         kind == "gru" and a.get("linear_before_reset", 0) != 1),
        *((problem, True) for problem in activations),
        ("direction=reverse", a.get("direction", b"forward") in (b"reverse", "reverse")),
        ("sequence_lens", len(node.input) > 4 and bool(node.input[4])),
        ("peepholes", kind == "lstm" and len(node.input) > 7 and bool(node.input[7])),
    ]
    return [name for name, hit in found if hit]


def _weights(spec: RecurrentSpec, w: np.ndarray, r: np.ndarray, b: np.ndarray | None, d: int) -> dict:
    """One direction's weights in PyTorch's gate order, the layout the graph builders take."""
    gh = GATES_PER_KIND[spec.kind] * spec.hidden_size
    b = np.zeros((w.shape[0], 2 * gh), np.float32) if b is None else b
    return {"w_ih": from_onnx_gate_order(spec.kind, w[d]), "w_hh": from_onnx_gate_order(spec.kind, r[d]),
            "b_ih": from_onnx_gate_order(spec.kind, b[d, :gh]), "b_hh": from_onnx_gate_order(spec.kind, b[d, gh:])}


def read_node(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple:
    """A native recurrent node's ``(x, h0, c0, W, R, B, spec)``: its input names, its weights from the
    initializers, and the layer it computes; refused where it cannot be rewritten."""
    where = f"{node.op_type} node {node.name or node.output[0]!r}"
    names = list(node.input) + [""] * (8 - len(node.input))
    x, w_name, r_name, b_name, _, h0, c0 = names[:7]
    missing = [n for n in (w_name, r_name, b_name) if n and n not in inits]
    if missing:
        raise UnsupportedError(f"{where}: its weights {missing} are computed, not initializers: cannot rewrite it")
    if not h0 or (node.op_type == "LSTM" and not c0):
        raise UnsupportedError(f"{where}: has no initial state input; edge-rnn graphs always feed one")
    w, r = numpy_helper.to_array(inits[w_name]), numpy_helper.to_array(inits[r_name])
    b = numpy_helper.to_array(inits[b_name]) if b_name else None
    return x, h0, c0, w, r, b, _spec(node, w)


def _rewrite(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], index: int) -> GraphBuilder:
    x, h0, c0, w, r, b, spec = read_node(node, inits)
    g = GraphBuilder("rewrite", prefix=f"{node.name or node.op_type}_{index}/")
    outs = list(node.output) + [""] * (3 - len(node.output))
    ys, hs, cs = [], [], []
    for d in range(spec.num_directions):
        idx = g.const(np.asarray(d, np.int64), "direction")
        h_init = g.op1("Gather", [h0, idx], axis=0, hint="h_init")
        c_init = g.op1("Gather", [c0, idx], axis=0, hint="c_init") if spec.kind == "lstm" else None
        y, h, c = emit_direction(g, spec, _weights(spec, w, r, b, d), x, h_init, c_init, reverse=d == 1)
        ys.append(g.op1("Unsqueeze", [y, g.ints([1], "axes")]))  # (T, B, H) -> (T, 1, B, H)
        hs.append(g.op1("Unsqueeze", [h, g.ints([0], "axes")]))
        if c is not None:
            cs.append(g.op1("Unsqueeze", [c, g.ints([0], "axes")]))
    for name, parts, axis in ((outs[0], ys, 1), (outs[1], hs, 0), (outs[2], cs, 0)):
        if name and len(parts) > 1:
            g.op1("Concat", parts, axis=axis, output=name)
        elif name:
            g.op1("Identity", parts, output=name)
    return g


def splice(model: onnx.ModelProto, rewrite: "Callable[[onnx.NodeProto, dict, int], GraphBuilder | None]"
           ) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each top-level node for which ``rewrite(node, initializers, index)`` builds a
    replacement spliced in its place (None: kept); initializers no longer used are dropped. Returns it and how
    many nodes were replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    nodes, count = [], 0
    for node in g.node:
        built = rewrite(node, inits, count)
        if built is None:
            nodes.append(node)
            continue
        count += 1
        nodes.extend(built.nodes)
        g.initializer.extend(built.initializers)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in all_nodes(g) for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out, count


def decompose_recurrent(model: onnx.ModelProto, ops: tuple[str, ...] = RECURRENT_OPS) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each top-level node in ``ops`` rewritten as a Scan; returns it and the count.

    The weights move from the node's ``W``/``R``/``B`` initializers into the
    decomposed form's constants; initializers no longer used are dropped.
    """
    def rewrite(node: onnx.NodeProto, inits: dict, index: int) -> GraphBuilder | None:
        if node.op_type not in ops or node.domain not in ("", "ai.onnx"):
            return None
        return _rewrite(node, inits, index)

    return splice(model, rewrite)


def all_nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``g`` and of its subgraphs (Scan, Loop, If bodies), depth first."""
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from all_nodes(sub)
