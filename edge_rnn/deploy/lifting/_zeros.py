"""Initial states that are zeros computed at run time, found and dropped before a lift.

``torch.onnx`` writes ``self.lstm(x)`` (no state given) as an ``LSTM`` whose
``initial_h`` and ``initial_c`` are zeros shaped from the input at run time::

    ConstantOfShape(Concat([layers], Unsqueeze(Gather(Shape(x), 0)), [hidden]))  ->  Slice per layer

Such a state is zeros whatever the input, which is what the operator takes when
``initial_h`` is absent; so the input is dropped, and the lift then treats it as
a node without an initial state (zeros). A value is proved zero only through
operators that move or cut values (Slice, Gather, Reshape, Squeeze, Unsqueeze,
Transpose, Expand, Identity, Cast, Concat of zeros): nothing is guessed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edge_rnn.deploy._decompose import all_nodes

__all__ = ["drop_zero_states"]

_RECURRENT = ("RNN", "GRU", "LSTM")
# Operators whose output is zero wherever their first input (Concat: every input) is zero.
_MOVES = ("Slice", "Gather", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Identity", "Cast", "Tile",
          "Flatten")


def _is_zero_constant(node: onnx.NodeProto) -> bool:
    """A ConstantOfShape of value 0 (its default), or a Constant of zeros."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "ConstantOfShape":
        value = attrs.get("value")
        return value is None or not np.any(numpy_helper.to_array(value.t))
    if node.op_type == "Constant" and "value" in attrs:
        return not np.any(numpy_helper.to_array(attrs["value"].t))
    return False


def _zero(name: str, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto],
          seen: set[str]) -> bool:
    """Whether tensor ``name`` is zeros, whatever the graph's inputs."""
    if name in seen:  # a cycle cannot happen in a valid graph; never loop on one
        return False
    seen.add(name)
    if name in inits:
        return not np.any(numpy_helper.to_array(inits[name]))
    node = producers.get(name)
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    if _is_zero_constant(node):
        return True
    if node.op_type == "Concat":
        return all(_zero(i, producers, inits, seen) for i in node.input if i)
    return node.op_type in _MOVES and _zero(node.input[0], producers, inits, seen)


def _prune(g: onnx.GraphProto) -> None:
    """Drop the nodes whose outputs nothing uses any more (the chain that built the zeros), then the initializers;
    a subgraph's reads from the outer scope count as uses."""
    while True:
        used = _used(g)
        keep = [n for n in g.node if used.intersection(n.output)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    used = _used(g)
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


def _used(g: onnx.GraphProto) -> set[str]:
    """The names read by a node (at any depth) or given out by the graph."""
    return {i for n in all_nodes(g) for i in n.input if i} | {o.name for o in g.output}


def _dropped(n: onnx.NodeProto, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto]) -> bool:
    """Drop ``n``'s initial-state inputs (a recurrent node's) that are zeros computed at run time; whether any was."""
    if n.op_type not in _RECURRENT or n.domain not in ("", "ai.onnx"):
        return False
    slots = (5, 6) if n.op_type == "LSTM" else (5,)
    dropped = [k for k in slots if len(n.input) > k and n.input[k] and n.input[k] not in inits
               and _zero(n.input[k], producers, inits, set())]
    for k in dropped:
        n.input[k] = ""
    return bool(dropped)


def drop_zero_states(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose top-level recurrent nodes no longer take an initial state that is zeros computed
    at run time (the operator's default); returns it and a note per node changed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producers = {o: n for n in g.node for o in n.output if o}
    overridable = {i.name for i in g.input}  # an initializer that is also an input is only a default
    inits = {t.name: t for t in g.initializer if t.name not in overridable}
    notes = [_NOTE.format(op=n.op_type, name=n.name or n.output[0]) for n in g.node if _dropped(n, producers, inits)]
    if notes:
        _prune(g)
    return out, notes


_NOTE = ("{op} node {name!r}: its initial state is zeros computed at run time (as torch.onnx writes it): taken as "
         "the zeros a new stream starts from")
