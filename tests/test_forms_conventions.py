"""Which path each native recurrent node takes through the forms, and what each form refuses, with its message.

The decomposed form keeps edge-rnn's own rewrite (emit_direction) for nodes in PyTorch's conventions and sends every
other node through the general emitter (deploy/_onnx_scan.py); int8 keeps its lean GRU/RNN form and
DynamicQuantizeLSTM where they compute the node, and takes the general form elsewhere.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import REPO  # noqa: E402
from forms_models import recurrent_model, run_ort  # noqa: E402
from onnx import helper  # noqa: E402

from edge_rnn.deploy._decompose import all_nodes, decompose_recurrent, pytorch_conventions  # noqa: E402
from edge_rnn.deploy._int8 import Int8Settings  # noqa: E402
from edge_rnn.deploy._int8_recurrent import lstm_departure  # noqa: E402
from edge_rnn.deploy._static import static_form, static_graph  # noqa: E402
from edge_rnn.deploy._variants import MakeOptions, _int8, int8_graph  # noqa: E402
from edge_rnn.errors import UnsupportedError  # noqa: E402
from edge_rnn.harness._onnx_recurrent import RecurrentAttrs, run_recurrent  # noqa: E402
from edge_rnn.harness._verdict import TOLERANCE  # noqa: E402

DATA = REPO / "tests" / "data"
SEQ, BATCH, INPUT, HIDDEN = 5, 3, 4, 3
INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def _data(attrs: RecurrentAttrs, seed: int = 0, **extra) -> dict:
    rng = np.random.default_rng(seed)
    dirs, g = attrs.num_directions, {"RNN": 1, "GRU": 3, "LSTM": 4}[attrs.kind]
    d = {"X": rng.standard_normal((SEQ, BATCH, INPUT)), "W": rng.uniform(-0.7, 0.7, (dirs, g * HIDDEN, INPUT)),
         "R": rng.uniform(-0.7, 0.7, (dirs, g * HIDDEN, HIDDEN)), "B": rng.uniform(-0.5, 0.5, (dirs, 2 * g * HIDDEN)),
         "initial_h": rng.standard_normal((dirs, BATCH, HIDDEN))}
    if attrs.kind == "LSTM":
        d["initial_c"] = rng.standard_normal((dirs, BATCH, HIDDEN))
    d.update(extra)
    return {k: v if k == "sequence_lens" else np.asarray(v, np.float32).astype(np.float64) for k, v in d.items()}


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in all_nodes(model.graph)}


def _max_error(model: onnx.ModelProto, attrs: RecurrentAttrs, d: dict) -> float:
    want = run_recurrent(attrs, **{k: d.get(k) for k in INPUTS})
    return max(float(np.abs(g - w).max()) for g, w in zip(run_ort(model, d), want))


def test_pytorch_convention_nodes_keep_edge_rnns_own_rewrite():
    """The fixtures edge-rnn exported (PyTorch's conventions) take emit_direction: no Clip, no mask, no zeros."""
    for name in ("lstm_layer", "token_gru"):
        model = onnx.load(str(DATA / f"{name}.onnx"))
        assert not any(pytorch_conventions(n) for n in model.graph.node if n.op_type in ("LSTM", "GRU"))
        ops = _ops(decompose_recurrent(model)[0])
        assert "Scan" in ops and not ops & {"Clip", "Less", "ConstantOfShape", "Range"}


def test_computed_weights_are_folded_and_the_nodes_that_computed_them_dropped():
    attrs = RecurrentAttrs("LSTM", HIDDEN, clip=1.0)
    d = _data(attrs, P=np.full((1, 9), 0.2))
    m = recurrent_model(attrs, d, computed=True)
    assert {"Constant", "Transpose", "Concat", "Identity"} <= {n.op_type for n in m.graph.node}
    out = decompose_recurrent(m)[0]
    assert not {"Constant", "Concat"} & {n.op_type for n in out.graph.node}
    assert not {"B_r", "W_t"} & {t.name for t in out.graph.initializer}
    assert _max_error(out, attrs, d) < 1e-5


def test_a_bidirectional_rnn_with_a_different_activation_per_direction_is_computed_as_written():
    """Was: PyTorch's path compared the forward direction's activations only, so ["Tanh", "Relu"] was rewritten as
    tanh in both directions (max |Y| error 1.61 here); now it takes the general form."""
    attrs = RecurrentAttrs("RNN", HIDDEN, "bidirectional", activations=("Tanh", "Relu"))
    assert pytorch_conventions(recurrent_model(attrs, _data(attrs)).graph.node[-1]) == ["activations ['Tanh', 'Relu']"]
    d = _data(attrs, seed=4)
    assert _max_error(decompose_recurrent(recurrent_model(attrs, d))[0], attrs, d) < 1e-5


@pytest.mark.parametrize("opset", [14, 16, 18, 20, 22])
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_opsets_14_to_22(kind, opset):
    attrs = RecurrentAttrs(kind, HIDDEN, "bidirectional", clip=0.8, layout=1)
    d = _data(attrs, seed=opset, sequence_lens=np.asarray([5, 0, 2], np.int32))
    d = {k: np.swapaxes(v, 0, 1) if k in ("X", "initial_h", "initial_c") else v for k, v in d.items()}
    m = recurrent_model(attrs, d, opset=opset)
    for made in (decompose_recurrent(m)[0], static_graph(m)):
        onnx.checker.check_model(made)  # static_graph checks its own in full
        assert _max_error(made, attrs, d) < 1e-5


def test_weights_from_a_graph_input_are_refused_naming_the_node():
    attrs = RecurrentAttrs("GRU", HIDDEN)
    d = _data(attrs)
    m = recurrent_model(attrs, d)
    w = next(t for t in m.graph.initializer if t.name == "W")
    m.graph.input.append(helper.make_tensor_value_info("W_live", onnx.TensorProto.FLOAT, list(w.dims)))
    m.graph.node.insert(0, helper.make_node("Mul", ["W_live", "W"], ["W_scaled"], name="scale"))
    m.graph.node[-1].input[1] = "W_scaled"
    message = (r"^GRU node 'rec': its weight 'W_scaled' is computed at run time \(it is the graph input 'W_live'\); "
               r"the decomposed and int8 forms need constant weights \(initializers, or nodes of constants\)$")
    with pytest.raises(UnsupportedError, match=message):
        decompose_recurrent(m)
    with pytest.raises(UnsupportedError, match=message):
        int8_graph(m, Int8Settings())


def test_a_float64_node_is_refused_not_rewritten_in_float32():
    """Every form computes in float32: a double node rewritten would silently lose its precision."""
    attrs = RecurrentAttrs("LSTM", HIDDEN)
    m = recurrent_model(attrs, _data(attrs))
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float64), t.name))
    message = r"^LSTM node 'rec': expected float32 weights, got float64; edge-rnn's forms compute in float32$"
    with pytest.raises(UnsupportedError, match=message):
        decompose_recurrent(m)
    with pytest.raises(UnsupportedError, match=message):
        static_graph(m)


