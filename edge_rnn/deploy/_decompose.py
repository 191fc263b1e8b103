"""Native ``RNN``/``GRU``/``LSTM`` nodes rewritten as the decomposed form, from the weights in the file.

onnxruntime quantises an ``LSTM`` node (to ``DynamicQuantizeLSTM``) but has no
quantiser for ``GRU`` or ``RNN``, and NPU execution providers take none of the
three. The decomposed form (an input ``MatMul``, then a ``Scan`` over
``MatMul``/``Add``/``Sigmoid``/``Tanh`` steps) is what both can work with. This
module rewrites each recurrent node in place, whatever graph it sits in (a bare
layer or a whole model), with the same inputs and outputs: no torch, and no
need for the module it came from. A node in PyTorch's conventions (what
edge-rnn and torch.onnx write) takes the graph builders' rewrite; any other
(``clip``, ``layout=1``, ``linear_before_reset=0``, peepholes, ``sequence_lens``,
other activations, reverse, no initial state...) the general one of
:mod:`edge_rnn.deploy._onnx_scan`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import onnx

from edge_rnn.deploy._onnx_scan import NodeWeights, emit_node
from edge_rnn.deploy._onnx_weights import ConstantFolder, names_in
from edge_rnn.errors import ModelFormatError, UnsupportedError
from edge_rnn.gates import from_onnx_gate_order
from edge_rnn.graphs import GraphBuilder, emit_direction
from edge_rnn.harness._onnx_recurrent import RecurrentAttrs
from edge_rnn.spec import GATES_PER_KIND, RecurrentSpec

__all__ = ["at_least_opset", "REWRITE_OPSET",
           "all_graphs", "decompose_recurrent", "RECURRENT_OPS", "splice", "all_nodes", "read_node", "node_weights",
           "pytorch_conventions"]

RECURRENT_OPS = ("RNN", "GRU", "LSTM")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


_DEFAULT_ACTIVATIONS = {"rnn": ["Tanh"], "gru": ["Sigmoid", "Tanh"], "lstm": ["Sigmoid", "Tanh", "Tanh"]}


def _spec(node: onnx.NodeProto, w: np.ndarray) -> RecurrentSpec:
    """The PyTorch layer a native node in PyTorch's conventions computes."""
    kind = node.op_type.lower()
    a = _attrs(node)
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
    relu = kind == "rnn" and bool(acts) and set(acts) == {"Relu"}
    directions = 2 if a.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    return RecurrentSpec(kind, input_size=int(w.shape[2]), hidden_size=int(a["hidden_size"]),
                         bidirectional=directions == 2, nonlinearity="relu" if relu else "tanh")


def _activation_problems(kind: str, acts: list[str], directions: int) -> list[str]:
    """Activations other than PyTorch's for ``kind`` in every direction (a vanilla RNN's may be ReLU throughout)."""
    if not acts or acts == _DEFAULT_ACTIVATIONS[kind] * directions or (kind == "rnn" and set(acts) == {"Relu"}):
        return []
    return [f"activations {acts}"]


def pytorch_conventions(node: onnx.NodeProto) -> list[str]:
    """What a native node uses that PyTorch's cells never do, in the order a message names them (empty: the node is
    in PyTorch's conventions, and takes edge-rnn's own rewrite)."""
    kind, a = node.op_type.lower(), _attrs(node)
    acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])]
    directions = 2 if a.get("direction", b"forward") in (b"bidirectional", "bidirectional") else 1
    names = list(node.input) + [""] * (8 - len(node.input))
    found = [
        ("clip", a.get("clip") is not None),
        ("input_forget=1", kind == "lstm" and a.get("input_forget", 0) != 0),
        ("layout=1", a.get("layout", 0) != 0),
        ("linear_before_reset=0 (PyTorch's GRU is linear_before_reset=1)",
         kind == "gru" and a.get("linear_before_reset", 0) != 1),
        *((problem, True) for problem in _activation_problems(kind, acts, directions)),
        ("direction=reverse", a.get("direction", b"forward") in (b"reverse", "reverse")),
        ("sequence_lens", bool(names[4])),
        ("peepholes", kind == "lstm" and bool(names[7])),
        ("no initial state", not names[5] or (kind == "lstm" and not names[6])),
        ("no hidden_size", "hidden_size" not in a),
    ]
    return [name for name, hit in found if hit]


