"""Lift the state a recurrent ONNX file keeps inside into graph inputs and outputs, so it can stream: onnx and numpy.

Each top-level ``RNN``/``GRU``/``LSTM`` node that takes no initial state, or a constant one, gets a graph input
``<node>.h0`` and output ``<node>.hn`` (LSTM: ``.c0``/``.cn`` too), shaped ``(1, batch, hidden)``; so does each
state carried by a top-level ``Scan``/``Loop`` that steps along time. The batch and time axes are traced from the
recurrent nodes to the graph inputs and outputs (:mod:`edge_rnn.deploy.lifting._axes`), made dynamic where the file
pinned them, shape vectors that pin them are rewritten, and the ``edge_rnn`` contract is written. What cannot
stream is refused with an :class:`~edge_rnn.errors.UnsupportedError` naming the node: a bidirectional or
reverse node, ``sequence_lens``, and an operator that looks ahead in time or pools or normalises over it.

Example::

    >>> lifted = lift_model(onnx.load("lstm.onnx"))            # doctest: +SKIP
    >>> [s.input for s in lifted.states], lifted.notes[0]      # doctest: +SKIP
    (['lstm.h0', 'lstm.c0'], "lifted LSTM node 'lstm': ...")
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from edge_rnn.contract import METADATA_KEY, Contract, StateSpec, TensorSpec, axes_problem
from edge_rnn.deploy._decompose import all_graphs, all_nodes
from edge_rnn.deploy.lifting._axes import BATCH, TIME, Edits, Flow, attr, where
from edge_rnn.deploy.lifting._carried import LOOPS, dynamic_trip_count, loop_sites
from edge_rnn.deploy.lifting._ends import check_ends
from edge_rnn.deploy.lifting._loops import RECURRENT, RULES
from edge_rnn.deploy.lifting._shapes import rewrite_sites
from edge_rnn.deploy.lifting._states import Site, node_sites, to_layout0, unique_base
from edge_rnn.errors import ShapeError, UnsupportedError

__all__ = ["lift_model", "reference_model", "Lifted", "LiftedState"]


@dataclass(frozen=True)
class LiftedState:
    """A state made explicit: graph input ``input`` fed by graph output ``output``; ``initial`` is one stream's
    default (the file's constant, without the batch axis), None for zeros."""

    node: str
    input: str
    output: str
    initial: np.ndarray | None = None


@dataclass(frozen=True)
class _Tap:
    """Where the original graph holds a lifted state's final value: output ``out`` of top-level node
    ``position``; ``transpose`` where the node was layout=1."""

    position: int
    out: int
    name: str
    transpose: bool
    shape: tuple


@dataclass
class Lifted:
    """The lifted model (its contract in its metadata), the contract, the states and one note per rewrite."""

    model: onnx.ModelProto
    contract: Contract
    states: list[LiftedState]
    notes: list[str]
    taps: list[_Tap] = field(default_factory=list, repr=False)
    axes: dict | None = field(default=None, repr=False)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _analyse(model: onnx.ModelProto, axes: dict | None) -> tuple[Flow, dict[str, tuple[str, int]]]:
    """Every tensor's axis labels, the refusals of operators that mix along time, and where each of time and
    batch can be read at run time (a graph input and its axis)."""
    flow = Flow(model)
    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name not in inits:
            flow.seed(v.name)
    _given(flow, model, axes or {}, [v.name for v in model.graph.input])
    flow.run(model.graph, RULES)
    _given(flow, model, axes or {}, [v.name for v in model.graph.output])
    _fallback_time(flow)
    for cls, what in ((TIME, "time"), (BATCH, "batch")):
        if not _traced(flow, cls):
            raise UnsupportedError(f"found no {what} axis: expected a recurrent node (RNN, GRU, LSTM, or a Scan/Loop "
                                   f"carrying state) over the inputs; give axes={{input: (batch_axis, time_axis)}}")
    return flow, _sources(flow, model)


def _sources(flow: Flow, model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """TIME and BATCH -> the first graph input with that axis, and the axis."""
    sources: dict[str, tuple[str, int]] = {}
    for v in model.graph.input:
        for cls, axis in zip((BATCH, TIME), flow.axes_of(v.name)):
            if axis is not None:
                sources.setdefault(cls, (v.name, axis))
    return sources


def _given(flow: Flow, model: onnx.ModelProto, axes: dict, names: list[str]) -> None:
    known = {v.name for v in itertools.chain(model.graph.input, model.graph.output)}
    for name, pair in axes.items():
        if name not in known:
            raise ShapeError(f"axes: expected graph input or output names, got {name!r}")
        if name not in names or flow.labels.get(name) is None:
            continue
        labs = flow.labels[name]
        b, t = pair
        problem = axes_problem(len(labs), b, t)
        if problem:
            raise ShapeError(f"axes[{name!r}]: {problem}")
        flow.classes.union(labs[b], BATCH)
        if t is not None:
            flow.classes.union(labs[t], TIME)


def _traced(flow: Flow, cls: str) -> bool:
    return any(lab != cls and flow.classes.find(lab) == cls for lab in list(flow.classes.parent))


def _fallback_time(flow: Flow) -> None:
    """No recurrent node at the top: the first top-level loop that carries state steps along time."""
    if _traced(flow, TIME):
        return
    for node, step in flow.scans:
        carried = len(node.input) - (attr(node, "num_scan_inputs") if node.op_type == "Scan" else 2)
        if carried > 0:
            flow.classes.union(step, TIME, node)
            return


def _sites(flow: Flow, graph: onnx.GraphProto) -> list[Site]:
    sites = []
    for position, node in enumerate(graph.node):
        if node.op_type in RECURRENT:
            sites += node_sites(flow, graph, position, node)
        elif node.op_type in LOOPS:
            sites += loop_sites(flow, graph, position, node)
        elif node.op_type == "If" and any(n.op_type in RECURRENT for a in ("then_branch", "else_branch")
                                          for n in all_nodes(attr(node, a))):
            raise UnsupportedError(f"{where(node)}: holds a recurrent node in a branch: lift does not follow If")
    return sites


def lift_model(model: onnx.ModelProto, *, axes: dict[str, tuple[int, int]] | None = None) -> Lifted:
    """``model`` with each recurrent state it keeps inside made a graph input/output pair, its batch and time
    axes dynamic, and the ``edge_rnn`` contract written. ``axes`` gives ``{tensor: (batch_axis, time_axis)}``
    for graph inputs or outputs whose axes tracing cannot find (or gets wrong)."""
    out = _copy(model)
    flow, sources = _analyse(out, axes)
    notes = flow.check()
    check_ends(flow, out.graph)
    sites = _sites(flow, out.graph)
    edits = Edits()
    batch = _batch_param(out, sources)
    lifted: dict[str, set[int]] = {}
    for site in sites:
        lifted.setdefault(site.node.output[0], set()).add(site.index if site.source != "input" else -1)
    notes += _layouts(out.graph, lifted, edits)
    states, taps = _wire(out, sites, batch, edits)
    notes += [_note(s, group) for s, group in _by_node(sites)]
    notes += rewrite_sites(flow, sources, out.graph, edits)
    notes += [n for node in out.graph.node if (n := dynamic_trip_count(flow, out.graph, node, sources, edits))]
    edits.finish()
    notes += _dynamic(flow, out, batch)
    _complete_outputs(out)
    contract = _contract(flow, out, sites, axes or {}, notes)
    _prune(out, model)
    del out.metadata_props[:]
    out.metadata_props.extend(p for p in model.metadata_props if p.key != METADATA_KEY)
    onnx.helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props}, **contract.to_metadata()})
    onnx.checker.check_model(out, full_check=True)
    return Lifted(out, contract, states, notes, taps, dict(axes) if axes else None)