def test_sequence_lens_is_refused_in_the_static_streaming_form():
    model = onnx.load(str(DATA / "lstm_layer.onnx"))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    model.graph.input.append(helper.make_tensor_value_info("lens", onnx.TensorProto.INT32, [1]))
    lstm.input[4] = "lens"
    with pytest.raises(UnsupportedError, match=r"^LSTM node '.+': a fixed-shape static form streams whole chunks; "
                       r"sequence_lens 'lens' would stop rows inside one: it has no static streaming form$"):
        static_form(model, 2)


def test_static_graph_refuses_an_input_whose_shape_is_not_fixed():
    attrs = RecurrentAttrs("LSTM", HIDDEN)
    m = recurrent_model(attrs, _data(attrs), fixed=False)
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["T", BATCH, INPUT]))
    with pytest.raises(UnsupportedError, match=r"^'X': dimension 0 \(T\) is not fixed: static_graph needs every input "
                       r"shape known \(a streaming model takes static_form\)$"):
        static_graph(m)


def test_a_reverse_scan_has_no_static_streaming_form():
    """A reverse node in a streaming model: the chunk's last step is not the sequence's; refused, not unrolled."""
    model = onnx.load(str(DATA / "lstm_layer.onnx"))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm.attribute.append(helper.make_attribute("direction", "reverse"))
    with pytest.raises(UnsupportedError, match="a Scan that runs backwards .* has no static streaming form"):
        static_form(model, 2)


