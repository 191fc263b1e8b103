"""Which recurrent states a graph keeps inside, and the edits that make each one a graph input/output pair.

A state is a top-level ``RNN``/``GRU``/``LSTM`` node's ``initial_h`` (``initial_c``), or a state carried by a
top-level ``Scan``/``Loop`` that steps along time (a recurrent node in its body whose state that loop
carries, or any other carried value). Its initial value in the file is absent (zeros), a constant, or a
graph input: the first two become a new graph input ``<node>.h0`` whose default is that value per stream; a
graph input is kept where the state's final value is already a graph output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from edge_rnn.deploy.lifting._axes import Flow, attr, where
from edge_rnn.errors import UnsupportedError

__all__ = ["Site", "node_sites", "batch_shape", "per_stream", "unique_base", "to_layout0", "paired_output", "traces_to",
           "refuse_node"]

_PASSING = ("Identity", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Cast")


@dataclass
class Site:
    """One state to lift (``source`` "absent"/"constant") or to keep ("input").

    ``slot``: 0 for ``h``, 1 for ``c``; ``index``: the input of ``node`` that takes the initial value, ``out``
    the output that holds the final one; ``shape``: the state's dims, None at ``batch_axis``."""

    owner: str  # the node the state is named after (LiftedState.node)
    node: onnx.NodeProto
    position: int  # the node's place in the top-level graph
    slot: int
    index: int
    out: int
    source: str
    initial: np.ndarray | None
    shape: tuple[int | None, ...]
    batch_axis: int
    elem: int
    base: str = ""
    input_name: str = ""
    output_name: str = ""
    layout: int = 0


def batch_shape(dims, b: int, at_batch=None) -> tuple:
    """``dims`` with ``at_batch`` (None: the contract's marker; 1: one stream's shape) at axis ``b``."""
    return tuple(at_batch if k == b else d for k, d in enumerate(dims))


def unique_base(name: str, taken: set[str]) -> str:
    """``name`` made a plain tensor-name stem (letters, digits, ``_ . -``) that no tensor ``stem.*`` takes yet."""
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("._") or "node"
    stem, k = base, 2
    while any(f"{stem}.{s}" in taken for s in ("h0", "hn", "c0", "cn")):
        stem, k = f"{base}_{k}", k + 1
    return stem


def per_stream(flow: Flow, name: str, batch_axis: int, full: tuple[int, ...], at: str) -> np.ndarray | None:
    """One stream's initial value (the batch axis taken out) of the constant ``name`` shaped like ``full`` (1 at
    the batch axis); None where it is not constant. Refused where rows of the batch differ."""
    v = flow.consts.value(name)
    if v is None:
        v = _filled(flow, name, full)
    if v is None:
        return None
    rows = np.moveaxis(np.asarray(v), batch_axis, 0)
    if rows.shape[0] > 1 and not all(np.array_equal(rows[0], r) for r in rows[1:]):
        raise UnsupportedError(f"{at}: its initial state differs between batch rows: expected one default state "
                               "per stream, got one per row")
    return rows[0]


def _filled(flow: Flow, name: str, full: tuple[int, ...]) -> np.ndarray | None:
    """A state made at run time from a constant to the batch's size (``ConstantOfShape``, ``Expand`` of a
    constant, as exporters write zeros of the input's batch): one stream's value, shaped ``full``."""
    producer = flow.consts.producer(name)
    if producer is not None and producer.op_type == "ConstantOfShape":
        fill = attr(producer, "value")
        value = 0.0 if fill is None else onnx.numpy_helper.to_array(fill).ravel()[0]
        return np.full(full, value, np.float32 if fill is None else type(value))
    if producer is not None and producer.op_type == "Expand":
        v = flow.consts.value(producer.input[0])
        return None if v is None or not _broadcasts(v.shape, full) else np.broadcast_to(v, full)
    return None


