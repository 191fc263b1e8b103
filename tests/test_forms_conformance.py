"""Every ONNX RNN/GRU/LSTM convention through every form, judged by suites edge-rnn did not write and by its own
float64 reference of the operators (edge_rnn.harness._onnx_recurrent).

- onnx's backend test suite, its 18 recurrent cases (built in memory by onnx): native onnxruntime, the decomposed
  form, the static form and the reference, each against the suite's expected outputs;
- a generated grid, each convention crossed with RNN, GRU and LSTM: the decomposed form against the reference with
  the verdict (the reference in float32 as the noise), the static form the same, int8 element-wise within
  TOLERANCE["int8"], and native onnxruntime where it computes the case (strict xfails where it does not).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from forms_models import WEIGHTS, recurrent_model, run_ort  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from test_onnx_recurrent_reference import SUITE, onnx_suite_cases  # noqa: E402, F401 - the fixture

from edge_rnn.deploy._decompose import all_nodes, decompose_recurrent  # noqa: E402
from edge_rnn.deploy._static import static_graph  # noqa: E402
from edge_rnn.deploy._variants import MakeOptions, _int8  # noqa: E402
from edge_rnn.harness._onnx_recurrent import RecurrentAttrs, run_recurrent  # noqa: E402
from edge_rnn.harness._verdict import TOLERANCE, judge  # noqa: E402

INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
SEQ, BATCH, INPUT, HIDDEN = 6, 4, 5, 3
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
RECURRENT = {"RNN", "GRU", "LSTM", "Scan", "Loop"}

# ---------------------------------------------------------------------------------------------------------------
# onnx's backend suite


def _suite_case(cases: dict, name: str) -> tuple[onnx.ModelProto, dict, list[np.ndarray], list[str]]:
    """The case's model, its inputs by role (X, W, ...), its expected outputs and their names."""
    case = cases[name]
    node = case.model.graph.node[0]
    inputs, expected = case.data_sets[0]
    roles = [INPUTS[i] for i, n in enumerate(node.input) if n]
    d = dict(zip(roles, inputs))
    return case.model, d, list(expected), [n for n in node.output if n]


