"""ONNX for recurrent layers, in two graph forms.

*native*: one ONNX ``RNN``/``LSTM``/``GRU`` operator per layer, weights in
ONNX gate order. *decomposed*: the input projection of the whole chunk as one
``MatMul``, then a ``Scan`` whose body is one time step written with
``MatMul``, ``Add``, ``Sigmoid``, ``Tanh``/``Relu`` and ``Mul``: no recurrent
operators, for runtimes and accelerators that lack them. A projected LSTM
(``proj_size``), which the ONNX ``LSTM`` operator cannot express, always takes
the decomposed form.

Tensors here are time-major: ``x`` is ``(T, B, In)``, a layer's output
``(T, B, D * H_out)``, its final states ``(D, B, H_out)`` and ``(D, B, H)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_rnn.gates import TORCH_GATES, gate_blocks, join_gates, to_onnx_gate_order
from edge_rnn.graphs._builder import GraphBuilder
from edge_rnn.spec import RecurrentSpec

__all__ = ["emit_module", "emit_stack", "emit_direction", "emit_input_projection", "emit_step", "native_possible"]

Weights = dict[str, np.ndarray]
WeightsFn = Callable[[int, bool], Weights]  # (layer, reverse) -> weights


def native_possible(spec: RecurrentSpec) -> bool:
    """Whether the ONNX recurrent operators can express ``spec``."""
    return spec.proj_size == 0


def emit_input_projection(g: GraphBuilder, spec: RecurrentSpec, w: Weights, x: str) -> str:
    """``x @ W_ih^T`` plus every bias that can be folded in front of the recurrence.

    GRU keeps ``b_hn`` back: PyTorch applies it inside ``r * (W_hn h + b_hn)``.
    """
    xw = g.op1("MatMul", [x, g.const(w["w_ih"].T, "w_ih_t")], hint="xw")
    if not spec.bias:
        return xw
    folded = w["b_ih"] + w["b_hh"]
    if spec.kind == "gru":  # r and z fold both biases; n takes b_ih only
        folded = join_gates("gru", {**gate_blocks("gru", folded), "n": gate_blocks("gru", w["b_ih"])["n"]})
    return g.op1("Add", [xw, g.const(folded, "b_folded")], hint="xw")


def emit_step(
    g: GraphBuilder, spec: RecurrentSpec, w: Weights, xw: str, h: str, c: str | None
) -> tuple[str, str | None]:
    """One time step from the projected input ``xw`` (B, G*H) and state ``h`` (B, H_out), ``c`` (B, H).

    Returns the new ``(h, c)``; ``c`` is None except for an LSTM.
    """
    hid = spec.hidden_size
    hw = g.op1("MatMul", [h, g.const(w["w_hh"].T, "w_hh_t")], hint="hw")
    if spec.kind == "rnn":
        act = "Tanh" if spec.nonlinearity == "tanh" else "Relu"
        return g.op1(act, [g.op1("Add", [xw, hw])], hint="h"), None
    if spec.kind == "lstm":
        a = g.op1("Add", [xw, hw], hint="gates")
        split = g.ints([hid] * spec.gates, "split")
        gates = dict(zip(TORCH_GATES["lstm"], g.op("Split", [a, split], outputs=spec.gates, axis=1)))
        i, f, o = (g.op1("Sigmoid", [gates[k]]) for k in "ifo")
        cand = gates["g"]
        c_new = g.op1("Add", [g.op1("Mul", [f, c]), g.op1("Mul", [i, g.op1("Tanh", [cand])])], hint="c")
        h_new = g.op1("Mul", [o, g.op1("Tanh", [c_new])], hint="h")
        if spec.proj_size:
            h_new = g.op1("MatMul", [h_new, g.const(w["w_hr"].T, "w_hr_t")], hint="h")
        return h_new, c_new
    # GRU, with PyTorch's b_hn inside the reset gate and its h' = n + z * (h - n)
    if spec.bias:  # b_hn alone, in its block: the other blocks were folded into xw
        b_hh = gate_blocks("gru", w["b_hh"])
        b_hn = join_gates("gru", {k: (v if k == "n" else np.zeros_like(v)) for k, v in b_hh.items()})
        hw = g.op1("Add", [hw, g.const(b_hn, "b_hn")])
    split = g.ints([hid] * spec.gates, "split")
    xs = dict(zip(TORCH_GATES["gru"], g.op("Split", [xw, split], outputs=spec.gates, axis=1)))
    hs = dict(zip(TORCH_GATES["gru"], g.op("Split", [hw, split], outputs=spec.gates, axis=1)))
    xr, xz, xn = xs["r"], xs["z"], xs["n"]
    hr, hz, hn = hs["r"], hs["z"], hs["n"]
    r = g.op1("Sigmoid", [g.op1("Add", [xr, hr])], hint="r")
    z = g.op1("Sigmoid", [g.op1("Add", [xz, hz])], hint="z")
    n = g.op1("Tanh", [g.op1("Add", [xn, g.op1("Mul", [r, hn])])], hint="n")
    h_new = g.op1("Add", [n, g.op1("Mul", [z, g.op1("Sub", [h, n])])], hint="h")
    return h_new, None


def emit_direction(
    g: GraphBuilder, spec: RecurrentSpec, w: Weights, x: str, h0: str, c0: str | None, reverse: bool
) -> tuple[str, str, str | None]:
    """One layer-direction as a Scan over time; returns ``(y (T,B,H_out), h_T, c_T)``."""
    xw = emit_input_projection(g, spec, w, x)
    body = GraphBuilder("step", parent=g)
    gh = spec.gates * spec.hidden_size
    h_in = body.add_input(body.fresh("h_in"), [None, spec.hidden_out])
    c_in = body.add_input(body.fresh("c_in"), [None, spec.hidden_size]) if c0 else None
    xw_t = body.add_input(body.fresh("xw_t"), [None, gh])
    h_out, c_out = emit_step(body, spec, w, xw_t, h_in, c_in)
    body.add_output(h_out, [None, spec.hidden_out])
    if c_out:
        body.add_output(c_out, [None, spec.hidden_size])
    y_t = body.op1("Identity", [h_out], hint="y_t")
    body.add_output(y_t, [None, spec.hidden_out])
    direction = [1 if reverse else 0]
    n_states = 2 if c0 else 1
    outs = g.op(
        "Scan",
        [h0] + ([c0] if c0 else []) + [xw],
        outputs=n_states + 1,
        hint="scan",
        body=body.graph(),
        num_scan_inputs=1,
        scan_input_directions=direction,
        scan_output_directions=direction,
    )
    return outs[-1], outs[0], outs[1] if c0 else None


def _decomposed_layer(
    g: GraphBuilder, spec: RecurrentSpec, weights: WeightsFn, layer: int, x: str, h0: str, c0: str | None
) -> tuple[str, str, str | None]:
    ys, hs, cs = [], [], []
    for d in range(spec.num_directions):
        idx = g.const(np.asarray(layer * spec.num_directions + d, np.int64), "state_index")
        h_init = g.op1("Gather", [h0, idx], axis=0, hint="h_init")
        c_init = g.op1("Gather", [c0, idx], axis=0, hint="c_init") if c0 else None
        y, h, c = emit_direction(g, spec, weights(layer, d == 1), x, h_init, c_init, reverse=d == 1)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    axes0 = g.ints([0], "axes")
    h_last = _concat(g, [g.op1("Unsqueeze", [h, axes0]) for h in hs], axis=0)
    c_last = _concat(g, [g.op1("Unsqueeze", [c, axes0]) for c in cs], axis=0) if c0 else None
    return _concat(g, ys, axis=2), h_last, c_last


def _native_layer(
    g: GraphBuilder, spec: RecurrentSpec, weights: WeightsFn, layer: int, x: str, h0: str, c0: str | None
) -> tuple[str, str, str | None]:
    d = spec.num_directions
    wrb = _native_weights(g, spec, [weights(layer, r == 1) for r in range(d)])
    if spec.num_layers > 1:  # this layer's slice of the stacked states
        span = [g.ints([layer * d], "start"), g.ints([layer * d + d], "end"), g.ints([0], "axes")]
        h0 = g.op1("Slice", [h0, *span], hint="h_init")
        c0 = g.op1("Slice", [c0, *span], hint="c_init") if c0 else None
    inputs = [x, *wrb, "", h0] + ([c0] if c0 else [])
    outs = g.op(spec.kind.upper(), inputs, outputs=3 if c0 else 2, hint=spec.kind, **_native_attributes(spec))
    y4 = outs[0]  # (T, D, B, H)
    if d == 1:
        y = g.op1("Squeeze", [y4, g.ints([1], "axes")], hint="y")
    else:
        y = g.op1("Reshape", [g.op1("Transpose", [y4], perm=[0, 2, 1, 3]), g.ints([0, 0, -1], "shape")], hint="y")
    return y, outs[1], outs[2] if c0 else None


def _native_weights(g: GraphBuilder, spec: RecurrentSpec, ws: list[Weights]) -> list[str]:
    """The operator's ``W``, ``R`` and ``B`` inputs (``""`` for no bias): each direction's, in ONNX gate order."""
    kind = spec.kind
    w = np.stack([to_onnx_gate_order(kind, wd["w_ih"]) for wd in ws])
    r = np.stack([to_onnx_gate_order(kind, wd["w_hh"]) for wd in ws])
    if not spec.bias:
        return [g.const(w, "W"), g.const(r, "R"), ""]
    b = np.stack([np.concatenate([to_onnx_gate_order(kind, wd["b_ih"]), to_onnx_gate_order(kind, wd["b_hh"])])
                  for wd in ws])
    return [g.const(w, "W"), g.const(r, "R"), g.const(b, "B")]


def _native_attributes(spec: RecurrentSpec) -> dict:
    """The recurrent operator's attributes for ``spec``."""
    d = spec.num_directions
    attrs: dict = {"hidden_size": spec.hidden_size, "direction": "bidirectional" if d == 2 else "forward"}
    if spec.kind == "rnn":
        attrs["activations"] = ["Tanh" if spec.nonlinearity == "tanh" else "Relu"] * d
    if spec.kind == "gru":
        attrs["linear_before_reset"] = 1
    return attrs


