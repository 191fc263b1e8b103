"""The constant value of a tensor of a graph: an initializer, a ``Constant`` node's, or what nodes compute from them.

A recurrent node's ``W``, ``R``, ``B`` and ``P`` are weights the decomposed and int8 forms bake into constants.
An exporter may leave them as initializers, or compute them (a ``Constant`` then a ``Transpose``, a ``Concat`` of
two halves, ...): those nodes are folded here with onnx's reference evaluator. A tensor that depends on a graph
input is computed at run time and has no constant value: :class:`ConstantFolder` refuses it, naming the node
that needs it. An initializer also listed as an input (older exporters wrote every weight so) counts as the
constant it holds, as edge-rnn always read it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_rnn.errors import UnsupportedError

__all__ = ["ConstantFolder", "names_in", "free_prefix"]


class ConstantFolder:
    """The constant values of ``graph``'s tensors, computed once each, on demand."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self._opsets = list(model.opset_import)
        self._inits = {t.name: t for t in g.initializer}
        self._inputs = {i.name for i in g.input} - set(self._inits)
        self._producer = {o: n for n in g.node for o in n.output if o}
        self._values: dict[str, np.ndarray] = {}
        self.taken = names_in(g)  # what a rewrite must not name its own tensors and nodes (see free_prefix)

    def free_prefix(self, base: str) -> str:
        """:func:`free_prefix` of ``base`` among the graph's names (and those rewrites added to ``taken``)."""
        return free_prefix(base, self.taken)

    def value(self, name: str, needed_by: str) -> np.ndarray:
        """``name``'s constant value, or UnsupportedError saying that ``needed_by`` needs it constant."""
        found = self._value(name, set())
        if isinstance(found, str):
            raise UnsupportedError(f"{needed_by}: its weight {name!r} is computed at run time ({found}); the "
                                   "decomposed and int8 forms need constant weights (initializers, or nodes of "
                                   "constants)")
        return found

    def origin(self, name: str) -> str:
        """How ``name`` is given: ``"initializer"``, ``"computed"`` from constants, or why it is not constant."""
        found = self._value(name, set())
        if isinstance(found, str):
            return found
        return "initializer" if name in self._inits else "computed"

    def _value(self, name: str, seen: set[str]) -> np.ndarray | str:
        """The value, or a string naming the run-time dependency."""
        if name in self._values:
            return self._values[name]
        if name in self._inits:
            return self._values.setdefault(name, numpy_helper.to_array(self._inits[name]))
        if name in self._inputs:
            return f"it is the graph input {name!r}"
        node = self._producer.get(name)
        if node is None or name in seen:
            return f"nothing in the graph makes {name!r}"
        return self._computed(node, name, seen)

    def _computed(self, node: onnx.NodeProto, name: str, seen: set[str]) -> np.ndarray | str:
        """``node``'s outputs from its constant inputs (kept for later), and ``name``'s among them."""
        where = f"{node.op_type} node {node.name or node.output[0]!r}"
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return f"made by {where}, which has a subgraph"
        args = []
        for i in node.input:
            got = self._value(i, seen | {name}) if i else None
            if isinstance(got, str):
                return got if "graph input" in got else f"made by {where} from {got}"
            args.append(got)
        for out, v in zip(node.output, _evaluate(node, args, self._opsets)):
            if out:
                self._values[out] = v
        return self._values[name]


def free_prefix(base: str, taken: set[str]) -> str:
    """``base`` (``"rec_0/"``), or ``"rec_0~1/"``, ``"rec_0~2/"``, ...: the first that no name in ``taken``
    starts with, so that what a rewrite names with it never takes the name of a tensor or node already there
    (a second initializer of that name would be chosen over the file's by onnxruntime, without a word)."""
    prefix, k = base, 0
    while any(n.startswith(prefix) for n in taken):
        k += 1
        prefix = f"{base.rstrip('/')}~{k}/"
    return prefix


def names_in(g: onnx.GraphProto) -> set[str]:
    """Every name of ``g`` and of its subgraphs: tensors (inputs, outputs, initializers, value infos, nodes'
    inputs and outputs) and nodes."""
    names = {v.name for v in (*g.input, *g.output, *g.value_info, *g.initializer)}
    for n in g.node:
        names.update((n.name, *n.input, *n.output))
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= names_in(sub)
    return names - {""}


def _evaluate(node: onnx.NodeProto, args: list[np.ndarray | None], opsets: list) -> list[np.ndarray]:
    """``node`` over constant ``args`` in onnx's reference evaluator, at the model's opsets."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if a is not None else "" for k, a in enumerate(args)]
    outs = [f"out{k}" for k in range(len(node.output))]
    copy = helper.make_node(node.op_type, names, outs, domain=node.domain)
    copy.attribute.extend(node.attribute)
    feeds = {n: a for n, a in zip(names, args) if n}
    graph = helper.make_graph([copy], "fold", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(
        a.dtype), a.shape) for n, a in feeds.items()], [helper.make_value_info(o, onnx.TypeProto()) for o in outs])
    model = helper.make_model(graph, opset_imports=opsets)
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
