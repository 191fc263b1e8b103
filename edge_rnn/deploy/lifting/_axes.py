"""Which axis of each tensor is time, and which is batch: the tracing half of :mod:`edge_rnn.deploy.lifting._surgery`.

Every axis of every tensor gets a label; an operator whose semantics say two axes are the same size (an
elementwise ``Add`` aligning ``x`` and ``y``, a ``MatMul``'s contracted axis, a recurrent node's ``X`` and
``initial_h`` batch axes) joins their labels into one class (union-find). A top-level recurrent node's ``X``
joins its axis 0 (layout 0) to the class :data:`TIME` and its axis 1 to :data:`BATCH`; the graph inputs'
axes in those classes are then the ones a stream varies. An operator that mixes values along an axis
(a reduction, a normalisation, a look-ahead) records a :class:`Guard` on that axis's label; once the classes
are known, a guard on the time axis (or on the batch axis, which would mix streams) is a refusal. The
operator rules live in :mod:`edge_rnn.deploy.lifting._ops`.

Labels of axes merged into one (``Flatten``, a ``Reshape`` from ``(B, T, F)`` to ``(B*T, F)``) are
compound: a fresh label whose parts are remembered, so a later ``Reshape`` that splits it back restores them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_rnn.deploy._decompose import all_graphs
from edge_rnn.errors import UnsupportedError

__all__ = ["TIME", "BATCH", "Classes", "Consts", "Flow", "Guard", "ShapeSite", "Dim", "Edits", "where", "attr"]

TIME, BATCH = "<time>", "<batch>"
Dim = int | str | None
Labels = tuple[str, ...]

# what a guard on each class costs a stream
_CONSEQUENCE = {
    TIME: "it needs more of the sequence than one call holds, so chunked calls cannot equal one pass",
    BATCH: "streams batched together would change each other's results",
}
_NAMES = {TIME: "time", BATCH: "batch"}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def where(node: onnx.NodeProto) -> str:
    """How a message names a node: ``LSTM node 'lstm'`` (its first output where it has no name)."""
    return f"{node.op_type} node {node.name or (node.output[0] if node.output else '?')!r}"


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


class Classes:
    """Union-find over axis labels; :data:`TIME` and :data:`BATCH` are two classes that never merge."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {TIME: TIME, BATCH: BATCH}
        self.parts: dict[str, tuple[tuple[str, Dim], ...]] = {}
        self._n = itertools.count()

    def fresh(self, hint: str = "a") -> str:
        label = f"{hint}#{next(self._n)}"
        self.parent[label] = label
        return label

    def compound(self, parts: list[tuple[str, Dim]]) -> str:
        label = self.fresh("merged")
        self.parts[label] = tuple(parts)
        return label

    def find(self, a: str) -> str:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: str, b: str, node: onnx.NodeProto | None = None) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if {ra, rb} == {TIME, BATCH}:
            at = where(node) if node is not None else "the axes given"
            raise UnsupportedError(f"{at}: ties the time axis to the batch axis: cannot tell them apart")
        if rb in (TIME, BATCH):
            ra, rb = rb, ra
        self.parent[rb] = ra

    def roots(self, label: str) -> set[str]:
        """The classes an axis holds: its own, and those of the axes merged into it."""
        out = {self.find(label)}
        for part, _ in self.parts.get(label, ()):
            out |= self.roots(part)
        return out

    def kind(self, label: str) -> str | None:
        """TIME or BATCH where the axis is (or holds) that one; None otherwise."""
        roots = self.roots(label)
        return TIME if TIME in roots else BATCH if BATCH in roots else None


