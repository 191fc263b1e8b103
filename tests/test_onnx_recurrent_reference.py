"""The float64 reference of ONNX RNN/GRU/LSTM (edge_rnn.harness._onnx_recurrent) against onnxruntime and onnx's suite.

onnxruntime runs float32, so each comparison uses the project's verdict: onnxruntime's error against the float64
reference, next to the reference's own float32 rounding noise (TOLERANCE["float32"]). Where onnxruntime departs
from the specification, the test is an xfail(strict=True) that states the measured difference.
"""

from __future__ import annotations

import itertools
import warnings
import zlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from edge_rnn.errors import ModelFormatError, ShapeError  # noqa: E402
from edge_rnn.harness._onnx_recurrent import RecurrentAttrs, run_recurrent  # noqa: E402
from edge_rnn.harness._verdict import TOLERANCE, judge  # noqa: E402

INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
SEQ, BATCH, INPUT, HIDDEN = 6, 4, 5, 3

# per kind, the default activations and two other sets with alpha/beta (one direction's worth; bidirectional
# repeats it). Every alpha/beta is given: onnxruntime's defaults for Affine, ScaledTanh, ThresholdedRelu differ
# from the specification's (test_default_alpha_beta_onnxruntime).
ACTIVATION_SETS = {
    "RNN": [None, (("LeakyRelu",), (0.1,), ()), (("ScaledTanh",), (0.9,), (1.3,))],
    "GRU": [None, (("HardSigmoid", "ScaledTanh"), (0.25, 0.9), (0.45, 1.2)),
            (("Sigmoid", "LeakyRelu"), (0.05,), ())],
    "LSTM": [None, (("HardSigmoid", "ScaledTanh", "LeakyRelu"), (0.25, 0.9, 0.05), (0.45, 1.2)),
             (("Sigmoid", "Softsign", "Elu"), (0.7,), ())],
}


def _attrs(kind: str, direction: str, acts, **kw) -> RecurrentAttrs:
    if acts is None:
        return RecurrentAttrs(kind, HIDDEN, direction, **kw)
    names, alpha, beta = acts
    rep = 2 if direction == "bidirectional" else 1
    return RecurrentAttrs(kind, HIDDEN, direction, names * rep, alpha * rep, beta * rep, **kw)


def _inputs(attrs: RecurrentAttrs, seed: int, *, lens=None, initial=False, peepholes=False) -> dict:
    """Layout-0 inputs, float32-representable so both sides see the same numbers."""
    rng = np.random.default_rng(seed)
    dirs, g = attrs.num_directions, GATES[attrs.kind]
    d = {"X": rng.standard_normal((SEQ, BATCH, INPUT)),
         "W": rng.uniform(-0.7, 0.7, (dirs, g * HIDDEN, INPUT)),
         "R": rng.uniform(-0.7, 0.7, (dirs, g * HIDDEN, HIDDEN)),
         "B": rng.uniform(-0.5, 0.5, (dirs, 2 * g * HIDDEN))}
    if initial:
        d["initial_h"] = rng.standard_normal((dirs, BATCH, HIDDEN))
        if attrs.kind == "LSTM":
            d["initial_c"] = rng.standard_normal((dirs, BATCH, HIDDEN))
    if peepholes:
        d["P"] = rng.uniform(-0.7, 0.7, (dirs, 3 * HIDDEN))
    d = {k: v.astype(np.float32).astype(np.float64) for k, v in d.items()}
    if lens is not None:
        d["sequence_lens"] = np.asarray(lens, np.int32)
    return d


def _model(attrs: RecurrentAttrs, present: list[str], opset: int) -> bytes:
    kw = {"hidden_size": attrs.hidden_size, "direction": attrs.direction, "clip": attrs.clip,
          "activations": list(attrs.activations) if attrs.activations else None,
          "activation_alpha": list(attrs.activation_alpha) or None,
          "activation_beta": list(attrs.activation_beta) or None, "layout": attrs.layout or None}
    if attrs.kind == "GRU":
        kw["linear_before_reset"] = attrs.linear_before_reset
    if attrs.kind == "LSTM":
        kw["input_forget"] = attrs.input_forget
    names = [n if n in present else "" for n in INPUTS[:8 if attrs.kind == "LSTM" else 6]]
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"][:3 if attrs.kind == "LSTM" else 2]
    node = helper.make_node(attrs.kind, names, outs, **{k: v for k, v in kw.items() if v is not None})
    graph = helper.make_graph(
        [node], "recurrent",
        [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else TensorProto.FLOAT, None)
         for n in names if n],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model.SerializeToString()


