"""Hostile graphs against the forms a recurrent node is rewritten into (the decomposed Scan form, the static
loop-free form, int8): files that came out silently wrong, or crashed with a traceback instead of one
EdgeRnnError line."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_rnn.deploy._decompose import decompose_recurrent  # noqa: E402
from edge_rnn.deploy._static import static_graph  # noqa: E402
from edge_rnn.deploy._variants import MakeOptions, _int8  # noqa: E402
from edge_rnn.errors import EdgeRnnError, ModelFormatError, UnsupportedError  # noqa: E402

F = TensorProto.FLOAT
T, BATCH, IN, H = 4, 2, 2, 3
_RNG = np.random.default_rng(1)
W = _RNG.uniform(-0.7, 0.7, (1, 3 * H, IN)).astype(np.float32)
R = _RNG.uniform(-0.7, 0.7, (1, 3 * H, H)).astype(np.float32)
B = _RNG.uniform(-0.5, 0.5, (1, 6 * H)).astype(np.float32)
X = _RNG.standard_normal((T, BATCH, IN)).astype(np.float32)


def _model(nodes, inits: dict, outputs, opset: int = 14, inputs=None) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs or [helper.make_tensor_value_info("x", F, [T, BATCH, IN])],
                          [helper.make_tensor_value_info(o, F, None) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _run(m: onnx.ModelProto, feeds: dict | None = None) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds or {"x": X})


def _int8_model(model: onnx.ModelProto) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "int8.onnx"
        logging.disable(logging.WARNING)
        try:
            _int8(model, dst, MakeOptions())
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(str(dst))


FORMS = {"decomposed": lambda m: decompose_recurrent(m)[0], "static": static_graph, "int8": _int8_model}
BOUND = {"decomposed": 1e-5, "static": 1e-5, "int8": 5e-2}


def _gru(lbr: int, x: str = "x", **attrs) -> onnx.NodeProto:
    return helper.make_node("GRU", [x, "W", "R", "B"], ["y", "h"], name="rec", hidden_size=H,
                            linear_before_reset=lbr, **attrs)


# ---------------------------------------------------------------------------------------------------------------
# 1. the rewrite's own tensor names, already taken in the file


def _user_scalar(name: str, lbr: int) -> onnx.ModelProto:
    """A GRU, then ``h + k`` where ``k`` is a float scalar initializer named ``name``."""
    return _model([_gru(lbr), helper.make_node("Add", ["h", name], ["out"], name="add")],
                  {"W": W, "R": R, "B": B, name: np.asarray(7.0, np.float32)}, ["out"])


def _generated_names(form: str, lbr: int) -> list[str]:
    made = FORMS[form](_user_scalar("k", lbr))
    names = {t.name for t in made.graph.initializer} | {o for n in made.graph.node for o in n.output}
    return sorted(names - {"W", "R", "B", "k", "x", "y", "h", "out", ""})


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("lbr", [0, 1])
def test_a_name_the_rewrite_would_make_is_already_taken(form, lbr):
    """Every name the form writes, taken beforehand by a float scalar the file adds to the GRU's state: the form
    must compute what the file does. It wrote a second initializer of that name, onnxruntime took the last one
    (the rewrite's 1.0 for the file's 7.0): |error| 6.0 with no error; other names made an invalid graph.
    edge-rnn's own names now keep apart; onnxruntime's tools name theirs without looking (quantize_dynamic's
    ``x_scale`` took the file's with |error| 6.99; the optimiser's ``gemm_input_shape`` failed its load): those
    are refused, one EdgeRnnError line naming the tensor."""
    want = _run(_user_scalar("k", lbr))[0]
    refused = []
    for name in _generated_names(form, lbr):
        try:
            made = FORMS[form](_user_scalar(name, lbr))
        except EdgeRnnError as e:
            assert "\n" not in str(e) and "onnxruntime" in str(e), str(e)
            refused.append(name)
            continue
        got = _run(made)[0]
        assert np.abs(got - want).max() <= BOUND[form], f"{name}: {np.abs(got - want).max():.3g}"
    assert not [n for n in refused if n.startswith(("rec_", "static/"))], refused  # edge-rnn's own: never


def test_a_taken_name_as_a_tensor_between_nodes():
    """A tensor of the file (an Identity's output, fed to the GRU) named as the rewrite names its own."""
    def model(name: str) -> onnx.ModelProto:
        return _model([helper.make_node("Identity", ["x"], [name], name="copy"), _gru(0, x=name)],
                      {"W": W, "R": R, "B": B}, ["h"])

    want = _run(model("xx"))[0]
    for name in _generated_names("decomposed", 0):
        got = _run(decompose_recurrent(model(name))[0])[0]
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# 2. weights whose shapes the node's attributes contradict


def _node_with(kind: str, weights: dict, **attrs) -> onnx.ModelProto:
    slots = ["x", "W", "R", "B" if "B" in weights else ""] + (["", "", "", "P"] if "P" in weights else [])
    node = helper.make_node(kind, slots, ["y", "h"], name="rec", **attrs)
    return _model([node], weights, ["h"])


_W4 = _RNG.uniform(-0.5, 0.5, (1, 4 * H, IN)).astype(np.float32)
_R4 = _RNG.uniform(-0.5, 0.5, (1, 4 * H, H)).astype(np.float32)
_TWO = {k: np.concatenate([v, v]) for k, v in {"W": W, "R": R, "B": B}.items()}
MISSHAPEN = {  # name -> (kind, weights, attributes, the weight the message names)
    "hidden_size-against-R": ("GRU", {"W": W, "R": R, "B": B}, {"hidden_size": 2}, "W"),
    "B-half": ("GRU", {"W": W, "R": R, "B": B[:, :3 * H]}, {"hidden_size": H}, "B"),
    "B-half-lbr1": ("GRU", {"W": W, "R": R, "B": B[:, :3 * H]}, {"hidden_size": H, "linear_before_reset": 1}, "B"),
    "W-rank-2": ("GRU", {"W": W[0], "R": R, "B": B}, {"hidden_size": H}, "W"),
    "R-columns": ("GRU", {"W": W, "R": R[:, :, :2], "B": B}, {"hidden_size": H}, "R"),
    "two-directions-in-forward": ("GRU", _TWO, {"hidden_size": H}, "W"),
    "one-direction-in-bidirectional": ("GRU", {"W": W, "R": R, "B": B},
                                       {"hidden_size": H, "direction": "bidirectional"}, "W"),
    "P-short": ("LSTM", {"W": _W4, "R": _R4, "P": np.zeros((1, H), np.float32)}, {"hidden_size": H}, "P"),
    "W-gates-of-another-kind": ("RNN", {"W": W, "R": R[:, :H]}, {"hidden_size": H}, "W"),
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("case", list(MISSHAPEN))
def test_weights_of_the_wrong_shape_are_refused_naming_them(case, form):
    """onnxruntime refuses each of these files when it runs them; the forms crashed (numpy's ValueError or
    IndexError, onnx's InferenceError), wrote a graph that failed later, or computed one: two directions' weights
    in a forward node took the first without a word. Now one ModelFormatError naming the node and the weight."""
    kind, weights, attrs, named = MISSHAPEN[case]
    model = _node_with(kind, weights, **attrs)
    with pytest.raises(Exception):  # noqa: B017,PT011 - the file is malformed: onnxruntime refuses it somehow
        _run(model)
    with pytest.raises(ModelFormatError, match=rf"{kind} node 'rec'.* {named}: expected shape"):
        FORMS[form](model)


# ---------------------------------------------------------------------------------------------------------------
# 3. a file of an opset before 13 (onnxruntime runs GRU-7, LSTM-7, RNN-7)


def _old_opset_model(opset: int) -> onnx.ModelProto:
    """A GRU (linear_before_reset=0: the general form) then ops whose form changed at 13: Squeeze with its axes
    an attribute, Softmax over the last axis."""
    nodes = [_gru(0), helper.make_node("Squeeze", ["h"], ["h2"], axes=[0], name="sq"),
             helper.make_node("Softmax", ["h2"], ["out"], axis=1, name="soft")]
    return _model(nodes, {"W": W, "R": R, "B": B}, ["out", "y"], opset=opset)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("opset", [7, 9, 12])
def test_a_file_of_an_old_opset_takes_every_form(opset, form):
    """The rewrites write opset-13 operators (Unsqueeze and Split with their axes and sizes as inputs, Slice's
    inputs) into a file that imports opset 7..12: an invalid graph, onnxruntime's raw InvalidGraph from
    decompose_recurrent, onnx's InferenceError from static_graph, and a lifted opset-9 file's int8, static and
    static-int8 variants all refused. The file is converted to opset 13 first (onnx's version converter)."""
    model = _old_opset_model(opset)
    want = _run(model)
    got = _run(FORMS[form](model))
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.abs(g - w).max() <= BOUND[form], np.abs(g - w).max()


# ---------------------------------------------------------------------------------------------------------------
# 4. a recurrent node inside a subgraph (an If branch)


def _gru_in_if() -> onnx.ModelProto:
    def branch(tag: str) -> onnx.GraphProto:
        node = helper.make_node("GRU", ["x", "W", "R", "B"], [f"y{tag}", f"h{tag}"], name=f"rec_{tag}",
                                hidden_size=H, linear_before_reset=0)
        return helper.make_graph([node], tag, [], [helper.make_tensor_value_info(f"h{tag}", F, None)])

    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    node = helper.make_node("If", ["cond"], ["out"], name="if", then_branch=branch("a"), else_branch=branch("b"))
    return _model([node], {"W": W, "R": R, "B": B}, ["out"],
                  inputs=[helper.make_tensor_value_info("x", F, [T, BATCH, IN]), cond])


def test_static_graph_refuses_a_recurrent_node_it_cannot_reach():
    """static_graph rewrites top-level nodes only: it dropped the weights the If's branches read (used nowhere at
    the top), and onnxruntime's loader failed on the graph ("must be topologically sorted"). The static form is for
    NPUs, which take no GRU: one UnsupportedError naming the node left inside the branch."""
    with pytest.raises(UnsupportedError, match=r"GRU node 'rec_[ab]'.*subgraph"):
        static_graph(_gru_in_if())


def test_an_lstm_without_hidden_size_takes_the_general_int8_form():
    """hidden_size is optional in the specification (R's shape says it); onnxruntime's LSTM kernels require it, so
    the int8 variant's DynamicQuantizeLSTM failed to load. The general decomposed form computes it."""
    rng = np.random.default_rng(4)
    w, r = rng.uniform(-0.5, 0.5, (1, 4 * H, IN)), rng.uniform(-0.5, 0.5, (1, 4 * H, H))
    model = _model([helper.make_node("LSTM", ["x", "W", "R"], ["y", "h"], name="rec")],
                   {"W": w.astype(np.float32), "R": r.astype(np.float32)}, ["h"])
    from edge_rnn.harness._onnx_recurrent import RecurrentAttrs, run_recurrent

    want = run_recurrent(RecurrentAttrs("LSTM"), X, w, r)[1]
    got = _run(_int8_model(model))[0]
    assert np.abs(got - want).max() <= BOUND["int8"]


def test_int8_says_which_recurrent_nodes_inside_a_subgraph_it_left_in_float32():
    """The int8 rewrites reach top-level nodes only: a GRU in an If branch stays float32, and the notes say so by
    name rather than nothing (or, with nothing else to quantise, only "nothing was quantised")."""
    from edge_rnn.deploy._int8 import Int8Settings
    from edge_rnn.deploy._variants import int8_graph

    _, _, notes = int8_graph(_gru_in_if(), Int8Settings())
    assert any(n.startswith("2 recurrent node(s) inside a subgraph (If, Loop or Scan body) left in float32: 'rec_")
               for n in notes), notes