def _concat(g: GraphBuilder, names: list[str], axis: int) -> str:
    return names[0] if len(names) == 1 else g.op1("Concat", names, axis=axis)


def emit_stack(
    g: GraphBuilder, spec: RecurrentSpec, weights: WeightsFn, x: str, h0: str, c0: str | None, *, decomposed: bool
) -> tuple[str, str, str | None]:
    """All layers of ``spec`` over time-major ``x``; returns ``(y, h_n, c_n)`` in torch's layouts."""
    layer_fn = _decomposed_layer if decomposed or not native_possible(spec) else _native_layer
    hs, cs = [], []
    for layer in range(spec.num_layers):
        x, h, c = layer_fn(g, spec, weights, layer, x, h0, c0)
        hs.append(h)
        cs.append(c)
    return x, _concat(g, hs, axis=0), _concat(g, cs, axis=0) if c0 else None



def emit_module(
    g: GraphBuilder, spec: RecurrentSpec, weights: WeightsFn, x: str, h0: str, c0: str | None, *, decomposed: bool,
    outputs: tuple[str, str, str],
) -> None:
    """A whole torch layer or cell in its own layouts: ``x`` as torch takes it, states as torch shapes them.

    Writes the named ``outputs`` (y, h_n, c_n; c_n only for an LSTM). A cell
    takes ``x`` (B, In) and ``h0`` (B, H) and its ``y`` equals ``h_n``.
    """
    y_name, h_name, c_name = outputs
    if spec.cell:
        if decomposed:
            w = weights(0, False)
            h, c = emit_step(g, spec, w, emit_input_projection(g, spec, w, x), h0, c0)
        else:  # the recurrent operator over a sequence of one step
            axes = g.ints([0], "axes")
            x3, h3 = g.op1("Unsqueeze", [x, axes]), g.op1("Unsqueeze", [h0, axes])
            c3 = g.op1("Unsqueeze", [c0, axes]) if c0 else None
            _, h, c = emit_stack(g, spec, weights, x3, h3, c3, decomposed=False)
            h = g.op1("Squeeze", [h, axes])
            c = g.op1("Squeeze", [c, axes]) if c else None
        g.op1("Identity", [h], output=y_name)
    else:
        x_tm = g.op1("Transpose", [x], perm=[1, 0, 2], hint="x_tm") if spec.batch_first else x
        y, h, c = emit_stack(g, spec, weights, x_tm, h0, c0, decomposed=decomposed)
        g.op1("Transpose" if spec.batch_first else "Identity", [y], output=y_name,
              **({"perm": [1, 0, 2]} if spec.batch_first else {}))
    g.op1("Identity", [h], output=h_name)
    if c0:
        g.op1("Identity", [c], output=c_name)
