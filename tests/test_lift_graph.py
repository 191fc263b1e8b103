"""lift_model: the state a recurrent ONNX file keeps inside made graph inputs/outputs, checked by streaming.

Each model is built with onnx.helper; the lifted file runs in onnxruntime chunk by chunk, carrying its states,
and equals one pass of the original over the whole sequence (onnxruntime where it runs the original, else the
project's float64 reference of the operator).
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_rnn.contract import Contract  # noqa: E402
from edge_rnn.deploy.lifting._surgery import lift_model, reference_model  # noqa: E402
from edge_rnn.errors import UnsupportedError  # noqa: E402
from edge_rnn.harness._onnx_recurrent import RecurrentAttrs, run_recurrent  # noqa: E402

T, B, IN, H = 7, 2, 3, 4
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
F = TensorProto.FLOAT


def _weights(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = GATES[kind]
    return {"W": rng.uniform(-0.6, 0.6, (1, g * H, IN)).astype(np.float32),
            "R": rng.uniform(-0.6, 0.6, (1, g * H, H)).astype(np.float32),
            "B": rng.uniform(-0.4, 0.4, (1, 2 * g * H)).astype(np.float32)}


def _model(nodes, inputs, outputs, inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _run(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _stream(lifted, x: np.ndarray, cuts: list[int], name: str = "x") -> tuple[dict, dict]:
    """The lifted model run chunk by chunk (``cuts``: chunk ends), its states carried: outputs joined along their
    time axes, and the final states."""
    c = lifted.contract
    spec = next(t for t in c.inputs if t.name == name)
    batch = x.shape[spec.batch_axis]
    states = {}
    for s, ls in zip(c.states, lifted.states):
        init = np.zeros(s.concrete_shape(batch), np.float32)
        if ls.initial is not None:
            init[...] = np.expand_dims(ls.initial, s.batch_axis)
        states[s.input] = init
    outs: dict[str, list] = {}
    start = 0
    for end in cuts:
        chunk = np.take(x, range(start, end), axis=spec.time_axis)
        got = _run(lifted.model, {name: chunk, **states})
        for t in c.outputs:
            outs.setdefault(t.name, []).append(got[t.name])
        states = {s.input: got[s.output] for s in c.states}
        start = end
    joined = {t.name: outs[t.name][-1] if t.time_axis is None else np.concatenate(outs[t.name], axis=t.time_axis)
              for t in c.outputs}
    return joined, {s.output: states[s.input] for s in c.states}


def _close(a, b, tol=1e-5):
    assert np.asarray(a).shape == np.asarray(b).shape
    assert float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) <= tol


def _x(shape=(T, B, IN), seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_lstm_without_initial_state_streams_like_one_pass():
    w = _weights("LSTM")
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=H, name="enc/lstm")
    m = _model([node], [_vi("x", [T, B, IN])], [_vi("y", [T, 1, B, H])], w)
    lifted = lift_model(m)
    assert [(s.input, s.output) for s in lifted.states] == [("enc_lstm.h0", "enc_lstm.hn"),
                                                            ("enc_lstm.c0", "enc_lstm.cn")]
    assert all(s.initial is None for s in lifted.states)
    c = Contract.from_metadata({p.key: p.value for p in lifted.model.metadata_props})
    assert c == lifted.contract and c.streamable and c.source["lifted"] is True
    assert (c.inputs[0].batch_axis, c.inputs[0].time_axis) == (1, 0)
    assert (c.outputs[0].batch_axis, c.outputs[0].time_axis) == (2, 0)
    assert [s.shape for s in c.states] == [(1, None, H)] * 2
    x = _x()
    want = _run(m, {"x": x})["y"]
    for cuts in ([T], [3, T], [1, 2, 6, T]):
        got, _ = _stream(lifted, x, cuts)
        _close(got["y"], want)
    longer = _x((11, 3, IN), seed=5)  # the axes are dynamic now: another length and batch
    got, _ = _stream(lifted, longer, [4, 11])
    ref = run_recurrent(RecurrentAttrs("LSTM", H), longer, w["W"], w["R"], w["B"])
    _close(got["y"], ref[0])


def test_gru_with_constant_initial_state_keeps_it_as_the_default():
    w = _weights("GRU", seed=2)
    h0 = np.broadcast_to(np.linspace(-0.5, 0.5, H, dtype=np.float32), (1, B, H)).copy()
    node = helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "hT"], hidden_size=H,
                            linear_before_reset=1, name="gru")
    m = _model([node], [_vi("x", [T, B, IN])], [_vi("y", [T, 1, B, H]), _vi("hT", [1, B, H])], {**w, "h0": h0})
    lifted = lift_model(m)
    (state,) = lifted.states
    np.testing.assert_array_equal(state.initial, h0[:, 0, :])
    assert "h0" not in {t.name for t in lifted.model.graph.initializer}
    x = _x(seed=3)
    want = _run(m, {"x": x})
    got, final = _stream(lifted, x, [2, 5, T])
    _close(got["y"], want["y"])
    _close(got["hT"], want["hT"])  # an output without a time axis: the last call's
    _close(final["gru.hn"], want["hT"])


def test_rnn_layout_1_is_rewritten_to_run_in_onnxruntime():
    w = _weights("RNN", seed=4)
    node = helper.make_node("RNN", ["x", "W", "R", "B"], ["y", "h"], hidden_size=H, layout=1, name="rnn")
    m = _model([node], [_vi("x", [B, T, IN])], [_vi("y", [B, T, 1, H]), _vi("h", [B, 1, H])], w)
    with pytest.raises(Exception, match="layout == 1"):
        _run(m, {"x": _x((B, T, IN))})
    lifted = lift_model(m)
    assert any("layout=1" in n for n in lifted.notes)
    assert lifted.contract.states[0].shape == (1, None, H) and lifted.contract.states[0].batch_axis == 1
    spec = lifted.contract.inputs[0]
    assert (spec.batch_axis, spec.time_axis) == (0, 1)
    x = _x((B, T, IN), seed=6)
    ref = run_recurrent(RecurrentAttrs("RNN", H, layout=1), x, w["W"], w["R"], w["B"])
    got, final = _stream(lifted, x, [3, 4, T])
    _close(got["y"], ref[0])
    _close(final["rnn.hn"], np.swapaxes(ref[1], 0, 1))


def _scan_lstm(carried: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Scan over time whose body runs an LSTM one step, its h and c carried by the Scan (or reset each step)."""
    w = _weights("LSTM", seed=7)
    init = ["h_in", "c_in"] if carried else ["", ""]
    body_nodes = [
        helper.make_node("Unsqueeze", ["x_t", "zero"], ["x1"]),
        helper.make_node("LSTM", ["x1", "W", "R", "B", "", *init], ["y1", "h_out", "c_out"], hidden_size=H,
                         name="cell"),
        helper.make_node("Squeeze", ["y1", "zero_one"], ["y_t"]),
    ]
    body = helper.make_graph(body_nodes, "body", [_vi("h_in", [1, B, H]), _vi("c_in", [1, B, H]), _vi("x_t", [B, IN])],
                             [_vi("h_out", [1, B, H]), _vi("c_out", [1, B, H]), _vi("y_t", [B, H])])
    scan = helper.make_node("Scan", ["h0", "c0", "x"], ["hT", "cT", "y"], num_scan_inputs=1, body=body, name="scan")
    inits = {**w, "h0": np.zeros((1, B, H), np.float32), "c0": np.zeros((1, B, H), np.float32),
             "zero": np.asarray([0], np.int64), "zero_one": np.asarray([0, 1], np.int64)}
    m = _model([scan], [_vi("x", [T, B, IN])], [_vi("y", [T, B, H])], inits)
    return m, w