def _batch_param(model: onnx.ModelProto, sources: dict) -> str:
    """The name the file gives its batch dimension, where it names one; else "batch"."""
    name, axis = sources[BATCH]
    v = next(v for v in model.graph.input if v.name == name)
    dims = v.type.tensor_type.shape.dim
    return dims[axis].dim_param if axis < len(dims) and dims[axis].dim_param else "batch"


def _layouts(graph: onnx.GraphProto, lifted: dict[str, set[int]], edits: Edits) -> list[str]:
    notes = []
    for g in all_graphs(graph):
        for node in g.node:
            if node.op_type in RECURRENT and attr(node, "layout", 0):
                notes.append(to_layout0(g, node, lifted.get(node.output[0], set()), edits))
    return notes


def _by_node(sites: list[Site]):
    groups: dict[int, list[Site]] = {}
    for s in sites:
        groups.setdefault(s.position, []).append(s)
    return [(g[0], g) for g in groups.values()]


def _note(site: Site, group: list[Site]) -> str:
    new = [s for s in group if s.source != "input"]
    if not new:
        return f"kept {where(site.node)}: its state is already graph input {site.input_name!r}"
    pairs = ", ".join(f"{s.input_name} -> {s.output_name} ({'zeros' if s.initial is None else 'the constant'})"
                      for s in new)
    return f"lifted {where(site.node)}: {pairs}"