def _frozen(model: onnx.ModelProto, d: dict) -> onnx.ModelProto:
    """The suite's model with its weights (graph inputs there) made initializers: the forms need them constant."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = m.graph.node[0]
    roles = dict(zip([INPUTS[i] for i, n in enumerate(node.input) if n], [n for n in node.input if n]))
    weights = {roles[r] for r in WEIGHTS if r in roles}
    keep = [i for i in m.graph.input if i.name not in weights]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(d[r], np.float32), roles[r])
                               for r in WEIGHTS if r in roles)
    return m


def _suite_forms(model: onnx.ModelProto, d: dict, form: str) -> list[np.ndarray]:
    node = model.graph.node[0]
    if form == "reference":
        attrs = RecurrentAttrs.from_attributes(node.op_type, {a.name: helper.get_attribute_value(a)
                                                              for a in node.attribute})
        got = run_recurrent(attrs, **d)
        return [got[i] for i, n in enumerate(node.output) if n]
    feed = dict(zip([n for n in node.input if n], d.values()))
    if form == "onnxruntime":
        m = model
    else:
        m = _frozen(model, d)
        m = decompose_recurrent(m)[0] if form == "decomposed" else static_graph(m)
        assert not {n.op_type for n in all_nodes(m.graph)} & {"RNN", "GRU", "LSTM"}
        if form == "static":
            assert not {n.op_type for n in all_nodes(m.graph)} & RECURRENT
    names = {i.name for i in m.graph.input}
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v for k, v in feed.items() if k in names})


def _suite_params():
    for name in SUITE:
        for form in ("onnxruntime", "decomposed", "static", "reference"):
            marks = []
            if form == "onnxruntime" and name.endswith("_batchwise"):
                marks = [pytest.mark.xfail(strict=True, raises=Exception, reason="onnxruntime 1.32 refuses layout=1: "
                                           "'Batchwise recurrent operations (layout == 1) are not supported'")]
            yield pytest.param(name, form, marks=marks, id=f"{name}-{form}")


@pytest.mark.parametrize(("name", "form"), list(_suite_params()))
def test_onnx_backend_suite_through_every_form(onnx_suite_cases, name, form):  # noqa: F811 - the fixture
    """Each recurrent case of onnx's backend suite against its expected outputs (the suite's own numpy, float32),
    at the float32 tolerance the suite test of the reference uses. Every case has fixed input shapes, so each
    takes the static form too."""
    model, d, expected, names = _suite_case(onnx_suite_cases, name)
    got = _suite_forms(model, d, form)
    assert len(got) == len(expected)
    tol = TOLERANCE["float32"]
    for n, g, e in zip(names, got, expected):
        np.testing.assert_allclose(g, e, rtol=tol.rtol, atol=tol.atol, err_msg=f"{name} {form} {n}")


# ---------------------------------------------------------------------------------------------------------------
# the generated grid

# per kind, activations with alpha/beta given, and ones that take the specification's defaults
ACTS = {
    "RNN": [(("LeakyRelu",), (0.1,), ()), (("ThresholdedRelu",), (), ())],
    "GRU": [(("HardSigmoid", "ScaledTanh"), (0.25, 0.9), (0.45, 1.2)), (("Sigmoid", "Affine"), (), ())],
    "LSTM": [(("HardSigmoid", "Elu", "Softsign"), (0.25, 0.7), (0.45,)),
             (("Sigmoid", "ScaledTanh", "Softplus"), (), ())],
}
# name -> (attribute changes, input changes); "acts0"/"acts1": ACTS[kind][0/1]
CONVENTIONS = {
    "defaults": ({}, {}),
    "acts-alpha-beta": ({"acts": 0}, {}),
    "acts-spec-defaults": ({"acts": 1}, {}),
    "clip": ({"clip": 0.5}, {}),
    "reverse": ({"direction": "reverse"}, {}),
    "bidirectional": ({"direction": "bidirectional"}, {}),
    "layout1": ({"layout": 1}, {}),
    "lbr0": ({"linear_before_reset": 0}, {}),
    "lbr1": ({"linear_before_reset": 1}, {}),
    "input_forget": ({"input_forget": 1}, {}),
    "peepholes": ({}, {"peepholes": True}),
    "sequence_lens": ({}, {"lens": (6, 0, 3, 1)}),
    "no-initial-state": ({}, {"initial": False}),
    "computed-weights": ({}, {"computed": True}),
    "few-outputs": ({}, {"outputs": ("Y_h",)}),
    "combined-bidi-layout1-lens-clip": ({"direction": "bidirectional", "layout": 1, "clip": 0.7, "acts": 0},
                                        {"lens": (2, 6, 0, 5), "peepholes": True}),
    "combined-reverse-lens-noinit-lbr0": ({"direction": "reverse", "linear_before_reset": 0, "input_forget": 1,
                                           "acts": 1}, {"lens": (5, 1, 6, 3), "initial": False,
                                                        "computed": True}),
}
ONLY = {"lbr0": "GRU", "lbr1": "GRU", "input_forget": "LSTM", "peepholes": "LSTM"}

# where onnxruntime's native kernels depart from the specification (each measured in
# tests/test_onnx_recurrent_reference.py): strict xfails, so that a fix is noticed
NATIVE_DEPARTS = {
    "layout1": "onnxruntime 1.32 refuses layout=1 at session creation",
    "combined-bidi-layout1-lens-clip": "onnxruntime 1.32 refuses layout=1 at session creation",
    "acts-spec-defaults": "onnxruntime 1.32 defaults Affine/ScaledTanh/ThresholdedRelu's alpha and beta to 0",
    "combined-reverse-lens-noinit-lbr0": "onnxruntime 1.32 defaults Affine/ScaledTanh/ThresholdedRelu's alpha and "
                                         "beta to 0",
    "sequence_lens": "onnxruntime 1.32 writes zeros to Y_h/Y_c of a row of length 0 (the reference keeps the "
                     "initial state)",
}


# where onnx's ReferenceEvaluator departs from the specification (tests/test_onnx_recurrent_reference.py measures
# each): by kind, the conventions it gets wrong or cannot run; strict xfails, so that a fix is noticed
_CLIP, _LENS = "ignores clip", "ignores sequence_lens"
_ACTS = "ignores the activations of LSTM and GRU"
_RNN_ACTS = "has no LeakyRelu or ThresholdedRelu for RNN ('Unknown activation function')"
EVALUATOR_DEPARTS = {
    "RNN": {"acts-alpha-beta": _RNN_ACTS, "acts-spec-defaults": _RNN_ACTS, "clip": _CLIP, "sequence_lens": _LENS,
            "combined-bidi-layout1-lens-clip": _RNN_ACTS, "combined-reverse-lens-noinit-lbr0": _RNN_ACTS},
    "GRU": {"acts-alpha-beta": _ACTS, "acts-spec-defaults": _ACTS, "clip": _CLIP, "sequence_lens": _LENS,
            "combined-bidi-layout1-lens-clip": _CLIP, "combined-reverse-lens-noinit-lbr0": _LENS},
    "LSTM": {"acts-alpha-beta": _ACTS, "acts-spec-defaults": _ACTS, "clip": _CLIP, "sequence_lens": _LENS,
             "input_forget": "ignores input_forget", "combined-bidi-layout1-lens-clip": _CLIP,
             "combined-reverse-lens-noinit-lbr0": _LENS},
}


def _case(kind: str, convention: str) -> tuple[RecurrentAttrs, dict, dict]:
    """The attributes, the inputs (in the node's layout) and the model options of one grid case."""
    changes, data = CONVENTIONS[convention]
    changes, data = dict(changes), dict(data)
    acts = changes.pop("acts", None)
    if kind != "GRU":
        changes.pop("linear_before_reset", None)
    if kind != "LSTM":
        changes.pop("input_forget", None)
        data.pop("peepholes", None)
    direction = changes.pop("direction", "forward")
    if acts is not None:
        names, alpha, beta = ACTS[kind][acts]
        rep = 2 if direction == "bidirectional" else 1
        changes.update(activations=names * rep, activation_alpha=alpha * rep, activation_beta=beta * rep)
    attrs = RecurrentAttrs(kind, HIDDEN, direction, **changes)
    rng = np.random.default_rng(zlib.crc32(f"{kind}{convention}".encode()))
    dirs, g = attrs.num_directions, GATES[kind]
    d = {"X": rng.standard_normal((SEQ, BATCH, INPUT)), "W": rng.uniform(-0.7, 0.7, (dirs, g * HIDDEN, INPUT)),
         "R": rng.uniform(-0.7, 0.7, (dirs, g * HIDDEN, HIDDEN)), "B": rng.uniform(-0.5, 0.5, (dirs, 2 * g * HIDDEN))}
    if data.get("initial", True):
        d["initial_h"] = rng.standard_normal((dirs, BATCH, HIDDEN))
        if kind == "LSTM":
            d["initial_c"] = rng.standard_normal((dirs, BATCH, HIDDEN))
    if data.get("peepholes"):
        d["P"] = rng.uniform(-0.7, 0.7, (dirs, 3 * HIDDEN))
    d = {k: v.astype(np.float32).astype(np.float64) for k, v in d.items()}
    if "lens" in data:
        d["sequence_lens"] = np.asarray(data["lens"], np.int32)
    if attrs.layout:
        d = {k: np.swapaxes(v, 0, 1) if k in ("X", "initial_h", "initial_c") else v for k, v in d.items()}
    return attrs, d, {"computed": data.get("computed", False), "outputs": data.get("outputs")}


def _reference(attrs: RecurrentAttrs, d: dict, outputs, dtype=np.float64) -> list[np.ndarray]:
    got = run_recurrent(attrs, **{k: d.get(k) for k in INPUTS}, dtype=dtype)
    names = ("Y", "Y_h", "Y_c")
    return [g for n, g in zip(names, got) if outputs is None or n in outputs]


def _int8_model(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "int8.onnx"
        logging.disable(logging.WARNING)  # quantize_dynamic's "consider pre-processing" advice
        try:
            _int8(model, dst, MakeOptions())
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(str(dst))


def _static_int8(model: onnx.ModelProto, d: dict) -> onnx.ModelProto:
    """The one-shot static-int8 form, calibrated on the case's inputs and 16 more draws like them: static int8 holds
    its bound only on inputs its calibration covered (16 random draws alone left a GRU's Y 0.8 off where a value
    past the calibrated range was clipped), which is what a calibration set is for."""
    from forms_models import feeds

    from edge_rnn.deploy._static_int8 import static_int8_graph

    rng = np.random.default_rng(99)
    draws = [{k: (v if k == "sequence_lens" else rng.standard_normal(v.shape).astype(np.float32))
              for k, v in feeds(model, d).items()} for _ in range(16)]
    draws.append(feeds(model, d))
    logging.disable(logging.WARNING)  # quantize_static's "consider pre-processing" advice
    try:
        return static_int8_graph(model, draws)
    finally:
        logging.disable(logging.NOTSET)


def _evaluated(model: onnx.ModelProto, d: dict) -> list[np.ndarray]:
    from forms_models import feeds
    from onnx.reference import ReferenceEvaluator

    with warnings.catch_warnings():  # its activations' overflow warnings on large pre-activations
        warnings.simplefilter("ignore", RuntimeWarning)
        return [np.asarray(a, np.float32) for a in ReferenceEvaluator(model).run(None, feeds(model, d))]


def _made(form: str, model: onnx.ModelProto) -> onnx.ModelProto:
    if form == "decomposed":
        return decompose_recurrent(model)[0]
    if form == "static":
        return static_graph(model)
    if form == "int8":
        return _int8_model(model)
    return model


def _grid_params():
    for kind in GATES:
        for convention in CONVENTIONS:
            if ONLY.get(convention, kind) != kind:
                continue
            for form in ("decomposed", "static", "int8", "static-int8", "onnxruntime", "evaluator"):
                marks = []
                if form == "onnxruntime" and convention in NATIVE_DEPARTS:
                    marks = [pytest.mark.xfail(strict=True, reason=NATIVE_DEPARTS[convention])]
                if form == "evaluator" and convention in EVALUATOR_DEPARTS[kind]:
                    marks = [pytest.mark.xfail(strict=True, reason=f"onnx 1.23's ReferenceEvaluator "
                                                                   f"{EVALUATOR_DEPARTS[kind][convention]}")]
                yield pytest.param(kind, convention, form, marks=marks, id=f"{kind}-{convention}-{form}")


@pytest.mark.parametrize(("kind", "convention", "form"), list(_grid_params()))
def test_grid_against_the_reference(kind, convention, form):
    """One convention, one kind, one form, against the float64 reference: the float32 forms with the verdict (the
    reference run in float32 as the noise), int8 and static-int8 element-wise within TOLERANCE["int8"]; native
    onnxruntime and onnx's
    ReferenceEvaluator too, where they take the case."""
    attrs, d, options = _case(kind, convention)
    model = recurrent_model(attrs, d, **options)
    made = _static_int8(model, d) if form == "static-int8" else _made(form, model)
    ops = {n.op_type for n in all_nodes(made.graph)}
    if form in ("decomposed", "static"):
        assert not ops & {"RNN", "GRU", "LSTM"} and (form == "decomposed" or not ops & RECURRENT), sorted(ops)
    got = _evaluated(model, d) if form == "evaluator" else run_ort(made, d)
    want = _reference(attrs, d, options["outputs"])
    assert len(got) == len(want)
    if form in ("int8", "static-int8"):
        tol = TOLERANCE["int8"]
        assert ops & {"DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "MatMulInteger", "QuantizeLinear"}, sorted(ops)
        assert form == "int8" or not ops & RECURRENT, sorted(ops)
        for k, (g, w) in enumerate(zip(got, want)):
            excess = np.abs(g - w) - (tol.atol + tol.rtol * np.abs(w))
            assert excess.max() <= 0, f"output {k}: max |int8 - reference| {np.abs(g - w).max():.3g} past the bound"
        return
    noise = _reference(attrs, d, options["outputs"], np.float32)
    rows = [judge(convention, form, str(k), g, w, n, TOLERANCE["float32"])
            for k, (g, w, n) in enumerate(zip(got, want, noise))]
    assert all(r.passed for r in rows), "\n".join(r.describe() for r in rows)