class Consts:
    """The value of a tensor where it is constant: an initializer, a ``Constant`` node, or a node of constants
    folded with onnx's reference evaluator. Graph inputs (an initializer that is also a graph input may be fed)
    are not constant."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.opset = model.opset_import
        self._inits: dict[str, onnx.TensorProto] = {}
        self._producer: dict[str, onnx.NodeProto] = {}
        self._fed: set[str] = set()
        self._cache: dict[str, np.ndarray | None] = {}
        self.add_graph(model.graph)

    def add_graph(self, g: onnx.GraphProto) -> None:
        self._fed |= {i.name for i in g.input}
        self._inits.update({t.name: t for t in g.initializer if t.name not in self._fed})
        for n in g.node:
            for o in n.output:
                self._producer[o] = n

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._producer.get(name)

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        if not name or name in self._fed:
            return None
        if name not in self._cache:
            self._cache[name] = self._compute(name, depth)
        return self._cache[name]

    def _compute(self, name: str, depth: int) -> np.ndarray | None:
        if name in self._inits:
            return numpy_helper.to_array(self._inits[name])
        node = self._producer.get(name)
        if node is None or depth > 64 or node.op_type in _RANDOM or _has_subgraph(node):
            return None
        if node.op_type == "Constant":
            return _constant_value(node)
        args = [self.value(i, depth + 1) if i else None for i in node.input]
        if any(a is None for a, i in zip(args, node.input) if i):
            return None
        return self._fold(node, args, name)

    def _fold(self, node: onnx.NodeProto, args: list, name: str) -> np.ndarray | None:
        from onnx.reference import ReferenceEvaluator

        ins = [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
               for k, a in enumerate(args) if a is not None]
        names = iter(f"i{k}" for k, a in enumerate(args) if a is not None)
        n = helper.make_node(node.op_type, [next(names) if i else "" for i in node.input], list(node.output),
                             domain=node.domain)
        n.attribute.extend(node.attribute)
        g = helper.make_graph([n], "fold", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in node.output])
        try:
            outs = ReferenceEvaluator(helper.make_model(g, opset_imports=self.opset)).run(
                None, {f"i{k}": a for k, a in enumerate(args) if a is not None})
        except Exception:  # noqa: BLE001 -- an operator the reference cannot fold is simply not constant
            return None
        return np.asarray(outs[list(node.output).index(name)])


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int"):
            return np.asarray(helper.get_attribute_value(a), np.float32 if a.name == "value_float" else np.int64)
        if a.name in ("value_floats", "value_ints"):
            return np.asarray(helper.get_attribute_value(a), np.float32 if a.name == "value_floats" else np.int64)
    return None


@dataclass
class Guard:
    """``node`` mixes values along the axis ``label`` (``text`` says how): refused where that is time or batch.
    ``time_only``: the text is about time (a kernel's past and future frames) and says nothing of batch."""

    label: str
    node: onnx.NodeProto
    text: str
    time_only: bool = False

    def message(self, kind: str) -> str:
        if self.time_only:
            return f"{where(self.node)}: {self.text}"
        return f"{where(self.node)}: {self.text} the {_NAMES[kind]} axis: {_CONSEQUENCE[kind]}"


@dataclass
class ShapeSite:
    """A node whose input ``index`` is a shape-like vector (``Reshape``'s shape, ``Expand``'s, ``Tile``'s
    repeats, ``ConstantOfShape``'s input) fixed in the file: an entry of it at a time or batch axis pins that
    length. ``keep[k]``: the value that keeps the input's own size at output axis ``k`` (0 for ``Reshape``, 1
    for ``Expand``/``Tile``), where the input has that axis; None where it does not."""

    node: onnx.NodeProto
    graph: onnx.GraphProto
    index: int
    values: np.ndarray
    out: Labels
    keep: list[int | None]
    minus_one: bool  # whether -1 (one inferred entry) is allowed: Reshape only


@dataclass
class Flow:
    """Labels of every tensor of a model and what the rules found on the way."""

    model: onnx.ModelProto
    classes: Classes = field(default_factory=Classes)
    labels: dict[str, Labels] = field(default_factory=dict)
    dims: dict[str, tuple[Dim, ...]] = field(default_factory=dict)
    guards: list[Guard] = field(default_factory=list)
    unknown: list[tuple[onnx.NodeProto, list[Labels | None]]] = field(default_factory=list)
    shape_sites: list[ShapeSite] = field(default_factory=list)
    scans: list[tuple[onnx.NodeProto, str | None]] = field(default_factory=list)
    iterators: dict[str, str] = field(default_factory=dict)  # a Loop body's iteration counter -> its axis label
    depth: int = 0

    def __post_init__(self) -> None:
        self.consts = Consts(self.model)
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.types: dict[str, int] = {}
        inferred = _infer(self.model)
        for g in all_graphs(inferred.graph):
            for v in itertools.chain(g.input, g.output, g.value_info):
                if v.type.HasField("tensor_type"):
                    self.types[v.name] = v.type.tensor_type.elem_type
            for v in itertools.chain(g.input, g.output, g.value_info):
                d = _dims_of(v)
                if d is not None:
                    self.dims[v.name] = d
            for t in g.initializer:
                self.dims.setdefault(t.name, tuple(t.dims))

    def dim(self, name: str, axis: int) -> Dim:
        d = self.dims.get(name)
        return d[axis] if d is not None and 0 <= axis < len(d) else None

    def fresh_for(self, name: str) -> Labels | None:
        """Unrelated labels for ``name`` where its rank is known."""
        d = self.dims.get(name)
        if d is None:
            v = self.consts.value(name)
            d = None if v is None else v.shape
        return None if d is None else tuple(self.classes.fresh(f"{name}:{k}") for k in range(len(d)))

    def guard(self, label: str, node: onnx.NodeProto, text: str, time_only: bool = False) -> None:
        self.guards.append(Guard(label, node, text, time_only))

    def align(self, seqs: list[list[tuple[str, Dim]]], node: onnx.NodeProto) -> list[str]:
        """Numpy broadcasting of several tensors' axes (right-aligned): the axes of one output position that are
        not 1 are one class (all of them where every one is 1). Returns the output's labels."""
        rank = max((len(s) for s in seqs), default=0)
        out = []
        for k in range(rank):
            cands = [s[len(s) - rank + k] for s in seqs if len(s) - rank + k >= 0]
            group = [lab for lab, d in cands if d != 1] or [lab for lab, _ in cands]
            for lab in group[1:]:
                self.classes.union(group[0], lab, node)
            out.append(group[0])
        return out

    def pairs(self, name: str, labels: Labels) -> list[tuple[str, Dim]]:
        return [(lab, self.dim(name, k)) for k, lab in enumerate(labels)]

    def run(self, graph: onnx.GraphProto, rules: dict) -> None:
        """Label every node's outputs in order (ONNX graphs are topologically sorted); ``rules[None]`` labels an
        operator that has no rule of its own."""
        for node in graph.node:
            ins = [self._labels_of(n) if n else None for n in node.input]
            rule = rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            outs = (rule or rules[None])(self, node, ins, graph)
            for name, lab in zip(node.output, outs):
                if name and lab is not None:
                    self.labels[name] = tuple(lab)

    def _labels_of(self, name: str) -> Labels | None:
        """A tensor's labels; a constant (a weight) not labelled yet gets axes of its own, unrelated to any."""
        lab = self.labels.get(name)
        if lab is None and self.consts.value(name) is not None:
            lab = self.seed(name)
        return lab

    def seed(self, name: str, labels: Labels | None = None) -> Labels | None:
        """Fresh labels for a graph input (or the given ones)."""
        lab = labels if labels is not None else self.fresh_for(name)
        if lab is not None:
            self.labels[name] = tuple(lab)
        return lab

    def check(self) -> list[str]:
        """Refuse the first guard on time or batch; the notes of operators not analysed on a time axis."""
        for g in self.guards:
            kind = self.classes.kind(g.label)
            if kind == TIME or (kind == BATCH and not g.time_only):
                raise UnsupportedError(g.message(kind))
        notes, seen = [], set()
        for node, ins in self.unknown:
            hit = any(self.classes.kind(lab) == TIME for labs in ins if labs for lab in labs)
            if hit and id(node) not in seen:
                seen.add(id(node))
                notes.append(f"not analysed: {node.op_type} node {node.name or node.output[0]!r} (its input has "
                             "the time axis; the streaming proof decides)")
        return notes

    def axes_of(self, name: str) -> tuple[int | None, int | None]:
        """(batch axis, time axis) of a tensor: the first axis in each class, None where none is."""
        labs = self.labels.get(name) or ()
        kinds = [self.classes.kind(lab) if lab not in self.classes.parts else None for lab in labs]
        b = kinds.index(BATCH) if BATCH in kinds else None
        t = kinds.index(TIME) if TIME in kinds else None
        return b, t


class Edits:
    """Nodes to insert before or after nodes of a graph, applied at the end in one pass per graph (a node's place
    is taken when it is recorded: editing a repeated field while others hold its nodes would detach them)."""

    def __init__(self) -> None:
        self._at: dict[int, tuple[onnx.GraphProto, dict[int, tuple[list, list]]]] = {}

    def _slot(self, graph: onnx.GraphProto, node: onnx.NodeProto) -> tuple[list, list]:
        at = next(i for i, n in enumerate(graph.node) if list(n.output) == list(node.output) and n == node)
        return self._at.setdefault(id(graph), (graph, {}))[1].setdefault(at, ([], []))

    def before(self, graph: onnx.GraphProto, node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
        self._slot(graph, node)[0].extend(nodes)

    def after(self, graph: onnx.GraphProto, node: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
        self._slot(graph, node)[1].extend(nodes)

    def finish(self) -> None:
        for graph, slots in self._at.values():
            nodes = []
            for i, n in enumerate(graph.node):
                pre, post = slots.get(i, ([], []))
                nodes += [*pre, _copy(n), *post]
            del graph.node[:]
            graph.node.extend(nodes)
        self._at.clear()


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 -- a file onnx cannot infer still gets traced, with fewer sizes known
        return model


def _dims_of(v: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    t = v.type.tensor_type
    if not v.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
