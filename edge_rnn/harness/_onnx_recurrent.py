"""The project's float64 reference of the ONNX ``RNN``, ``GRU`` and ``LSTM`` operators, from the specification.

numpy only: it judges onnxruntime and the decomposed forms, so it shares no code with either. Shapes (layout 0;
layout 1 swaps the first two axes of ``X``, ``initial_h``, ``initial_c``, ``Y_h``, ``Y_c``, and ``Y`` is
``(batch, seq, num_directions, hidden)``)::

    X (seq, batch, input)            W (dirs, G*hidden, input)     R (dirs, G*hidden, hidden)
    B (dirs, 2*G*hidden)             P (dirs, 3*hidden), LSTM only sequence_lens (batch,)
    initial_h, initial_c (dirs, batch, hidden)
    Y (seq, dirs, batch, hidden)     Y_h, Y_c (dirs, batch, hidden)

with G = 1 (RNN), 3 (GRU, gates z, r, h) or 4 (LSTM, gates i, o, f, c), and per step, ``clip`` bounding every
gate's pre-activation to [-clip, clip] (``f``, ``g``, ``h`` are the direction's activations)::

    RNN   H = f(x Wi' + H Ri' + Wbi + Rbi)
    GRU   z = f(x Wz' + H Rz' + Wbz + Rbz),  r = f(x Wr' + H Rr' + Wbr + Rbr)
          h = g(x Wh' + (r * H) Rh' + Rbh + Wbh)      linear_before_reset = 0
          h = g(x Wh' + r * (H Rh' + Rbh) + Wbh)      linear_before_reset = 1
          H = (1 - z) * h + z * H
    LSTM  i = f(x Wi' + H Ri' + Pi * C + Wbi + Rbi),  f = f(x Wf' + H Rf' + Pf * C + Wbf + Rbf)  (1 - i: input_forget)
          c = g(x Wc' + H Rc' + Wbc + Rbc),  C = f * C + i * c
          o = f(x Wo' + H Ro' + Po * C + Wbo + Rbo),  H = o * h(C)

A row of ``sequence_lens`` L runs steps 0..L-1 (reverse: L-1 down to 0); ``Y`` is zero past L, and ``Y_h``,
``Y_c`` are the state after its last valid step (the initial state where L is 0).

Two readings of the specification, chosen where it is loose: ``clip`` bounds the gates' pre-activations, not the
cell state that LSTM's ``h`` takes (the specification says "the input of activations", and names it a "cell clip";
onnxruntime clips the gates only, and the writers of ONNX files target it);
a row of length 0 keeps its initial state in ``Y_h``/``Y_c`` (zero steps change nothing; onnxruntime 1.32 writes
zeros there instead). ``input_forget = 1`` sets ``f = 1 - i``, as onnxruntime does.

Example::

    >>> import numpy as np
    >>> a = RecurrentAttrs("GRU", hidden_size=2, linear_before_reset=1)
    >>> y, y_h = run_recurrent(a, np.ones((3, 1, 4)), np.full((1, 6, 4), 0.1), np.zeros((1, 6, 2)))
    >>> y.shape, y_h.shape
    ((3, 1, 1, 2), (1, 1, 2))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_rnn.errors import ModelFormatError, ShapeError

__all__ = ["RecurrentAttrs", "run_recurrent", "ACTIVATIONS"]

Activation = Callable[[np.ndarray, float, float], np.ndarray]


def _sigmoid(x: np.ndarray, _a: float, _b: float) -> np.ndarray:
    # the two branches never overflow: exp of a non-positive number only
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# name (lower case) -> (function, takes alpha, takes beta, default alpha, default beta): the defaults are those of
# the ONNX operator of the same name (LeakyRelu 0.01, HardSigmoid 0.2 / 0.5, ...)
ACTIVATIONS: dict[str, tuple[Activation, bool, bool, float, float]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0.0), False, False, 0.0, 0.0),
    "tanh": (lambda x, a, b: np.tanh(x), False, False, 0.0, 0.0),
    "sigmoid": (_sigmoid, False, False, 0.0, 0.0),
    "affine": (lambda x, a, b: a * x + b, True, True, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), True, False, 0.01, 0.0),
    "thresholdedrelu": (lambda x, a, b: np.where(x >= a, x, 0.0), True, False, 1.0, 0.0),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), True, True, 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0.0, 1.0), True, True, 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0))), True, False, 1.0, 0.0),
    "softsign": (lambda x, a, b: x / (1.0 + np.abs(x)), False, False, 0.0, 0.0),
    "softplus": (lambda x, a, b: np.logaddexp(0.0, x), False, False, 0.0, 0.0),
}

# kind -> (gates G, activations per direction, their defaults)
_KINDS: dict[str, tuple[int, tuple[str, ...]]] = {
    "RNN": (1, ("Tanh",)),
    "GRU": (3, ("Sigmoid", "Tanh")),
    "LSTM": (4, ("Sigmoid", "Tanh", "Tanh")),
}
_DIRECTIONS = ("forward", "reverse", "bidirectional")


@dataclass(frozen=True)
class RecurrentAttrs:
    """The attributes of one ONNX ``RNN``/``GRU``/``LSTM`` node; None and empty mean the specification's default.

    ``activations`` holds 1/2/3 names per direction (twice as many when bidirectional, forward first);
    ``activation_alpha`` and ``activation_beta`` are consumed in that order by the functions that take them.
    ``hidden_size`` None takes ``R``'s last axis.
    """

    kind: str
    hidden_size: int | None = None
    direction: str = "forward"
    activations: tuple[str, ...] | None = None
    activation_alpha: tuple[float, ...] = ()
    activation_beta: tuple[float, ...] = ()
    clip: float | None = None
    layout: int = 0
    linear_before_reset: int = 0
    input_forget: int = 0

    def __post_init__(self) -> None:
        _expect(self.kind in _KINDS, "kind", "RNN, GRU or LSTM", self.kind)
        _expect(self.direction in _DIRECTIONS, "direction", "forward, reverse or bidirectional", self.direction)
        for name in ("layout", "linear_before_reset", "input_forget"):
            _expect(getattr(self, name) in (0, 1), name, "0 or 1", getattr(self, name))
        _expect(self.clip is None or self.clip > 0, "clip", "a positive threshold or None", self.clip)
        _expect(self.hidden_size is None or self.hidden_size > 0, "hidden_size", "a positive size", self.hidden_size)
        if self.activations is not None:
            want = len(_KINDS[self.kind][1]) * self.num_directions
            _expect(len(self.activations) == want, "activations", f"{want} names", len(self.activations))
            for name in self.activations:
                _expect(name.lower() in ACTIVATIONS, "activations", "names from the ONNX specification", name)

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @classmethod
    def from_attributes(cls, kind: str, attributes: Mapping[str, Any]) -> RecurrentAttrs:
        """From a node's attributes as ``onnx.helper.get_attribute_value`` gives them (strings as bytes)."""
        def text(v: Any) -> Any:
            return v.decode() if isinstance(v, bytes) else v
        a = dict(attributes)
        known = {"hidden_size", "direction", "activations", "activation_alpha", "activation_beta", "clip", "layout",
                 "linear_before_reset", "input_forget"}
        _expect(set(a) <= known, "attributes", f"some of {sorted(known)}", sorted(set(a) - known))
        if "activations" in a:
            a["activations"] = tuple(text(v) for v in a["activations"])
        for name in ("activation_alpha", "activation_beta"):
            if name in a:
                a[name] = tuple(float(v) for v in a[name])
        if "direction" in a:
            a["direction"] = text(a["direction"])
        return cls(kind, **a)

    def direction_activations(self) -> list[list[tuple[Activation, float, float]]]:
        """Per direction, the activation functions with their alpha and beta."""
        names = self.activations or _KINDS[self.kind][1] * self.num_directions
        alphas, betas = list(self.activation_alpha), list(self.activation_beta)
        resolved = []
        for name in names:
            fn, takes_a, takes_b, alpha, beta = ACTIVATIONS[name.lower()]
            if takes_a and alphas:
                alpha = alphas.pop(0)
            if takes_b and betas:
                beta = betas.pop(0)
            resolved.append((fn, alpha, beta))
        per = len(_KINDS[self.kind][1])
        return [resolved[d * per:(d + 1) * per] for d in range(self.num_directions)]