def _broadcasts(shape: tuple[int, ...], full: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(shape, full)
    except ValueError:
        return False
    return len(shape) <= len(full) and np.broadcast_shapes(shape, full) == tuple(full)


def paired_output(graph: onnx.GraphProto, name: str) -> str | None:
    """The graph output that is ``name`` (or an Identity of it), if any."""
    outs = {o.name for o in graph.output}
    seen = name
    while seen:
        if seen in outs:
            return seen
        nxt = [n.output[0] for n in graph.node if n.op_type == "Identity" and n.input[0] == seen]
        seen = nxt[0] if nxt else ""
    return None


def node_sites(flow: Flow, graph: onnx.GraphProto, position: int, node: onnx.NodeProto) -> list[Site]:
    """The states of a top-level recurrent node (one; LSTM: two)."""
    refuse_node(flow, graph, node)
    return [_node_site(flow, graph, position, node, slot) for slot in range(2 if node.op_type == "LSTM" else 1)]


def _node_site(flow: Flow, graph: onnx.GraphProto, position: int, node: onnx.NodeProto, slot: int) -> Site:
    hidden, layout = attr(node, "hidden_size"), attr(node, "layout", 0)
    elem = flow.types.get(node.input[0], onnx.TensorProto.FLOAT)
    index, out = 5 + slot, 1 + slot
    name = node.input[index] if len(node.input) > index else ""
    owner = node.name or f"{node.op_type}_{position}"
    if name in {i.name for i in graph.input}:
        return _kept(flow, graph, node, position, slot, name, owner, elem)
    at = f"{where(node)} {('initial_h', 'initial_c')[slot]}"
    initial = per_stream(flow, name, 0 if layout else 1, (1, 1, hidden), at) if name else None
    if name and initial is None:
        raise UnsupportedError(f"{at}: computed from the inputs, not a constant: expected no initial state, a "
                               "constant one or a graph input, so lift cannot tell its default")
    initial = None if initial is None or not np.any(initial) else initial
    return Site(owner, node, position, slot, index, out, "constant" if name else "absent", initial,
                (1, None, hidden), 1, elem, layout=layout)


def _kept(flow: Flow, graph, node, position: int, slot: int, name: str, owner: str, elem: int) -> Site:
    out = node.output[1 + slot] if len(node.output) > 1 + slot else ""
    paired = paired_output(graph, out) if out else None
    if paired is None:
        raise UnsupportedError(f"{where(node)}: its {('initial_h', 'initial_c')[slot]} is graph input {name!r}, but "
                               f"its {('Y_h', 'Y_c')[slot]} is no graph output: the state cannot be carried")
    dims = flow.dims.get(name) or ()
    b = flow.axes_of(name)[0]
    b = (0 if attr(node, "layout", 0) else 1) if b is None else b
    shape = batch_shape(dims, b)
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape[:b] + shape[b + 1:]):
        raise UnsupportedError(f"{where(node)}: graph input {name!r}: expected a state of fixed sizes besides the "
                               f"batch, got {list(dims)}")
    site = Site(owner, node, position, slot, 5 + slot, 1 + slot, "input", None, shape, b, elem)
    site.input_name, site.output_name = name, paired
    return site


def refuse_node(flow: Flow, graph: onnx.GraphProto, node: onnx.NodeProto) -> None:
    direction = attr(node, "direction", "forward")
    if direction in ("bidirectional", "reverse"):
        raise UnsupportedError(f"{where(node)}: direction={direction} looks ahead in time: needs the whole sequence")
    lens = node.input[4] if len(node.input) > 4 else ""
    if not lens:
        return
    if lens in {i.name for i in graph.input}:
        why = (f"comes from graph input {lens!r}: each call would end its rows at their lengths, so chunked calls "
               "cannot equal one pass")
    elif flow.consts.value(lens) is not None:
        why = "is a constant: it pins each row's length, which a stream of any length cannot keep"
    else:
        why = "is computed in the graph: lengths cannot be carried across calls"
    raise UnsupportedError(f"{where(node)}: sequence_lens {why}")


def to_layout0(graph: onnx.GraphProto, node: onnx.NodeProto, lifted: set[int], edits) -> str:
    """Rewrite a layout=1 node as layout 0 between Transposes; ``lifted``: the input indexes (5, 6) that lift
    replaces, which need none. Returns the note."""
    stem = node.name or node.output[0]
    before = [helper.make_node("Transpose", [node.input[0]], [f"{stem}.X.layout0"], perm=[1, 0, 2],
                               name=f"{stem}.X.Transpose")]
    node.input[0] = f"{stem}.X.layout0"
    for i in (5, 6):
        if len(node.input) > i and node.input[i] and i not in lifted:
            new = f"{node.input[i]}.layout0"
            before.append(helper.make_node("Transpose", [node.input[i]], [new], perm=[1, 0, 2], name=f"{new}.T"))
            node.input[i] = new
    after = []
    for k, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):
        if len(node.output) > k and node.output[k]:
            old = node.output[k]
            node.output[k] = f"{old}.layout0"
            after.append(helper.make_node("Transpose", [node.output[k]], [old], perm=perm, name=f"{old}.T"))
    edits.before(graph, node, before)
    _drop_attr(node, "layout")
    edits.after(graph, node, after)
    return f"{where(node)}: layout=1 rewritten as layout=0 between Transposes (onnxruntime refuses layout=1)"


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def traces_to(graph: onnx.GraphProto, start: str, goal: str, forward: bool) -> bool:
    """Whether ``start`` reaches ``goal`` through shape-only nodes (Identity, Squeeze, ...), downstream when
    ``forward`` else upstream."""
    seen = start
    for _ in range(64):
        if seen == goal:
            return True
        if forward:
            nxt = [n.output[0] for n in graph.node if n.op_type in _PASSING and n.input and n.input[0] == seen]
        else:
            nxt = [n.input[0] for n in graph.node if n.op_type in _PASSING and seen in n.output]
        if len(nxt) != 1:
            return False
        seen = nxt[0]
    return False

