"""States carried by a top-level ``Scan`` or ``Loop`` that steps along time.

Each value such a loop carries from one step to the next is a recurrent state: a recurrent node in the body
whose ``initial_h`` is a carried value and whose ``Y_h`` is carried on (through shape-only nodes), or any
other carried value (a decomposed cell's ``h``). A recurrent node in the body whose state is not carried is
reset every iteration; that, and a loop that steps along another axis around a recurrent node, are refused.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_rnn.deploy._decompose import all_nodes
from edge_rnn.deploy.lifting._axes import TIME, Edits, Flow, attr, where
from edge_rnn.deploy.lifting._loops import RECURRENT
from edge_rnn.deploy.lifting._states import Site, batch_shape, paired_output, per_stream, refuse_node, traces_to
from edge_rnn.errors import UnsupportedError

__all__ = ["loop_sites", "LOOPS", "dynamic_trip_count"]

LOOPS = ("Scan", "Loop")


def _layout(node: onnx.NodeProto, body: onnx.GraphProto) -> tuple[int, int, int, int]:
    """(carried count, offset in the node's inputs, in the body's inputs, in the body's outputs)."""
    if node.op_type == "Scan":
        return len(node.input) - attr(node, "num_scan_inputs"), 0, 0, 0
    return len(node.input) - 2, 2, 2, 1


def loop_sites(flow: Flow, graph: onnx.GraphProto, position: int, node: onnx.NodeProto) -> list[Site]:
    body = attr(node, "body")
    step = next((lab for n, lab in flow.scans if list(n.output) == list(node.output)), None)
    inner = [r for r in all_nodes(body) if r.op_type in RECURRENT]
    if step is None or flow.classes.kind(step) != TIME:
        if inner:
            raise UnsupportedError(f"{where(inner[0])} inside {where(node)}: that loop does not step along the time "
                                   "axis, so the state it carries is not a stream's: cannot carry it across calls")
        return []
    n, _, bin_off, bout_off = _layout(node, body)
    owners = _owners(flow, body, node, inner, n, bin_off, bout_off)
    return [_carried(flow, graph, node, position, i, owners.get(i)) for i in range(n)]


def _owners(flow: Flow, body, node, inner, n: int, bin_off: int, bout_off: int) -> dict[int, tuple]:
    """Carried index -> the recurrent node (and slot) whose state it is; refused where a node's state is not."""
    direct = {tuple(x.output) for x in body.node}
    owners = {}
    for r in inner:
        if tuple(r.output) not in direct:
            raise UnsupportedError(f"{where(r)} inside {where(node)}: nested inside another subgraph of it: lift "
                                   "follows one loop level only")
        refuse_node(flow, body, r)
        for slot in range(2 if r.op_type == "LSTM" else 1):
            owners[_carrier(body, node, r, slot, n, bin_off, bout_off)] = (r, slot)
    return owners


def _carrier(body, node, r, slot: int, n: int, bin_off: int, bout_off: int) -> int:
    """The carried value that is ``r``'s state ``slot``: its initial value and, through shape-only nodes, its
    final one."""
    init = r.input[5 + slot] if len(r.input) > 5 + slot else ""
    y = r.output[1 + slot] if len(r.output) > 1 + slot else ""
    hit = [i for i in range(n) if init and traces_to(body, init, body.input[bin_off + i].name, False)]
    if not hit or not y or not traces_to(body, y, body.output[bout_off + hit[0]].name, True):
        raise UnsupportedError(f"{where(r)}: its state is reset every iteration of {where(node)}: cannot carry "
                               "it across calls")
    return hit[0]


def _carried(flow: Flow, graph, node, position: int, i: int, owner) -> Site:
    body = attr(node, "body")
    _, in_off, bin_off, _ = _layout(node, body)
    outer, inner_name = node.input[in_off + i], body.input[bin_off + i].name
    r, slot = owner or (None, 0)
    at = f"{where(node)} carried state {i} ({inner_name!r})"
    b, dims = _batch_and_dims(flow, outer, inner_name, at)
    site = Site(_owner_name(node, position, i, r), node, position, slot, in_off + i, i, "constant", None,
                batch_shape(dims, b), b, flow.types.get(inner_name) or flow.types.get(outer, onnx.TensorProto.FLOAT))
    if outer in {v.name for v in graph.input}:
        return _kept_carried(graph, node, i, site, at)
    initial = per_stream(flow, outer, b, batch_shape(dims, b, 1), at)
    if initial is None:
        raise UnsupportedError(f"{at}: starts from a value computed from the inputs, not a constant: lift cannot "
                               "tell its default")
    site.initial = initial if np.any(initial) else None
    return site


def _kept_carried(graph, node, i: int, site: Site, at: str) -> Site:
    """A carried state that starts from a graph input: kept where its final value is a graph output."""
    outer = node.input[site.index]
    final = node.output[i] if len(node.output) > i else ""
    paired = paired_output(graph, final) if final else None
    if paired is None:
        raise UnsupportedError(f"{at}: starts from graph input {outer!r}, but its final value is no graph "
                               "output: the state cannot be carried")
    site.source, site.input_name, site.output_name = "input", outer, paired
    return site


def _owner_name(node, position: int, i: int, r) -> str:
    """A carried state is named after the recurrent node whose state it is, else after the loop."""
    if r is not None:
        return r.name or f"{r.op_type}_{i}"
    return f"{node.name or f'{node.op_type}_{position}'}.state{i}"


def _batch_and_dims(flow: Flow, outer: str, inner: str, at: str) -> tuple[int, tuple]:
    b = flow.axes_of(inner)[0]
    if b is None:
        raise UnsupportedError(f"{at}: has no batch axis: cannot carry it per stream")
    dims = tuple(flow.dims.get(outer) or flow.dims.get(inner) or ())
    if not dims or not all(isinstance(d, int) for k, d in enumerate(dims) if k != b):
        raise UnsupportedError(f"{at}: expected fixed sizes besides the batch, got {list(dims)}")
    return b, dims


def dynamic_trip_count(flow: Flow, graph: onnx.GraphProto, node: onnx.NodeProto, sources: dict,
                       edits: Edits) -> str | None:
    """A Loop over time whose trip count is a constant runs that many steps every call: read it from the input."""
    if node.op_type != "Loop" or not node.input[0] or flow.consts.value(node.input[0]) is None:
        return None
    step = next((lab for n, lab in flow.scans if list(n.output) == list(node.output)), None)
    if step is None or flow.classes.kind(step) != TIME or TIME not in sources:
        return None
    src, axis = sources[TIME]
    stem = f"{node.name or node.output[0]}.trip_count"
    graph.initializer.append(numpy_helper.from_array(np.asarray(axis, np.int64), f"{stem}.axis"))
    edits.before(graph, node, [helper.make_node("Shape", [src], [f"{stem}.shape"], name=f"{stem}.Shape"),
                               helper.make_node("Gather", [f"{stem}.shape", f"{stem}.axis"], [stem],
                                                name=f"{stem}.Gather")])
    old = node.input[0]
    node.input[0] = stem
    return f"{where(node)}: trip count {old!r} (fixed) -> the input's time length"