def _expect(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ModelFormatError(f"recurrent attribute {name}: expected {expected}, got {got!r}")


@dataclass(frozen=True)
class _Direction:
    """One direction's weights, split per gate, and its activations; every array in the compute dtype."""

    kind: str
    W: np.ndarray  # (G*H, I)
    R: np.ndarray  # (G*H, H)
    Wb: np.ndarray  # (G*H,)
    Rb: np.ndarray  # (G*H,)
    P: np.ndarray  # (3*H,)
    acts: list[tuple[Activation, float, float]]
    clip: float | None
    linear_before_reset: int
    input_forget: int

    def act(self, which: int, x: np.ndarray, clipped: bool = True) -> np.ndarray:
        fn, alpha, beta = self.acts[which]
        if clipped and self.clip is not None:
            x = np.clip(x, -self.clip, self.clip)
        return fn(x, alpha, beta)

    def step(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "RNN":
            return self.act(0, x @ self.W.T + h @ self.R.T + self.Wb + self.Rb), c
        if self.kind == "GRU":
            return self._gru(x, h), c
        return self._lstm(x, h, c)

    def _gru(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        n = h.shape[-1]
        xw = x @ self.W.T + self.Wb
        Rz, Rr, Rh = self.R[:n], self.R[n:2 * n], self.R[2 * n:]
        z = self.act(0, xw[:, :n] + h @ Rz.T + self.Rb[:n])
        r = self.act(0, xw[:, n:2 * n] + h @ Rr.T + self.Rb[n:2 * n])
        if self.linear_before_reset:
            cand = xw[:, 2 * n:] + r * (h @ Rh.T + self.Rb[2 * n:])
        else:
            cand = xw[:, 2 * n:] + (r * h) @ Rh.T + self.Rb[2 * n:]
        return (1.0 - z) * self.act(1, cand) + z * h

    def _lstm(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = h.shape[-1]
        gates = x @ self.W.T + h @ self.R.T + self.Wb + self.Rb
        pi, po, pf = self.P[:n], self.P[n:2 * n], self.P[2 * n:]
        i = self.act(0, gates[:, :n] + pi * c)
        f = 1.0 - i if self.input_forget else self.act(0, gates[:, 2 * n:3 * n] + pf * c)
        c_new = f * c + i * self.act(1, gates[:, 3 * n:])
        o = self.act(0, gates[:, n:2 * n] + po * c_new)
        return o * self.act(2, c_new, clipped=False), c_new


def _run_direction(d: _Direction, X: np.ndarray, lens: np.ndarray, h: np.ndarray, c: np.ndarray,
                   reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Y (seq, batch, H), Y_h, Y_c) of one direction; rows stop at their own length, and where reversed,
    start from their own last valid step."""
    seq, batch = X.shape[:2]
    rows = np.arange(batch)
    Y = np.zeros((seq, batch, h.shape[-1]), X.dtype)
    for t in range(seq):
        valid = t < lens
        at = np.where(valid, lens - 1 - t, 0) if reverse else np.full(batch, t)
        h_new, c_new = d.step(X[at, rows], h, c)
        h = np.where(valid[:, None], h_new, h)
        c = np.where(valid[:, None], c_new, c)
        Y[at[valid], rows[valid]] = h[valid]
    return Y, h, c


def run_recurrent(attrs: RecurrentAttrs, X: np.ndarray, W: np.ndarray, R: np.ndarray, B: np.ndarray | None = None,
                  sequence_lens: np.ndarray | None = None, initial_h: np.ndarray | None = None,
                  initial_c: np.ndarray | None = None, P: np.ndarray | None = None, *,
                  dtype: type = np.float64) -> tuple[np.ndarray, ...]:
    """``(Y, Y_h)`` for RNN and GRU, ``(Y, Y_h, Y_c)`` for LSTM, computed in ``dtype`` (float64 unless a caller
    wants the rounding noise of another precision, as the parity verdict does).

    Raises ShapeError naming the input whose shape does not fit, ModelFormatError for ``P``/``initial_c``
    given to a kind that takes none.
    """
    g = _KINDS[attrs.kind][0]
    if attrs.kind != "LSTM" and (P is not None or initial_c is not None):
        raise ModelFormatError(f"{attrs.kind} P, initial_c: expected none (LSTM only), got an array")
    X = np.asarray(X, dtype)
    shapes = _Shapes.of(attrs, X, np.asarray(R).shape)
    if attrs.layout:
        X, initial_h, initial_c = (_batch_first(a) for a in (X, initial_h, initial_c))
    W = shapes.check("W", W, (shapes.dirs, g * shapes.hidden, shapes.input), dtype)
    R = shapes.check("R", R, (shapes.dirs, g * shapes.hidden, shapes.hidden), dtype)
    B = shapes.check("B", B, (shapes.dirs, 2 * g * shapes.hidden), dtype)
    P = shapes.check("P", P, (shapes.dirs, 3 * shapes.hidden), dtype)
    state = (shapes.dirs, shapes.batch, shapes.hidden)
    h0 = shapes.check("initial_h", initial_h, state, dtype, layout=attrs.layout)
    c0 = shapes.check("initial_c", initial_c, state, dtype, layout=attrs.layout)
    lens = _lengths(sequence_lens, shapes.batch, shapes.seq)
    Y, Y_h, Y_c = _run_directions(attrs, X, W, R, B, P, lens, h0, c0)
    return (Y, Y_h, Y_c) if attrs.kind == "LSTM" else (Y, Y_h)


def _run_directions(attrs: RecurrentAttrs, X: np.ndarray, W: np.ndarray, R: np.ndarray, B: np.ndarray,
                    P: np.ndarray, lens: np.ndarray, h0: np.ndarray, c0: np.ndarray) -> list[np.ndarray]:
    """[Y, Y_h, Y_c] in the caller's layout, every direction stacked (forward first)."""
    half = B.shape[-1] // 2
    outs = []
    for k, acts in enumerate(attrs.direction_activations()):
        d = _Direction(attrs.kind, W[k], R[k], B[k, :half], B[k, half:], P[k], acts, attrs.clip,
                       attrs.linear_before_reset, attrs.input_forget)
        reverse = attrs.direction == "reverse" or k == 1
        outs.append(_run_direction(d, X, lens, h0[k], c0[k], reverse))
    Y = np.stack([o[0] for o in outs], axis=1)
    Y_h, Y_c = np.stack([o[1] for o in outs]), np.stack([o[2] for o in outs])
    if attrs.layout:
        return [np.transpose(Y, (2, 0, 1, 3)), np.swapaxes(Y_h, 0, 1), np.swapaxes(Y_c, 0, 1)]
    return [Y, Y_h, Y_c]


@dataclass(frozen=True)
class _Shapes:
    """The sizes every input must agree on: X's (layout 0) and R's."""

    kind: str
    seq: int
    batch: int
    input: int
    dirs: int
    hidden: int

    @classmethod
    def of(cls, attrs: RecurrentAttrs, X: np.ndarray, r_shape: tuple[int, ...]) -> _Shapes:
        if X.ndim != 3:
            want = "(batch, seq, input)" if attrs.layout else "(seq, batch, input)"
            raise ShapeError(f"{attrs.kind} X: expected 3 axes {want}, got shape {X.shape}")
        hidden = attrs.hidden_size or (r_shape[-1] if len(r_shape) == 3 else 0)
        seq, batch = (X.shape[1], X.shape[0]) if attrs.layout else X.shape[:2]
        return cls(attrs.kind, seq, batch, X.shape[2], attrs.num_directions, hidden)

    def check(self, name: str, a: np.ndarray | None, want: tuple[int, ...], dtype: type,
              layout: int = 0) -> np.ndarray:
        """``a`` as ``dtype`` (zeros of ``want`` where None), or ShapeError naming it, in the caller's layout."""
        if a is None:
            return np.zeros(want, dtype)
        a = np.asarray(a, dtype)
        if a.shape != want:
            shown = (lambda s: (s[1], s[0], *s[2:])) if layout else tuple
            raise ShapeError(f"{self.kind} {name}: expected shape {shown(want)}, got {shown(a.shape)}")
        return a


def _batch_first(a: np.ndarray | None) -> np.ndarray | None:
    """Layout 1 to layout 0 (swap the first two axes); an array of another rank is left for the shape check."""
    if a is None or np.ndim(a) < 2:
        return a
    return np.swapaxes(np.asarray(a), 0, 1)


def _lengths(sequence_lens: np.ndarray | None, batch: int, seq: int) -> np.ndarray:
    if sequence_lens is None:
        return np.full(batch, seq, np.int64)
    lens = np.asarray(sequence_lens)
    if lens.shape != (batch,) or lens.dtype.kind not in "iu":
        raise ShapeError(f"sequence_lens: expected shape ({batch},) of integers, got {lens.shape} {lens.dtype}")
    if lens.size and (lens.min() < 0 or lens.max() > seq):
        raise ShapeError(f"sequence_lens: expected lengths in [0, {seq}], got {lens.min()}..{lens.max()}")
    return lens.astype(np.int64)