def test_lstm_in_a_scan_with_carried_state_lifts_the_scan_state():
    m, w = _scan_lstm()
    lifted = lift_model(m)
    assert [(s.node, s.input, s.output) for s in lifted.states] == [("cell", "cell.h0", "cell.hn"),
                                                                    ("cell", "cell.c0", "cell.cn")]
    x = _x(seed=8)
    want = _run(m, {"x": x})["y"]
    got, final = _stream(lifted, x, [2, 3, T])
    _close(got["y"], want)
    ref = run_recurrent(RecurrentAttrs("LSTM", H), x, w["W"], w["R"], w["B"])
    _close(final["cell.hn"], ref[1])
    _close(final["cell.cn"], ref[2])


def test_lstm_in_a_scan_whose_state_resets_every_step_is_refused():
    m, _ = _scan_lstm(carried=False)
    with pytest.raises(UnsupportedError, match=r"LSTM node 'cell'.*reset every iteration of Scan node 'scan'"):
        lift_model(m)


def _lstm_then(nodes, outputs, *, direction="forward", extra_inits=None, x_shape=(T, B, IN), x_nodes=()):
    w = _weights("LSTM")
    lstm = helper.make_node("LSTM", ["xs" if x_nodes else "x", "W", "R", "B"], ["y"], hidden_size=H,
                            direction=direction, name="lstm")
    if direction == "bidirectional":
        w = {k: np.concatenate([v, v]) for k, v in w.items()}
    return _model([*x_nodes, lstm, *nodes], [_vi("x", list(x_shape))], outputs, {**w, **(extra_inits or {})})