def _wire(model: onnx.ModelProto, sites: list[Site], batch: str, edits: Edits) -> tuple[list, list]:
    """New graph inputs and outputs for the sites being lifted; the states and the reference's taps."""
    g = model.graph
    taken = {n for node in all_nodes(g) for n in itertools.chain(node.input, node.output)}
    taken |= {v.name for v in itertools.chain(g.input, g.output)} | {t.name for t in g.initializer}
    bases: dict[str, str] = {}
    states, taps = [], []
    for s in sites:
        if s.source == "input":
            states.append(LiftedState(s.owner, s.input_name, s.output_name, None))
            continue
        base = bases.setdefault(s.owner, unique_base(s.owner, taken))
        letter = "hc"[s.slot]
        s.input_name, s.output_name = f"{base}.{letter}0", f"{base}.{letter}n"
        taken |= {s.input_name, s.output_name}
        dims = [batch if d is None else d for d in s.shape]
        _connect(g, s, edits)
        g.input.append(helper.make_tensor_value_info(s.input_name, s.elem, dims))
        g.output.append(helper.make_tensor_value_info(s.output_name, s.elem, dims))
        states.append(LiftedState(s.owner, s.input_name, s.output_name, s.initial))
        taps.append(_Tap(s.position, s.out, s.output_name, s.layout == 1, tuple(dims)))
    return states, taps


def _connect(g: onnx.GraphProto, s: Site, edits: Edits) -> None:
    node = s.node
    while len(node.input) <= s.index:
        node.input.append("")
    node.input[s.index] = s.input_name
    while len(node.output) <= s.out:
        node.output.append("")
    if not node.output[s.out]:
        node.output[s.out] = s.output_name
    else:
        edits.after(g, node, [helper.make_node("Identity", [node.output[s.out]], [s.output_name],
                                               name=f"{s.output_name}.Identity")])


def _dynamic(flow: Flow, model: onnx.ModelProto, batch: str) -> list[str]:
    """Pinned time and batch dims of every traced tensor's declared shape made symbolic; a note per graph input
    and output changed."""
    notes = []
    ends = {**{v.name: "input" for v in model.graph.input}, **{v.name: "output" for v in model.graph.output}}
    for g in all_graphs(model.graph):
        for v in itertools.chain(g.input, g.output, g.value_info):
            changed = _symbolic(flow, v, batch)
            if changed and v.name in ends:
                notes.append(f"{ends[v.name]} {v.name!r}: fixed {', '.join(changed)} made dynamic")
    return notes


