"""Any native ``RNN``/``GRU``/``LSTM`` node, in ONNX's gate order and conventions, as ``Scan``s of plain operators.

The PyTorch-convention nodes edge-rnn exports keep their own rewrite (:func:`edge_rnn.graphs.emit_direction`);
this one takes the whole operator specification: every activation with its ``activation_alpha``/``beta``,
``clip`` (on the gates' pre-activations, as onnxruntime does), ``direction`` forward, reverse and bidirectional,
``layout`` 1, ``linear_before_reset`` 0 and 1, ``input_forget``, peepholes ``P``, ``sequence_lens``, initial
states given or absent (zeros) and outputs left out. Per direction::

    xw = x W' + folded biases                      (T, B, G*H), outside the loop
    Scan(h, [c], xw_t, [m_t]) -> h', [c'], y_t     one step of the operator's equations

With ``sequence_lens``, ``m_t`` (B, 1) is 1 where ``t < L`` and 0 past a row's length: the step writes
``h' = m * step + (1 - m) * h`` and ``y_t = m * step`` (exact for m in {0, 1}), so ``Y`` is zero past L and
``Y_h`` is the state after the row's last valid step. A reverse Scan visits t = T-1 down to 0, and the mask holds
each row still until its own step L-1: the operator's reverse semantics, with no per-row gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edge_rnn.graphs import GraphBuilder

__all__ = ["NodeWeights", "emit_node", "ACTIVATION_DEFAULTS"]

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
# lower-case name -> (takes alpha, takes beta, default alpha, default beta): the ONNX operators' of that name
# (ScaledTanh has none: 1, 1, the identity scaling)
ACTIVATION_DEFAULTS = {
    "relu": (False, False, 0.0, 0.0), "tanh": (False, False, 0.0, 0.0), "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 1.0, 0.0), "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0), "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5), "elu": (True, False, 1.0, 0.0), "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}
Act = tuple[str, float, float]


@dataclass(frozen=True)
class NodeWeights:
    """A native node's constant weights in ONNX's layout: ``W`` (D, G*H, I), ``R`` (D, G*H, H), ``B`` (D, 2*G*H)
    or None, ``P`` (D, 3*H) or None."""

    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None
    P: np.ndarray | None


@dataclass(frozen=True)
class _Conv:
    """One node's conventions, parsed once."""

    kind: str
    hidden: int
    directions: tuple[bool, ...]  # reverse, per direction
    acts: list[list[Act]]  # per direction
    clip: float | None
    layout: int
    lbr: int
    input_forget: int

    @classmethod
    def of(cls, node: onnx.NodeProto, w: np.ndarray) -> _Conv:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        kind, direction = node.op_type, _text(a.get("direction", "forward"))
        dirs = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}[direction]
        names = [_text(v) for v in a.get("activations", [])] or list(_DEFAULT_ACTS[kind]) * len(dirs)
        acts = _resolved(names, list(a.get("activation_alpha", [])), list(a.get("activation_beta", [])))
        per = len(_DEFAULT_ACTS[kind])
        hidden = int(a.get("hidden_size") or w.shape[1] // _GATES[kind])
        return cls(kind, hidden, dirs, [acts[k * per:(k + 1) * per] for k in range(len(dirs))],
                   a.get("clip"), int(a.get("layout", 0)), int(a.get("linear_before_reset", 0)),
                   int(a.get("input_forget", 0)))


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _f32(g: GraphBuilder, v: float, hint: str) -> str:
    return g.const(np.asarray(v, np.float32), hint)


def _resolved(names: list[str], alphas: list[float], betas: list[float]) -> list[Act]:
    """Each activation with its alpha and beta: the attribute lists are consumed in order by those that take them."""
    out = []
    for name in names:
        takes_a, takes_b, alpha, beta = ACTIVATION_DEFAULTS[name.lower()]
        alpha = float(alphas.pop(0)) if takes_a and alphas else alpha
        beta = float(betas.pop(0)) if takes_b and betas else beta
        out.append((name.lower(), alpha, beta))
    return out


def _activation(g: GraphBuilder, act: Act, x: str) -> str:
    """``act`` over ``x`` with plain operators (those ONNX has of the same name, with their alpha and beta)."""
    name, a, b = act
    if name in ("relu", "tanh", "sigmoid", "softsign", "softplus"):
        return g.op1({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign",
                      "softplus": "Softplus"}[name], [x])
    if name == "affine":
        return g.op1("Add", [g.op1("Mul", [x, _f32(g, a, "alpha")]), _f32(g, b, "beta")], hint="affine")
    if name == "scaledtanh":
        return g.op1("Mul", [g.op1("Tanh", [g.op1("Mul", [x, _f32(g, b, "beta")])]), _f32(g, a, "alpha")],
                     hint="stanh")
    if name == "hardsigmoid":
        return g.op1("HardSigmoid", [x], alpha=a, beta=b)
    op = {"leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "elu": "Elu"}[name]
    return g.op1(op, [x], alpha=a)


class _Step:
    """One direction's step, written into a Scan body ``b``."""

    def __init__(self, b: GraphBuilder, c: _Conv, d: int, w: NodeWeights):
        self.b, self.c, self.acts, self.h = b, c, c.acts[d], c.hidden
        self.R = w.R[d].astype(np.float32)
        self.Rb = None if w.B is None else w.B[d, _GATES[c.kind] * c.hidden:]
        self.P = None if w.P is None else w.P[d]

    def act(self, which: int, x: str, clipped: bool = True) -> str:
        if clipped and self.c.clip is not None:
            clip = float(self.c.clip)
            x = self.b.op1("Clip", [x, self.b.const(np.asarray(-clip, np.float32), "clip_min"),
                                    self.b.const(np.asarray(clip, np.float32), "clip_max")])
        return _activation(self.b, self.acts[which], x)

    def matmul(self, x: str, rows: slice) -> str:
        return self.b.op1("MatMul", [x, self.b.const(np.ascontiguousarray(self.R[rows].T), "r_t")], hint="hr")

    def sizes(self, values: list[int]) -> str:
        """Split sizes as a Constant inside the step's own graph: shape inference (onnxruntime's quantiser runs it)
        cannot read an outer-scope initializer, and an equal split it guesses instead broke the int8 GRU."""
        return self.b.op1("Constant", [], value=numpy_helper.from_array(np.asarray(values, np.int64)), hint="split")

    def split(self, x: str, n: int) -> list[str]:
        return self.b.op("Split", [x, self.sizes([self.h] * n)], outputs=n, axis=1)

    def peep(self, x: str, k: int, c: str) -> str:
        if self.P is None:
            return x
        p = self.b.const(self.P[k * self.h:(k + 1) * self.h].astype(np.float32), "p")
        return self.b.op1("Add", [x, self.b.op1("Mul", [c, p])])

    def __call__(self, xw: str, h: str, c: str | None) -> tuple[str, str | None]:
        b = self.b
        if self.c.kind == "RNN":
            return self.act(0, b.op1("Add", [xw, self.matmul(h, slice(None))])), None
        if self.c.kind == "GRU":
            return self.gru(xw, h), None
        gates = self.split(b.op1("Add", [xw, self.matmul(h, slice(None))]), 4)  # i, o, f, c
        i = self.act(0, self.peep(gates[0], 0, c))
        if self.c.input_forget:
            f = b.op1("Sub", [b.const(np.asarray(1.0, np.float32), "one"), i])
        else:
            f = self.act(0, self.peep(gates[2], 2, c))
        c_new = b.op1("Add", [b.op1("Mul", [f, c]), b.op1("Mul", [i, self.act(1, gates[3])])], hint="c")
        o = self.act(0, self.peep(gates[1], 1, c_new))
        return b.op1("Mul", [o, self.act(2, c_new, clipped=False)], hint="h"), c_new

    def gru(self, xw: str, h: str) -> str:
        b, n = self.b, self.h
        x_zr, x_h = b.op("Split", [xw, self.sizes([2 * n, n])], outputs=2, axis=1)
        z, r = self.split(self.act(0, b.op1("Add", [x_zr, self.matmul(h, slice(0, 2 * n))])), 2)
        if self.c.lbr:
            hr = self.matmul(h, slice(2 * n, 3 * n))
            if self.Rb is not None:
                hr = b.op1("Add", [hr, b.const(self.Rb[2 * n:].astype(np.float32), "rbh")])
            cand = b.op1("Add", [x_h, b.op1("Mul", [r, hr])])
        else:
            cand = b.op1("Add", [x_h, self.matmul(b.op1("Mul", [r, h]), slice(2 * n, 3 * n))])
        hh = self.act(1, cand)
        # H = (1 - z) * hh + z * H
        one_minus = b.op1("Sub", [b.const(np.asarray(1.0, np.float32), "one"), z])
        return b.op1("Add", [b.op1("Mul", [one_minus, hh]), b.op1("Mul", [z, h])], hint="h")


def _folded_bias(c: _Conv, w: NodeWeights, d: int) -> np.ndarray | None:
    """The biases added to ``x W'`` before the loop: all of them, but GRU's ``Rbh`` with linear_before_reset=1."""
    if w.B is None:
        return None
    gh = _GATES[c.kind] * c.hidden
    wb, rb = w.B[d, :gh], w.B[d, gh:].copy()
    if c.kind == "GRU" and c.lbr:
        rb[2 * c.hidden:] = 0.0
    return (wb + rb).astype(np.float32)


def _direction(g: GraphBuilder, c: _Conv, w: NodeWeights, d: int, x: str, h0: str, c0: str | None,
               mask: str | None) -> tuple[str, str, str | None]:
    """One direction as a Scan over time-major ``x``; returns ``(y (T,B,H), h_T, c_T)``."""
    xw = g.op1("MatMul", [x, g.const(np.ascontiguousarray(w.W[d].T).astype(np.float32), "w_t")], hint="xw")
    bias = _folded_bias(c, w, d)
    if bias is not None:
        xw = g.op1("Add", [xw, g.const(bias, "bias")], hint="xw")
    body = GraphBuilder("step", parent=g)
    gh = _GATES[c.kind] * c.hidden
    h_in = body.add_input(body.fresh("h_in"), [None, c.hidden])
    c_in = body.add_input(body.fresh("c_in"), [None, c.hidden]) if c0 else None
    xw_t = body.add_input(body.fresh("xw_t"), [None, gh])
    h_new, c_new = _Step(body, c, d, w)(xw_t, h_in, c_in)
    if mask:
        h_new, c_new, y_t = _masked(body, h_new, h_in, c_new, c_in)
    else:
        y_t = body.op1("Identity", [h_new], hint="y_t")
    for out in (h_new, c_new, y_t):
        if out:
            body.add_output(out, [None, c.hidden])
    direction = [1 if c.directions[d] else 0]
    states = [h0] + ([c0] if c0 else [])
    outs = g.op("Scan", states + [xw] + ([mask] if mask else []), outputs=len(states) + 1, hint="scan",
                body=body.graph(), num_scan_inputs=2 if mask else 1,
                scan_input_directions=direction * (2 if mask else 1), scan_output_directions=direction)
    return outs[-1], outs[0], outs[1] if c0 else None


def _masked(b: GraphBuilder, h_new: str, h: str, c_new: str | None, c: str | None
            ) -> tuple[str, str | None, str]:
    """The step behind a mask ``m`` (B, 1), a new scan input of ``b``: ``(m * h_new + (1 - m) * h, the same of c,
    y_t = m * h_new)``."""
    m = b.add_input(b.fresh("m_t"), [None, 1])
    keep = b.op1("Sub", [_f32(b, 1.0, "one"), m], hint="keep")

    def held(new: str, old: str) -> str:
        return b.op1("Add", [b.op1("Mul", [m, new]), b.op1("Mul", [keep, old])])

    return held(h_new, h), held(c_new, c) if c_new and c else None, b.op1("Mul", [m, h_new], hint="y_t")


def _zeros_state(g: GraphBuilder, x: str, dirs: int, hidden: int) -> str:
    """Zeros (D, B, H), B from time-major ``x``'s run-time shape."""
    batch = g.op1("Slice", [g.op1("Shape", [x]), g.ints([1], "start"), g.ints([2], "end")], hint="batch")
    shape = g.op1("Concat", [g.ints([dirs], "dirs"), batch, g.ints([hidden], "hidden")], axis=0, hint="shape")
    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0])
    return g.op1("ConstantOfShape", [shape], value=zero, hint="zeros")