@pytest.mark.parametrize(("direction", "match"), [
    ("bidirectional", r"LSTM node 'lstm': direction=bidirectional looks ahead in time: needs the whole sequence"),
    ("reverse", r"LSTM node 'lstm': direction=reverse looks ahead in time: needs the whole sequence"),
])
def test_a_node_that_looks_ahead_is_refused(direction, match):
    dirs = 2 if direction == "bidirectional" else 1
    m = _lstm_then([], [_vi("y", [T, dirs, B, H])], direction=direction)
    with pytest.raises(UnsupportedError, match=match):
        lift_model(m)


def test_sequence_lens_from_a_graph_input_is_refused():
    w = _weights("GRU")
    node = helper.make_node("GRU", ["x", "W", "R", "B", "lens"], ["y"], hidden_size=H, name="gru")
    m = _model([node], [_vi("x", [T, B, IN]), _vi("lens", [B], TensorProto.INT32)], [_vi("y", [T, 1, B, H])], w)
    with pytest.raises(UnsupportedError, match=r"GRU node 'gru': sequence_lens comes from graph input 'lens'"):
        lift_model(m)


def test_mean_over_time_is_refused():
    pool = helper.make_node("ReduceMean", ["y"], ["m"], axes=[0], keepdims=0, name="pool")
    m = _lstm_then([pool], [_vi("m", [1, B, H])])
    with pytest.raises(UnsupportedError, match=r"ReduceMean node 'pool': reduces over the time axis"):
        lift_model(m)


def test_softmax_over_time_is_refused():
    sm = helper.make_node("Softmax", ["y"], ["p"], axis=0, name="attn")
    m = _lstm_then([sm], [_vi("p", [T, 1, B, H])])
    with pytest.raises(UnsupportedError, match=r"Softmax node 'attn': normalises over the time axis"):
        lift_model(m)


def test_softmax_over_features_is_not():
    sm = helper.make_node("Softmax", ["y"], ["p"], axis=-1, name="probs")
    m = _lstm_then([sm], [_vi("p", [T, 1, B, H])])
    lifted = lift_model(m)
    x = _x(seed=9)
    got, _ = _stream(lifted, x, [4, T])
    _close(got["p"], _run(m, {"x": x})["p"])


@pytest.mark.parametrize(("pads", "match"), [
    ([1, 1], r"Conv node 'conv': looks ahead in time: it convolves 3 frames padded with 1 after the last"),
    ([2, 0], r"Conv node 'conv': a causal kernel of 3 frames \(dilation 1\) needs the previous call's last 2"),
])
def test_a_convolution_over_time_is_refused(pads, match):
    """x (B, C, T) -> Conv over T -> (T, B, C) for the LSTM."""
    conv = helper.make_node("Conv", ["x", "k"], ["cv"], pads=pads, name="conv")
    tr = helper.make_node("Transpose", ["cv"], ["xs"], perm=[2, 0, 1])
    k = np.random.default_rng(0).standard_normal((IN, IN, 3)).astype(np.float32)
    m = _lstm_then([], [_vi("y", [T, 1, B, H])], x_shape=(B, IN, T), x_nodes=(conv, tr), extra_inits={"k": k})
    with pytest.raises(UnsupportedError, match=match):
        lift_model(m)


def test_a_pointwise_convolution_over_time_streams():
    conv = helper.make_node("Conv", ["x", "k"], ["cv"], name="conv")
    tr = helper.make_node("Transpose", ["cv"], ["xs"], perm=[2, 0, 1])
    k = np.random.default_rng(0).standard_normal((IN, IN, 1)).astype(np.float32)
    m = _lstm_then([], [_vi("y", [T, 1, B, H])], x_shape=(B, IN, T), x_nodes=(conv, tr), extra_inits={"k": k})
    lifted = lift_model(m)
    assert (lifted.contract.inputs[0].batch_axis, lifted.contract.inputs[0].time_axis) == (0, 2)
    x = _x((B, IN, T), seed=10)
    got, _ = _stream(lifted, x, [3, T])
    _close(got["y"], _run(m, {"x": x})["y"])