def _int8_of(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "q.onnx"
        logging.disable(logging.WARNING)
        try:
            notes = _int8(model, dst, MakeOptions())
        finally:
            logging.disable(logging.NOTSET)
        return onnx.load(str(dst)), notes


@pytest.mark.parametrize(("attrs", "extra", "departs"), [
    (RecurrentAttrs("LSTM", HIDDEN, clip=0.5, input_forget=1), {"P": np.full((1, 9), 0.3)}, None),
    (RecurrentAttrs("LSTM", HIDDEN, "reverse"), {"sequence_lens": np.asarray([5, 2, 3], np.int32)},
     "sequence_lens with an initial state"),
    (RecurrentAttrs("LSTM", HIDDEN, activations=("Sigmoid", "Affine", "Tanh")), {}, "activations ['affine']"),
    (RecurrentAttrs("LSTM", HIDDEN, layout=1), {}, "layout=1"),
], ids=["peepholes-clip-input-forget", "sequence-lens", "affine", "layout1"])
def test_int8_lstm_takes_dynamic_quantize_lstm_only_where_it_computes_the_node(attrs, extra, departs):
    """DynamicQuantizeLSTM computes peepholes, clip and input_forget as the operator does; it takes layout=1 as
    layout 0, zeroes Y_h of a row of length 0 and defaults Affine's alpha/beta to 0: those go through the general
    decomposed form. Both stay within the int8 bound of the float64 reference."""
    d = _data(attrs, seed=2, **extra)
    if attrs.layout:
        d = {k: np.swapaxes(v, 0, 1) if k in ("X", "initial_h", "initial_c") else v for k, v in d.items()}
    m = recurrent_model(attrs, d)
    reason = lstm_departure(m.graph.node[-1])
    assert (reason is None) if departs is None else departs in reason
    q, notes = _int8_of(m)
    ops = _ops(q)
    assert ("DynamicQuantizeLSTM" in ops) == (departs is None)
    assert departs is None or any("general decomposed form" in n for n in notes)
    tol = TOLERANCE["int8"]
    want = run_recurrent(attrs, **{k: d.get(k) for k in INPUTS})
    for g, w in zip(run_ort(q, d), want):
        assert np.all(np.abs(g - w) <= tol.atol + tol.rtol * np.abs(w))


def test_int8_of_the_general_form_quantises_the_products_inside_the_scan():
    """quantize_dynamic (EnableSubgraph) reaches the recurrent product in the Scan body, not only the input one."""
    attrs = RecurrentAttrs("GRU", HIDDEN, linear_before_reset=0)
    q, _ = _int8_of(recurrent_model(attrs, _data(attrs)))
    scan = next(n for n in q.graph.node if n.op_type == "Scan")
    body = {n.op_type for n in helper.get_attribute_value(scan.attribute[0]).node} if scan.attribute[0].name == \
        "body" else {n.op_type for a in scan.attribute if a.name == "body" for n in a.g.node}
    assert body & {"DynamicQuantizeMatMul", "MatMulInteger"} and "MatMul" not in body, sorted(body)


def test_the_static_streaming_form_of_a_model_in_other_conventions_streams_as_the_native_file():
    """An edge-rnn streaming model whose LSTM uses clip, input_forget and other activations (the general form):
    its static form, chunk by chunk with the state carried, equals the native file's one pass."""
    from edge_rnn.runtime import StreamingModel, run_sequence

    model = onnx.load(str(DATA / "lstm_layer.onnx"))
    for lstm in (n for n in model.graph.node if n.op_type == "LSTM"):
        lstm.attribute.extend([helper.make_attribute("clip", 0.6), helper.make_attribute("input_forget", 1),
                               helper.make_attribute("activations", ["HardSigmoid", "Tanh", "Softsign"] * 1)])
    static = static_form(model, 2)
    assert not _ops(static) & {"LSTM", "Scan", "Loop"}
    x = np.load(DATA / "expected.npz")["lstm_layer.x"][:22]
    a, b = StreamingModel.load(model.SerializeToString()), StreamingModel.load(static.SerializeToString())
    ya, yb = run_sequence(a, a.open_stream(), x, chunk=22), run_sequence(b, b.open_stream(), x, chunk=2)
    for k in ya:
        np.testing.assert_allclose(yb[k], ya[k], atol=1e-5, err_msg=k)
