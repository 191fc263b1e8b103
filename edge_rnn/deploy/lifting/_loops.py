"""Axis labels through the recurrent operators and the loops (``Scan``, ``Loop``), and the full rule table.

A top-level ``RNN``/``GRU``/``LSTM`` node defines the time and batch classes: its ``X`` axis 0 (layout 0) is
time, axis 1 batch. A ``Scan`` slices its scan inputs along their scan axes, so its body sees one step;
the body is traced with those axes removed, and each carried state's labels are its final output's. A
``Loop`` whose body indexes an outer tensor with the iteration counter (``Gather(x, i)``) steps along that
axis of ``x``; its scan outputs stack the steps along a new axis 0.
"""

from __future__ import annotations

import onnx

from edge_rnn.deploy.lifting._axes import BATCH, TIME, Flow, attr
from edge_rnn.deploy.lifting._kernels import KERNEL_RULES
from edge_rnn.deploy.lifting._ops import RULES as OP_RULES
from edge_rnn.deploy.lifting._ops import norm, unknown
from edge_rnn.deploy.lifting._shapes import SHAPE_RULES

__all__ = ["RULES", "RECURRENT"]

RECURRENT = ("RNN", "GRU", "LSTM")


def _recurrent(flow: Flow, node: onnx.NodeProto, ins, graph=None):
    x = ins[0]
    if x is None or len(x) != 3:
        return unknown(flow, node, ins)
    t, b = (1, 0) if attr(node, "layout", 0) else (0, 1)
    if flow.depth == 0:  # in a loop's body, axis 0 is the step's own (one frame); batch is batch anywhere
        flow.classes.union(x[t], TIME, node)
    flow.classes.union(x[b], BATCH, node)
    dirs, hidden = flow.classes.fresh("directions"), flow.classes.fresh("hidden")
    y = (x[b], x[t], dirs, hidden) if t else (x[t], dirs, x[b], hidden)
    state = (x[b], dirs, hidden) if t else (dirs, x[b], hidden)
    for i in (5, 6):
        if len(ins) > i and ins[i] is not None and len(ins[i]) == 3:
            for a, c in zip(ins[i], state):
                flow.classes.union(a, c, node)
    flow.guard(x[2], node, "contracts")
    return [y, state, state][:len(node.output)]


def _run_body(flow: Flow, body: onnx.GraphProto) -> None:
    flow.consts.add_graph(body)
    flow.depth += 1
    flow.run(body, RULES)
    flow.depth -= 1


def _carry(flow: Flow, body_in: list[str], body_out: list[str]) -> None:
    """A carried state is one tensor across iterations: its input's axes are its output's."""
    for i, o in zip(body_in, body_out):
        a, b = flow.labels.get(i), flow.labels.get(o)
        if a is not None and b is not None and len(a) == len(b):
            for x, y in zip(a, b):
                flow.classes.union(x, y)


def _scan(flow: Flow, node: onnx.NodeProto, ins, graph=None):
    body, m = attr(node, "body"), attr(node, "num_scan_inputs")
    n = len(node.input) - m
    in_axes = attr(node, "scan_input_axes") or [0] * m
    in_dirs = attr(node, "scan_input_directions") or [0] * m
    scanned = flow.classes.fresh("scanned")
    for j in range(m):
        lab, name = ins[n + j], body.input[n + j].name
        if lab is None:
            flow.seed(name)
            continue
        a = norm([in_axes[j]], len(lab))[0]
        flow.classes.union(scanned, lab[a], node)
        if in_dirs[j]:
            flow.guard(lab[a], node, "scans backwards along")
        flow.seed(name, lab[:a] + lab[a + 1:])
    for i in range(n):
        flow.seed(body.input[i].name, ins[i])
    _run_body(flow, body)
    _carry(flow, [v.name for v in body.input[:n]], [v.name for v in body.output[:n]])
    flow.scans.append((node, scanned))
    return [flow.labels.get(v.name) for v in body.input[:n]] + _stacked(flow, node, body, n, scanned)


def _stacked(flow: Flow, node, body, n: int, scanned: str) -> list:
    """The scan outputs: each body output with the scanned axis put back."""
    k = len(body.output) - n
    out_axes = attr(node, "scan_output_axes") or [0] * k
    out_dirs = attr(node, "scan_output_directions") or [0] * k
    outs = []
    for j in range(k):
        lab = flow.labels.get(body.output[n + j].name)
        if lab is None:
            outs.append(flow.fresh_for(node.output[n + j]) if len(node.output) > n + j else None)
            continue
        a = norm([out_axes[j]], len(lab) + 1)[0]
        if out_dirs[j]:
            flow.guard(scanned, node, "writes backwards along")
        outs.append(tuple(lab[:a]) + (scanned,) + tuple(lab[a:]))
    return outs


def _loop(flow: Flow, node: onnx.NodeProto, ins, graph=None):
    body = attr(node, "body")
    n = len(node.input) - 2
    step = flow.classes.fresh("loop")
    flow.iterators[body.input[0].name] = step
    flow.seed(body.input[0].name, ())
    flow.seed(body.input[1].name, ())
    for i in range(n):
        flow.seed(body.input[2 + i].name, ins[2 + i])
    _run_body(flow, body)
    _carry(flow, [v.name for v in body.input[2:]], [v.name for v in body.output[1:1 + n]])
    flow.scans.append((node, step))
    finals = [flow.labels.get(v.name) for v in body.input[2:]]
    stacked = []
    for v in body.output[1 + n:]:
        lab = flow.labels.get(v.name)
        stacked.append(None if lab is None else (step,) + tuple(lab))
    return finals + stacked


def _if(flow: Flow, node: onnx.NodeProto, ins, graph=None):
    for a in ("then_branch", "else_branch"):
        _run_body(flow, attr(node, a))
    return unknown(flow, node, ins)


RULES: dict = {**OP_RULES, **SHAPE_RULES, **KERNEL_RULES, **{op: _recurrent for op in RECURRENT},
               "Scan": _scan, "Loop": _loop, "If": _if, None: unknown}