def _initial(g: GraphBuilder, name: str, x: str, c: _Conv, axis: int) -> tuple[str, int]:
    """An initial state and its directions axis: the node's input, or zeros (D, B, H) where it has none."""
    if name:
        return name, axis
    return _zeros_state(g, x, len(c.directions), c.hidden), 0


def _mask(g: GraphBuilder, x: str, lens: str) -> str:
    """(T, B, 1) float: 1 where step t < the row's length."""
    steps = g.op1("Gather", [g.op1("Shape", [x]), g.const(np.asarray(0, np.int64), "zero")], axis=0, hint="steps")
    t = g.op1("Range", [g.const(np.asarray(0, np.int64), "zero"), steps, g.const(np.asarray(1, np.int64), "one")])
    lens64 = g.op1("Cast", [lens], to=onnx.TensorProto.INT64)
    valid = g.op1("Less", [g.op1("Unsqueeze", [t, g.ints([1], "axes")]),
                           g.op1("Unsqueeze", [lens64, g.ints([0], "axes")])], hint="valid")
    m = g.op1("Cast", [valid], to=onnx.TensorProto.FLOAT)
    return g.op1("Unsqueeze", [m, g.ints([2], "axes")], hint="mask")


def emit_node(g: GraphBuilder, node: onnx.NodeProto, w: NodeWeights) -> None:
    """``node`` (with its constant weights ``w``) written into ``g`` as Scans, producing its named outputs."""
    c = _Conv.of(node, w.W)
    names = list(node.input) + [""] * (8 - len(node.input))
    x, lens = names[0], names[4]
    if c.layout:
        x = g.op1("Transpose", [x], perm=[1, 0, 2], hint="x_tm")
    state_axis = 1 if c.layout else 0  # initial_h (B, D, H) in layout 1
    h0 = _initial(g, names[5], x, c, state_axis)
    c0 = _initial(g, names[6], x, c, state_axis) if c.kind == "LSTM" else None
    mask = _mask(g, x, lens) if lens else None
    ys, hs, cs = [], [], []
    for d in range(len(c.directions)):
        idx = g.const(np.asarray(d, np.int64), "direction")
        h_init = g.op1("Gather", [h0[0], idx], axis=h0[1], hint="h_init")
        c_init = g.op1("Gather", [c0[0], idx], axis=c0[1], hint="c_init") if c0 else None
        y, h, cl = _direction(g, c, w, d, x, h_init, c_init, mask)
        ys.append(g.op1("Unsqueeze", [y, g.ints([1], "axes")]))  # (T, B, H) -> (T, 1, B, H)
        hs.append(g.op1("Unsqueeze", [h, g.ints([state_axis], "axes")]))
        if cl:
            cs.append(g.op1("Unsqueeze", [cl, g.ints([state_axis], "axes")]))
    _write_outputs(g, node, c.layout, [ys, hs, cs])


def _write_outputs(g: GraphBuilder, node: onnx.NodeProto, layout: int, parts: list[list[str]]) -> None:
    """The node's named outputs from each direction's ``[ys (T,1,B,H)], [hs], [cs]`` (layout 1: batch first)."""
    outs = list(node.output) + [""] * (3 - len(node.output))
    state_axis = 1 if layout else 0
    y_perm = [2, 0, 1, 3] if layout else None  # (T, D, B, H) -> (B, T, D, H)
    for name, pieces, axis, perm in ((outs[0], parts[0], 1, y_perm), (outs[1], parts[1], state_axis, None),
                                     (outs[2], parts[2], state_axis, None)):
        if not name or not pieces:
            continue
        whole = g.op1("Concat", pieces, axis=axis) if len(pieces) > 1 else pieces[0]
        g.op1("Transpose" if perm else "Identity", [whole], output=name, **({"perm": perm} if perm else {}))