def _complete_outputs(model: onnx.ModelProto) -> None:
    """Graph output sizes the file left unknown, filled in where shape inference knows them (a fixed hidden size):
    a static form needs every size besides batch and time, and a reader of the contract every state's."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return
    known = {v.name: v.type.tensor_type.shape.dim for v in inferred.graph.output}
    for v in model.graph.output:
        if v.name in known:
            _fill(v.type.tensor_type, known[v.name])


def _fill(t: onnx.TypeProto.Tensor, found) -> None:
    """Dims of ``t`` that are neither a size nor a name, set to the size inference ``found`` (the rank too, where
    ``t`` has no shape)."""
    if not t.HasField("shape"):
        t.shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in found)
    if len(t.shape.dim) != len(found):
        return
    for d, f in zip(t.shape.dim, found):
        if not d.HasField("dim_value") and not d.HasField("dim_param") and f.HasField("dim_value"):
            d.dim_value = f.dim_value


def _symbolic(flow: Flow, v: onnx.ValueInfoProto, batch: str) -> list[str]:
    labs = flow.labels.get(v.name)
    dims = v.type.tensor_type.shape.dim
    if not labs or len(labs) != len(dims):
        return []
    changed = []
    for k, (lab, d) in enumerate(zip(labs, dims)):
        kind = flow.classes.kind(lab)
        if kind is None or not d.HasField("dim_value"):
            continue
        changed.append(f"{'time' if kind == TIME else 'batch'} length {d.dim_value} (axis {k})")
        if lab in flow.classes.parts:
            d.Clear()
        else:
            d.dim_param = "time" if kind == TIME else batch
    return changed


def _dtype(elem: int) -> str | None:
    try:
        name = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name
    except (KeyError, TypeError, ValueError):
        return None
    return name if name in ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool") else None


def _spec(flow: Flow, v: onnx.ValueInfoProto, axes: dict, what: str) -> TensorSpec:
    b, t = axes.get(v.name) or flow.axes_of(v.name)
    if b is None:
        raise UnsupportedError(f"{what} {v.name!r}: found no batch axis (it traces to no recurrent node's batch): "
                               f"give axes={{{v.name!r}: (batch_axis, time_axis)}}")
    return TensorSpec(v.name, b, t, _dtype(v.type.tensor_type.elem_type))


def _contract(flow: Flow, model: onnx.ModelProto, sites: list[Site], axes: dict, notes: list[str]) -> Contract:
    g = model.graph
    inits = {t.name for t in g.initializer}
    state_in, state_out = {s.input_name for s in sites}, {s.output_name for s in sites}
    inputs = [_spec(flow, v, axes, "input") for v in g.input if v.name not in inits | state_in]
    outputs = [_spec(flow, v, axes, "output") for v in g.output if v.name not in state_out]
    states = [StateSpec(s.input_name, s.output_name, s.shape, s.batch_axis, _dtype(s.elem) or "float32")
              for s in sites]
    owners = list(dict.fromkeys(s.owner for s in sites))
    source = {"lifted": True, "nodes": owners, "producer": model.producer_name or None, "rewrites": len(notes)}
    return Contract(tuple(inputs), tuple(outputs), tuple(states), source=source, streamable=True)


def _used(g: onnx.GraphProto) -> set[str]:
    """Every name a node (of any depth) reads, and the graph outputs."""
    return {i for n in all_nodes(g) for i in n.input} | {o.name for o in g.output}


def _prune(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Drop the nodes and initializers lift left unused (the constant initial states it replaced); what the file
    itself left unused stays."""
    was = _used(original.graph)
    g = model.graph
    while True:
        used = _used(g)
        keep = [n for n in g.node if _live(n, used, was)]
        if len(keep) == len(g.node):
            break
        del g.node[:]
        g.node.extend(keep)
    used = _used(g)
    keep_inits = [t for t in g.initializer if t.name in used or t.name not in was]
    del g.initializer[:]
    g.initializer.extend(keep_inits)


def _live(node: onnx.NodeProto, used: set[str], was: set[str]) -> bool:
    outs = [o for o in node.output if o]
    return any(o in used for o in outs) or not any(o in was for o in outs)


def reference_model(original: onnx.ModelProto, lifted: Lifted) -> onnx.ModelProto:
    """The original computation, for one pass over a whole sequence: its nodes, layout and constant initial states
    unchanged, each lifted state's final value exposed as an extra graph output named and shaped like the lifted
    one (an Identity or Transpose after the node's ``Y_h``/``Y_c``, named where the node left it out), and its
    input and output axes made dynamic as in the lifted model."""
    out = _copy(original)
    flow, sources = _analyse(out, lifted.axes)
    edits = Edits()
    g = out.graph
    batch = _batch_param(out, sources)
    for tap in lifted.taps:
        node = g.node[tap.position]
        while len(node.output) <= tap.out:
            node.output.append("")
        if not node.output[tap.out]:
            node.output[tap.out] = f"{tap.name}.final"
        op, kw = ("Transpose", {"perm": [1, 0, 2]}) if tap.transpose else ("Identity", {})
        edits.after(g, node, [helper.make_node(op, [node.output[tap.out]], [tap.name], name=f"{tap.name}.{op}",
                                               **kw)])
        # the state's own type (a Loop's first input is its trip count, an int64)
        elem = flow.types.get(node.output[tap.out], flow.types.get(node.input[0], onnx.TensorProto.FLOAT))
        g.output.append(helper.make_tensor_value_info(tap.name, elem, list(tap.shape)))
    rewrite_sites(flow, sources, g, edits)
    for node in g.node:
        dynamic_trip_count(flow, g, node, sources, edits)
    edits.finish()
    _dynamic(flow, out, batch)
    del out.metadata_props[:]
    onnx.checker.check_model(out)
    return out