def test_a_pinned_reshape_is_rewritten_where_time_equals_the_hidden_size():
    """T == H: the number alone cannot tell the time entry from the hidden one; the traced axes can."""
    global T
    shape = np.asarray([H, B, H], np.int64)  # (time = 4, batch, hidden = 4), the file's T being 4
    rs = helper.make_node("Reshape", ["y", "shape"], ["z"], name="flat")
    w = _weights("LSTM")
    lstm = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=H, name="lstm")
    m = _model([lstm, rs], [_vi("x", [H, B, IN])], [_vi("z", [H, B, H])], {**w, "shape": shape})
    lifted = lift_model(m)
    note = next(n for n in lifted.notes if "Reshape node 'flat'" in n)
    assert "[4, 2, 4] -> [0, -1, 4]" in note, note
    x = _x((9, 3, IN), seed=11)
    got, _ = _stream(lifted, x, [5, 9])
    ref = run_recurrent(RecurrentAttrs("LSTM", H), x, w["W"], w["R"], w["B"])
    _close(got["z"], ref[0][:, 0])


def test_a_pinned_reshape_that_merges_time_and_batch_beside_a_minus_one_is_refused():
    shape = np.asarray([T * B, -1], np.int64)
    rs = helper.make_node("Reshape", ["y", "shape"], ["z"], name="rows")
    m = _lstm_then([rs], [_vi("z", [T * B, H])], extra_inits={"shape": shape})
    with pytest.raises(UnsupportedError, match=r"Reshape node 'rows': its shape \[14, -1\] pins a merged length 14"):
        lift_model(m)


def test_an_operator_not_analysed_on_the_time_axis_is_noted():
    node = helper.make_node("Einsum", ["y"], ["e"], equation="tdbh->tdbh", name="ein")
    m = _lstm_then([node], [_vi("e", [T, 1, B, H])])
    lifted = lift_model(m, axes={"e": (2, 0)})
    assert any(n.startswith("not analysed: Einsum node 'ein'") for n in lifted.notes)


def test_reference_model_exposes_the_final_state_of_the_original():
    w = _weights("LSTM", seed=12)
    c0 = np.full((1, B, H), 0.25, np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "", "c0"], ["y"], hidden_size=H, name="lstm")
    m = _model([node], [_vi("x", [T, B, IN])], [_vi("y", [T, 1, B, H])], {**w, "c0": c0})
    lifted = lift_model(m)
    ref = reference_model(m, lifted)
    assert [n.op_type for n in ref.graph.node] == ["LSTM", "Identity", "Identity"]
    assert ref.graph.node[0].input[6] == "c0"  # its constant initial state kept
    x = _x((10, B, IN), seed=13)  # another length than the file's: its axes are dynamic too
    one = _run(ref, {"x": x})
    got, final = _stream(lifted, x, [3, 10])
    _close(got["y"], one["y"])
    for name in ("lstm.hn", "lstm.cn"):
        _close(final[name], one[name])


def _loop_gru(trip: str) -> tuple[onnx.ModelProto, dict]:
    """A Loop over time (``trip``: "constant" pins T as the trip count; "shape" reads it from x) whose body takes
    frame ``i`` of the outer x with Gather and runs a GRU one step, its h carried by the Loop."""
    w = _weights("GRU", seed=11)
    body_nodes = [
        helper.make_node("Gather", ["x", "i"], ["x_t"], axis=0),
        helper.make_node("Unsqueeze", ["x_t", "zero"], ["x1"]),
        helper.make_node("GRU", ["x1", "W", "R", "B", "", "h_in"], ["y1", "h_out"], hidden_size=H, name="cell",
                         linear_before_reset=1),
        helper.make_node("Squeeze", ["y1", "zero_one"], ["y_t"]),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(body_nodes, "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
                                                  _vi("h_in", [1, B, H])],
                             [_vi("cond_out", [], TensorProto.BOOL), _vi("h_out", [1, B, H]), _vi("y_t", [B, H])])
    nodes = [helper.make_node("Loop", ["trip", "cond", "h0"], ["hT", "y"], body=body, name="loop")]
    inits = {**w, "h0": np.zeros((1, B, H), np.float32), "zero": np.asarray([0], np.int64),
             "zero_one": np.asarray([0, 1], np.int64), "cond": np.asarray(True)}
    if trip == "constant":
        inits["trip"] = np.asarray(T, np.int64)
    else:
        inits["first"] = np.asarray(0, np.int64)
        nodes[:0] = [helper.make_node("Shape", ["x"], ["x_shape"]),
                     helper.make_node("Gather", ["x_shape", "first"], ["trip"], axis=0)]
    m = _model(nodes, [_vi("x", [T, B, IN])], [_vi("y", [T, B, H])], inits)
    return m, w


