"""Deliberate export bugs, for showing that the parity verdict catches them.

Two are made in the PyTorch module before export (so both graph forms carry
them exactly as the exporter would write them); two are made in the written
graph, around the recurrent part, so that they too apply to either form.
"""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def swap_gates(module: torch.nn.Module, kind: str, a: int = 0, b: int = 1) -> torch.nn.Module:
    """A copy with gates ``a`` and ``b`` (torch order: LSTM i f g o, GRU r z n) swapped in every weight and bias."""
    bad = copy.deepcopy(module)
    h = bad.hidden_size
    with torch.no_grad():
        for name, p in bad.named_parameters():
            if p.shape[0] == GATES[kind] * h and (name.startswith("weight_") or name.startswith("bias_")):
                ga, gb = p[a * h:(a + 1) * h].clone(), p[b * h:(b + 1) * h].clone()
                p[a * h:(a + 1) * h], p[b * h:(b + 1) * h] = gb, ga
    return bad


def bias_off(module: torch.nn.Module, delta: float = 1e-3, unit: int = 3) -> torch.nn.Module:
    """A copy with one bias of one unit (the first layer's input-side bias) off by ``delta``."""
    bad = copy.deepcopy(module)
    bias = bad.bias_ih_l0 if hasattr(bad, "bias_ih_l0") else bad.bias_ih
    with torch.no_grad():
        bias[unit] += delta
    return bad


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def state_one_step_late(path: Path, state_in: str = "h0", state_out: str = "hn") -> None:
    """Rewrite a one-layer, one-direction, time-major export so that ``hn`` is the state one step before the end.

    The next call then starts from h[T-2] instead of h[T-1] (from h0 itself for
    a one-step chunk): the state is fed back one step late.
    """
    model = onnx.load(path)
    g = model.graph
    for n in g.node:
        n.output[:] = [f"{state_out}_true" if o == state_out else o for o in n.output]
    i64 = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    g.initializer.extend([i64("late_zero", [0]), i64("late_one", [1])])
    g.node.extend([
        helper.make_node("Concat", [state_in, "y"], ["late_all"], axis=0),  # (T + 1, batch, hidden)
        helper.make_node("Shape", ["x"], ["late_shape"]),
        helper.make_node("Gather", ["late_shape", "late_zero"], ["late_t"], axis=0),  # [T]
        helper.make_node("Sub", ["late_t", "late_one"], ["late_index"]),  # [T - 1]
        helper.make_node("Gather", ["late_all", "late_index"], [state_out], axis=0),  # h[T - 1] of 0..T
    ])
    _save(model, path)


def reverse_gets_forward_init(path: Path, state_in: str = "h0") -> None:
    """Rewrite a one-layer bidirectional export so that the reverse direction starts from the forward one's state."""
    model = onnx.load(path)
    g = model.graph

    def rename(graph: onnx.GraphProto) -> None:
        for n in graph.node:
            n.input[:] = [f"{state_in}_wrong" if i == state_in else i for i in n.input]
            for a in n.attribute:
                if a.HasField("g"):
                    rename(a.g)

    rename(g)
    g.initializer.extend([helper.make_tensor("wrong_start", TensorProto.INT64, [1], [0]),
                          helper.make_tensor("wrong_end", TensorProto.INT64, [1], [1])])
    nodes = [helper.make_node("Slice", [state_in, "wrong_start", "wrong_end", "wrong_start"], ["wrong_fwd"]),
             helper.make_node("Concat", ["wrong_fwd", "wrong_fwd"], [f"{state_in}_wrong"], axis=0)]
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    _save(model, path)