def _ort(attrs: RecurrentAttrs, d: dict, level: str = "disabled", opset: int = 22) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    sess = ort.InferenceSession(_model(attrs, list(d), opset), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v if k == "sequence_lens" else v.astype(np.float32) for k, v in d.items()})


def _ref(attrs: RecurrentAttrs, d: dict, dtype=np.float64) -> tuple[np.ndarray, ...]:
    return run_recurrent(attrs, **{k: d.get(k) for k in INPUTS}, dtype=dtype)


def _verdict(case: str, level: str, got, d: dict, attrs: RecurrentAttrs) -> list:
    """One verdict row per output; the noise is the reference itself in float32."""
    want, noise = _ref(attrs, d), _ref(attrs, d, np.float32)
    return [judge(case, level, name, g, w, n, TOLERANCE["float32"])
            for name, g, w, n in zip(("Y", "Y_h", "Y_c"), got, want, noise)]


def _grid():
    for kind, direction in itertools.product(GATES, ("forward", "reverse", "bidirectional")):
        for a, clip, lens, initial in itertools.product(range(3), (None, 0.5), (None, (6, 2, 5, 1)), (False, True)):
            variants = {"GRU": ((0,), (1,)), "LSTM": ((0, 1), (0, 1))}.get(kind, ((0,), (0,)))
            for x, y in itertools.product(*variants):
                yield pytest.param(kind, direction, a, clip, lens, initial, x, y,
                                   id=f"{kind}-{direction}-act{a}-clip{clip}-lens{lens is not None}-init{initial}"
                                      f"-{x}{y}")


@pytest.mark.parametrize(("kind", "direction", "act", "clip", "lens", "initial", "x", "y"), list(_grid()))
def test_grid_against_onnxruntime(kind, direction, act, clip, lens, initial, x, y):
    """kind x direction x activations x clip x sequence_lens x initial states x (linear_before_reset | input_forget
    x peepholes), at both onnxruntime optimisation levels."""
    extra = {"GRU": {"linear_before_reset": x}, "LSTM": {"input_forget": x}}.get(kind, {})
    attrs = _attrs(kind, direction, ACTIVATION_SETS[kind][act], clip=clip, **extra)
    d = _inputs(attrs, seed=zlib.crc32(f"{kind}{direction}{act}".encode()), lens=lens, initial=initial,
                peepholes=kind == "LSTM" and y == 1)
    for level in LEVELS:
        rows = _verdict("grid", level, _ort(attrs, d, level), d, attrs)
        assert all(r.passed for r in rows), "\n".join(r.describe() for r in rows)


@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_layout_1_is_layout_0_transposed(kind, direction):
    """onnxruntime refuses layout=1, so the layout-1 reference is checked against onnxruntime's layout-0 run with the
    inputs and outputs transposed, and against the layout-0 reference bit for bit."""
    a0 = RecurrentAttrs(kind, HIDDEN, direction)
    a1 = RecurrentAttrs(kind, HIDDEN, direction, layout=1)
    d = _inputs(a0, seed=7, lens=(3, 6, 0, 4), initial=True, peepholes=kind == "LSTM")
    d["sequence_lens"] = np.asarray((3, 6, 2, 4), np.int32)
    swap = {k: np.swapaxes(v, 0, 1) if k in ("X", "initial_h", "initial_c") else v for k, v in d.items()}
    got1 = _ref(a1, swap)
    want0 = _ref(a0, d)
    assert got1[0].shape == (BATCH, SEQ, a0.num_directions, HIDDEN)
    np.testing.assert_array_equal(got1[0], np.transpose(want0[0], (2, 0, 1, 3)))
    for g, w in zip(got1[1:], want0[1:]):
        np.testing.assert_array_equal(g, np.swapaxes(w, 0, 1))
    rows = _verdict("layout1", "disabled", _ort(a0, d), d, a0)
    assert all(r.passed for r in rows), "\n".join(r.describe() for r in rows)


def test_onnxruntime_refuses_layout_1():
    a = RecurrentAttrs("GRU", HIDDEN, layout=1)
    with pytest.raises(Exception, match="layout == 1"):
        ort.InferenceSession(_model(a, ["X", "W", "R"], 22), providers=["CPUExecutionProvider"])