@pytest.mark.parametrize("trip", ["constant", "shape"])
def test_gru_in_a_loop_over_time_lifts_the_loop_state(trip):
    m, w = _loop_gru(trip)
    lifted = lift_model(m)
    assert [(s.node, s.input, s.output) for s in lifted.states] == [("cell", "cell.h0", "cell.hn")]
    x = _x(shape=(T + 4, B, IN), seed=12)  # longer than the T the file pinned
    got, final = _stream(lifted, x, [3, 4, 9, T + 4])
    want = run_recurrent(RecurrentAttrs("GRU", H, linear_before_reset=1), x, w["W"], w["R"], w["B"])
    _close(got["y"], want[0][:, 0])
    _close(final["cell.hn"], want[1])


@pytest.mark.parametrize("build", ["scan", "loop-constant", "loop-shape"])
def test_lift_proves_states_carried_by_a_loop(tmp_path, build):
    """The whole lift (surgery, then the proof against the float64 evaluator of the original) on a Scan and on a
    Loop over time: the evaluator's Loop stacks its scan outputs as onnxruntime does (below)."""
    from edge_rnn.deploy.lifting._api import lift

    m = _scan_lstm()[0] if build == "scan" else _loop_gru(build.split("-")[1])[0]
    onnx.save(m, tmp_path / "m.onnx")
    result = lift(tmp_path / "m.onnx", tmp_path / "s.onnx")
    assert result.proof.ok and result.proof.noise == "onnxruntime float32"
    assert {r.tensor for r in result.proof.report.rows} == {"y", *(s.output for s in result.states)}


def test_onnx_reference_evaluator_joins_loop_scan_outputs_instead_of_stacking_them():
    """onnx 1.23's ReferenceEvaluator joins a Loop's (batch, hidden) scan outputs into (T * batch, hidden) where the
    specification and onnxruntime stack them into (T, batch, hidden); the lift's proof uses its own Loop. A strict
    departure: when onnx fixes it, this fails and the override can go."""
    from onnx.reference import ReferenceEvaluator

    m, _ = _loop_gru("constant")
    x = _x(seed=3)
    assert _run(m, {"x": x})["y"].shape == (T, B, H)
    assert ReferenceEvaluator(m).run(None, {"x": x})[0].shape == (T * B, H)


def test_a_pinned_expand_shape_is_rewritten_to_follow_the_input():
    """A bias broadcast with Expand to the converter's (T, B, H), as some exporters write it: the pinned time and
    batch entries become 1 (Expand keeps the other input's size), and the file streams at any length and batch."""
    w = _weights("LSTM", seed=5)
    bias = np.linspace(-1, 1, H, dtype=np.float32)
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=H, name="lstm"),
             helper.make_node("Squeeze", ["y", "one"], ["y3"]),
             helper.make_node("Expand", ["bias", "shape"], ["b3"], name="broadcast"),
             helper.make_node("Add", ["y3", "b3"], ["out"])]
    m = _model(nodes, [_vi("x", [T, B, IN])], [_vi("out", [T, B, H])],
               {**w, "bias": bias, "shape": np.asarray([T, B, H], np.int64), "one": np.asarray([1], np.int64)})
    lifted = lift_model(m)
    assert any("Expand node 'broadcast'" in n for n in lifted.notes), lifted.notes
    x = _x(shape=(T + 5, B + 1, IN), seed=6)
    got, final = _stream(lifted, x, [4, 5, T + 5])
    want = run_recurrent(RecurrentAttrs("LSTM", H), x, w["W"], w["R"], w["B"])
    _close(got["out"], want[0][:, 0] + bias)
    _close(final["lstm.hn"], want[1])
