"""Values that hold a whole call's extent in time without a time axis, refused where they reach every step.

Two such values are what the axis labels cannot see, and what the random proof may miss (a gate that opens
only past 1,000 steps, a final state that matters only when it is large):

- the time length, read by ``Shape`` (or ``Size``) of a tensor with the time axis: a chunk's length is not the
  sequence's;
- a top-level recurrent node's ``Y_h``/``Y_c``: its state after the call's LAST step.

Either may leave the graph as a time-less output (the last chunk's value is then the stream's), or size a
shape (``Reshape``, ``Expand``, ``Tile``, ``ConstantOfShape``, a ``Loop``'s trip count): each call's own length
is right there. Anything computed from it that has the time axis (``Where(T > 1000, 0, y)``, ``y + Y_h``,
positions from ``Range(T)``) is refused, naming the node. A shape vector is followed entry by entry through
``Gather``/``Slice``/``Concat`` of constants, so the batch size read the same way is no time length.
"""

from __future__ import annotations

import numpy as np
import onnx

from edge_rnn.deploy.lifting._axes import TIME, Flow, attr, where
from edge_rnn.deploy.lifting._loops import RECURRENT
from edge_rnn.errors import UnsupportedError

__all__ = ["check_ends"]

# The inputs that only size a shape: what flows into them is no value of the output.
_SHAPE_ONLY = {"Reshape": {1}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Loop": {0}}
_MOVES = ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten")


class _Ends:
    """Per tensor: ``vec`` (a shape vector's entries, True where the entry is the time length) and ``why`` (what
    whole-call value it holds, for the message)."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.vec: dict[str, list[bool]] = {}
        self.why: dict[str, str] = {}

    def has_time(self, name: str) -> bool:
        return any(self.flow.classes.kind(lab) == TIME for lab in self.flow.labels.get(name) or ())

    def set_vec(self, name: str, entries: list[bool], why: str) -> None:
        self.vec[name] = entries
        if any(entries):
            self.why[name] = why

    def const(self, name: str) -> np.ndarray | None:
        return self.flow.consts.value(name) if name else None


def _shape(e: _Ends, node: onnx.NodeProto) -> None:
    labs = e.flow.labels.get(node.input[0])
    if labs is None:
        if node.op_type == "Shape" and e.has_time(node.input[0]):
            e.why[node.output[0]] = f"the time length read by {where(node)}"
        return
    entries = [e.flow.classes.kind(lab) == TIME for lab in labs]
    why = f"the time length read by {where(node)}"
    if node.op_type == "Size":
        if any(entries):
            e.why[node.output[0]] = why
        return
    start, end = attr(node, "start", 0), attr(node, "end", len(entries))
    e.set_vec(node.output[0], entries[slice(start, end)], why)


def _cut(e: _Ends, node: onnx.NodeProto) -> bool:
    src = node.input[0]
    args = [e.const(i) for i in node.input[1:]]
    if any(a is None for a in args) or (node.op_type == "Gather" and attr(node, "axis", 0) != 0):
        return False
    picked = _pick(e.vec[src], node.op_type, args)
    if picked is None:
        return False
    e.set_vec(node.output[0], picked, e.why.get(src, ""))
    return True


def _concat(e: _Ends, node: onnx.NodeProto) -> bool:
    parts = [e.vec.get(i) or ([False] * int(np.size(c)) if (c := e.const(i)) is not None else None)
             for i in node.input]
    if any(p is None for p in parts):
        return False
    why = next((e.why[i] for i in node.input if i in e.why), "")
    e.set_vec(node.output[0], [x for p in parts for x in p], why)
    return True


def _vector_op(e: _Ends, node: onnx.NodeProto) -> bool:
    """A shape vector cut or joined with constant arguments: its entries followed. False where not one."""
    src = node.input[0] if node.input else ""
    if node.op_type in ("Gather", "Slice") and src in e.vec:
        return _cut(e, node)
    if node.op_type == "Concat" and any(i in e.vec for i in node.input):
        return _concat(e, node)
    if node.op_type in _MOVES and src in e.vec:
        e.set_vec(node.output[0], e.vec[src], e.why.get(src, ""))
        return True
    return False


def _pick(entries: list[bool], op: str, args: list[np.ndarray]) -> list[bool] | None:
    idx = np.arange(len(entries))
    try:
        if op == "Gather":
            return [entries[int(i)] for i in np.ravel(idx[args[0]])]
        starts, ends = np.ravel(args[0]), np.ravel(args[1])
        steps = np.ravel(args[3]) if len(args) > 3 else [1]
        if len(starts) != 1 or (len(args) > 2 and list(np.ravel(args[2])) not in ([0], [-1])):
            return None
        return [entries[int(i)] for i in idx[slice(int(starts[0]), int(ends[0]), int(steps[0]))]]
    except (IndexError, ValueError, TypeError, OverflowError):
        return None


def _reads(node: onnx.NodeProto) -> list[tuple[int, str]]:
    """The node's inputs by position, and (position -1) what its subgraphs read from outside."""
    from edge_rnn.deploy._decompose import all_nodes

    out = [(k, i) for k, i in enumerate(node.input) if i]
    for a in node.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in subs:
            out += [(-1, i) for n in all_nodes(g) for i in n.input if i]
    return out


def _generic(e: _Ends, node: onnx.NodeProto) -> None:
    skip = _SHAPE_ONLY.get(node.op_type, set())
    held = [e.why[i] for k, i in _reads(node) if i in e.why and k not in skip]
    if not held:
        return
    if any(e.has_time(o) for o in node.output if o):
        raise UnsupportedError(f"{where(node)}: uses {held[0]} at every step: a chunk's is not the whole "
                               "sequence's, so chunked calls cannot equal one pass")
    for o in node.output:
        if o:
            e.why[o] = held[0]


def check_ends(flow: Flow, graph: onnx.GraphProto) -> None:
    """Refuse the first top-level node that spreads the time length or a final state over the time axis."""
    e = _Ends(flow)
    for node in graph.node:
        if node.op_type in ("Shape", "Size") and node.input:
            _shape(e, node)
        elif not _vector_op(e, node):
            _generic(e, node)
        if node.op_type in RECURRENT:
            for k, o in enumerate(node.output[1:3], start=1):
                if o:
                    e.why[o] = f"the {('Y_h', 'Y_c')[k - 1]} output of {where(node)} (its state after the last step)"