def _weights(spec: RecurrentSpec, w: np.ndarray, r: np.ndarray, b: np.ndarray | None, d: int) -> dict:
    """One direction's weights in PyTorch's gate order, the layout the graph builders take."""
    gh = GATES_PER_KIND[spec.kind] * spec.hidden_size
    b = np.zeros((w.shape[0], 2 * gh), np.float32) if b is None else b
    return {"w_ih": from_onnx_gate_order(spec.kind, w[d]), "w_hh": from_onnx_gate_order(spec.kind, r[d]),
            "b_ih": from_onnx_gate_order(spec.kind, b[d, :gh]), "b_hh": from_onnx_gate_order(spec.kind, b[d, gh:])}


def node_weights(node: onnx.NodeProto, folder: ConstantFolder) -> NodeWeights:
    """A native recurrent node's ``W``, ``R``, ``B`` and ``P``: initializers, or folded from the constants they
    are computed from; UnsupportedError naming the node where one depends on a graph input."""
    where = f"{node.op_type} node {node.name or node.output[0]!r}"
    names = list(node.input) + [""] * (8 - len(node.input))
    got = [folder.value(n, where) if n else None for n in (names[1], names[2], names[3], names[7])]
    wrong = sorted({str(a.dtype) for a in got if a is not None} - {"float32"})
    if wrong:  # every form computes in float32: a float64 or float16 node would be rewritten at another precision
        raise UnsupportedError(f"{where}: expected float32 weights, got {', '.join(wrong)}; edge-rnn's forms "
                               "compute in float32")
    _check_shapes(node, where, *got)
    return NodeWeights(*got)


def _check_shapes(node: onnx.NodeProto, where: str, w: np.ndarray, r: np.ndarray, b: np.ndarray | None,
                  p: np.ndarray | None) -> None:
    """``W``, ``R``, ``B``, ``P`` shaped as the node's kind, direction and hidden size say (onnxruntime checks
    them when it runs the node; the forms read them as they are): ModelFormatError naming the first that is not."""
    a = _attrs(node)
    dirs = 2 if a.get("direction") in (b"bidirectional", "bidirectional") else 1
    gh = GATES_PER_KIND[node.op_type.lower()] * int(a.get("hidden_size") or (r.shape[-1] if r.ndim == 3 else 0))
    hidden = gh // GATES_PER_KIND[node.op_type.lower()]
    inputs = w.shape[-1] if w.ndim == 3 else None
    for name, got, want in (("W", w, (dirs, gh, inputs)), ("R", r, (dirs, gh, hidden)), ("B", b, (dirs, 2 * gh)),
                            ("P", p, (dirs, 3 * hidden))):
        if got is not None and got.shape != want:
            raise ModelFormatError(f"{where}: weight {name}: expected shape {want}, got {got.shape}")


def read_node(node: onnx.NodeProto, folder: ConstantFolder) -> tuple:
    """A native recurrent node in PyTorch's conventions: ``(x, h0, c0, W, R, B, spec)``, its input names, its
    constant weights and the layer it computes; UnsupportedError for any other node (it takes :func:`emit_node`)."""
    problems = pytorch_conventions(node)
    if problems:
        raise UnsupportedError(f"{node.op_type} node {node.name or node.output[0]!r}: uses {', '.join(problems)}, "
                               "which only the general decomposed form computes")
    names = list(node.input) + [""] * (8 - len(node.input))
    w = node_weights(node, folder)
    return names[0], names[5], names[6], w.W, w.R, w.B, _spec(node, w.W)


def node_attributes(node: onnx.NodeProto) -> RecurrentAttrs:
    """A recurrent node's attributes, checked as the specification has them (clip > 0, a known direction, as many
    activations as the kind and direction take, each one the specification names, ...): a one-line
    ModelFormatError naming the node, where onnxruntime would fail later with its own text, or take them."""
    try:
        return RecurrentAttrs.from_attributes(node.op_type, _attrs(node))
    except ModelFormatError as e:
        raise ModelFormatError(f"{node.op_type} node {node.name or node.output[0]!r}: {e}") from None


def check_recurrent_nodes(model: onnx.ModelProto) -> None:
    """:func:`node_attributes` of every RNN/GRU/LSTM node of ``model``, subgraphs included."""
    for n in all_nodes(model.graph):
        if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx"):
            node_attributes(n)


def _rewrite(node: onnx.NodeProto, folder: ConstantFolder, index: int) -> GraphBuilder:
    node_attributes(node)
    g = GraphBuilder("rewrite", prefix=folder.free_prefix(f"{node.name or node.op_type}_{index}/"))
    if pytorch_conventions(node):
        emit_node(g, node, node_weights(node, folder))
        return g
    x, h0, c0, w, r, b, spec = read_node(node, folder)
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


def splice(model: onnx.ModelProto,
           rewrite: "Callable[[onnx.NodeProto, ConstantFolder, int], GraphBuilder | None]"
           ) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each top-level node for which ``rewrite(node, constants, index)`` builds a
    replacement spliced in its place (None: kept); the nodes that computed its weights, and initializers, no longer
    used are dropped. Returns it and how many nodes were replaced."""
    out, count = _spliced(model, rewrite)
    if count and _opset(model) < REWRITE_OPSET:  # the rewrites write opset-13 operators: the file is converted
        out, count = _spliced(at_least_opset(model, REWRITE_OPSET), rewrite)
    return out, count


REWRITE_OPSET = 13  # Unsqueeze/Squeeze/Split with their axes and sizes as inputs, Slice's inputs


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def at_least_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` converted to ``opset`` by onnx's version converter where it imports an older one (every operator
    of the file rewritten as that opset has it); UnsupportedError where the converter cannot."""
    if _opset(model) >= opset:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError, ValidationError, ...
        raise UnsupportedError(f"the model imports opset {_opset(model)}, which the forms write operators of opset "
                               f"{opset} into, and onnx's version converter cannot convert it ({e!s:.200})"
                               ) from None


def _spliced(model: onnx.ModelProto,
             rewrite: "Callable[[onnx.NodeProto, ConstantFolder, int], GraphBuilder | None]"
             ) -> tuple[onnx.ModelProto, int]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    folder = ConstantFolder(model)
    nodes, count, kept = [], 0, []
    for node in g.node:
        built = rewrite(node, folder, count)
        if built is None:
            nodes.append(node)
            kept.append(node)
            continue
        count += 1
        folder.taken |= names_in(built.graph())
        nodes.extend(built.nodes)
        g.initializer.extend(built.initializers)
    unused_before = {tuple(n.output) for n in _unused(g, g.node)}
    del g.node[:]
    g.node.extend(nodes)
    if count:
        _drop_dead_nodes(g, {tuple(n.output) for n in kept} - unused_before)
    used = {i for n in all_nodes(g) for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out, count


def _unused(g: onnx.GraphProto, nodes: "Iterable[onnx.NodeProto]") -> list[onnx.NodeProto]:
    """Those of ``nodes`` none of whose outputs ``g`` uses."""
    used = {i for n in all_nodes(g) for i in n.input} | {o.name for o in g.output}
    return [n for n in nodes if not any(o in used for o in n.output)]


def _drop_dead_nodes(g: onnx.GraphProto, candidates: set[tuple[str, ...]]) -> None:
    """Remove the ``candidates`` (nodes of the graph as given, by their outputs, used there) that nothing uses any
    more: those that computed a rewritten node's weights. The rewrites' own nodes, and what the graph left unused,
    stay."""
    while True:
        dead = {tuple(n.output) for n in _unused(g, g.node)} & candidates
        if not dead:
            return
        keep = [n for n in g.node if tuple(n.output) not in dead]
        del g.node[:]
        g.node.extend(keep)


def decompose_recurrent(model: onnx.ModelProto, ops: tuple[str, ...] = RECURRENT_OPS, *,
                        select: Callable[[onnx.NodeProto], bool] | None = None) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each top-level node in ``ops`` (and, given ``select``, for which it is true)
    rewritten as Scans; returns it and the count.

    A node in PyTorch's conventions takes edge-rnn's own rewrite (:func:`edge_rnn.graphs.emit_direction`), any
    other the general one (:mod:`edge_rnn.deploy._onnx_scan`). The weights move from the node's ``W``/``R``/``B``/
    ``P`` (initializers, or folded from the constants they are computed from) into the decomposed form's
    constants; initializers and nodes no longer used are dropped.
    """
    def rewrite(node: onnx.NodeProto, folder: ConstantFolder, index: int) -> GraphBuilder | None:
        if node.op_type not in ops or node.domain not in ("", "ai.onnx") or (select and not select(node)):
            return None
        return _rewrite(node, folder, index)

    return splice(model, rewrite)


def all_graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``g`` and every subgraph in it (Scan, Loop, If bodies), depth first."""
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from all_graphs(sub)


def all_nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``g``, then of each of its subgraphs (Scan, Loop, If bodies), as :func:`all_graphs` orders
    them."""
    for sub in all_graphs(g):
        yield from sub.node
