"""Hostile files against ``edge-rnn lift``: graphs that would stream wrongly yet pass the random proof, and
malformed files that crashed with a traceback instead of one ``Error:`` line."""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cli_errors import invoke, one_line_error  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edge_rnn.deploy.lifting._api import lift  # noqa: E402
from edge_rnn.deploy.lifting._surgery import lift_model  # noqa: E402
from edge_rnn.errors import ModelFormatError, UnsupportedError  # noqa: E402
from edge_rnn.harness import Cases  # noqa: E402

T, B, IN, H = 7, 2, 3, 4
_QUICK = Cases(batch=2, seq_lens=(1, 7), chunked_len=9, long_steps=0, chunk_max=4, long_chunk_max=4)
F = TensorProto.FLOAT


def _lstm_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W": rng.uniform(-0.6, 0.6, (1, 4 * H, IN)).astype(np.float32),
            "R": rng.uniform(-0.6, 0.6, (1, 4 * H, H)).astype(np.float32),
            "B": rng.uniform(-0.4, 0.4, (1, 8 * H)).astype(np.float32)}


def _model(nodes, inputs, outputs, inits: dict, opset: int = 17, check: bool = True) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if check:
        onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _lstm(outputs=("y",), **attrs):
    return helper.make_node("LSTM", ["x", "W", "R", "B"], list(outputs), name="lstm", **({"hidden_size": H} | attrs))


def _time_threshold() -> onnx.ModelProto:
    """``Where(time length > 1000, 0, y)``: the same as y on every sequence the proof tries (<= 600 steps)."""
    nodes = [_lstm(), helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["t"], axis=0, name="time_len"),
             helper.make_node("Greater", ["t", "thr"], ["long"], name="is_long"),
             helper.make_node("Where", ["long", "zf", "y"], ["out"], name="gate")]
    inits = {**_lstm_weights(), "zero": np.array(0, np.int64), "thr": np.array(1000, np.int64),
             "zf": np.zeros((), np.float32)}
    return _model(nodes, [_vi("x", ["T", "B", IN])], [_vi("out", ["T", 1, "B", H])], inits)


def _final_state_leak() -> onnx.ModelProto:
    """``y + 1000 * Relu(Y_h - 0.75)``: Y_h (the state after the LAST step) added to every step, zero on the
    proof's random inputs, not on an input whose last frame is large."""
    nodes = [_lstm(("y", "yh")), helper.make_node("Sub", ["yh", "thr"], ["d"]),
             helper.make_node("Relu", ["d"], ["r"]), helper.make_node("Mul", ["r", "big"], ["rb"]),
             helper.make_node("Add", ["y", "rb"], ["out"], name="leak")]
    inits = {**_lstm_weights(), "thr": np.array(0.75, np.float32), "big": np.array(1000, np.float32)}
    return _model(nodes, [_vi("x", ["T", "B", IN])], [_vi("out", ["T", 1, "B", H])], inits)


def test_a_gate_on_the_time_length_is_refused(tmp_path):
    onnx.save(_time_threshold(), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedError, match=r"Where node 'gate': uses the time length read by Shape node "
                                               r"'shape'"):
        lift(tmp_path / "m.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_the_final_state_added_to_every_step_is_refused():
    """Lifted, it passed the proof yet streamed 11.6 away from one pass on an input whose last frame is large."""
    with pytest.raises(UnsupportedError, match=r"Add node 'leak': uses the Y_h output of LSTM node 'lstm'"):
        lift_model(_final_state_leak())


def test_positions_from_a_range_over_the_time_length_are_refused():
    nodes = [_lstm(), helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["t"], axis=0),
             helper.make_node("Range", ["zero", "t", "one"], ["idx"], name="idx"),
             helper.make_node("Cast", ["idx"], ["idxf"], to=F),
             helper.make_node("Unsqueeze", ["idxf", "axes"], ["pos"]),
             helper.make_node("Mul", ["y", "pos"], ["out"], name="positions")]
    inits = {**_lstm_weights(), "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
             "axes": np.array([1, 2, 3], np.int64)}
    m = _model(nodes, [_vi("x", ["T", "B", IN])], [_vi("out", ["T", 1, "B", H])], inits)
    with pytest.raises(UnsupportedError, match=r"Range node 'idx': uses the time length read by Shape node"):
        lift_model(m)


def test_the_batch_size_and_the_time_length_as_shapes_still_lift():
    """Shape -> Gather -> Concat into a Reshape (a shape, not a value) is what exporters write: not refused."""
    nodes = [_lstm(), helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "tb"], ["t_b"], axis=0),
             helper.make_node("Concat", ["t_b", "hid"], ["shape3"], axis=0),
             helper.make_node("Reshape", ["y", "shape3"], ["out"], name="flat"),
             helper.make_node("Gather", ["s", "one"], ["b"], axis=0),
             helper.make_node("Cast", ["b"], ["bf"], to=F),
             helper.make_node("Div", ["out", "bf"], ["scaled"], name="per_batch")]
    inits = {**_lstm_weights(), "tb": np.array([0, 1], np.int64), "hid": np.array([H], np.int64),
             "one": np.array(1, np.int64)}
    m = _model(nodes, [_vi("x", ["T", "B", IN])], [_vi("scaled", ["T", "B", H])], inits)
    lifted = lift_model(m, axes={"scaled": (1, 0)})  # a Reshape to a computed shape: its axes given
    assert [s.input for s in lifted.states] == ["lstm.h0", "lstm.c0"]


def test_y_h_as_an_output_of_its_own_still_lifts():
    m = _model([_lstm(("y", "yh"))], [_vi("x", ["T", "B", IN])], [_vi("y", ["T", 1, "B", H]), _vi("yh", [1, "B", H])],
               _lstm_weights())
    assert lift_model(m).contract.outputs[1].time_axis is None


# --- malformed files: one Error line, never a traceback -------------------------------------------------------

def _unchecked_lstm(out_shape=("T", 1, "B", H), **attrs) -> onnx.ModelProto:
    return _model([_lstm(**attrs)], [_vi("x", ["T", "B", IN])], [_vi("y", out_shape)], _lstm_weights(), check=False)


@pytest.mark.parametrize(("name", "build", "match"), [
    ("output without a shape", lambda: _unchecked_lstm(None), "not a valid ONNX model"),
    ("hidden_size against its weights", lambda: _unchecked_lstm(hidden_size=100_000), "not a valid ONNX model"),
])
def test_an_invalid_file_is_one_error_line(tmp_path, name, build, match):
    onnx.save(build(), tmp_path / "m.onnx")
    with pytest.raises(ModelFormatError, match=match):
        lift(tmp_path / "m.onnx", tmp_path / "out.onnx")
    r = invoke("lift", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx")
    one_line_error(r, match)
    r = invoke("inspect", tmp_path / "m.onnx")
    assert "Traceback" not in r.output and "lift:" in r.output, r.output


def test_external_data_shorter_or_longer_than_its_tensor_is_one_error_line(tmp_path):
    from onnx.external_data_helper import set_external_data

    m = _unchecked_lstm()
    t = next(t for t in m.graph.initializer if t.name == "W")
    set_external_data(t, location="w.bin", offset=0, length=4096)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    (tmp_path / "w.bin").write_bytes(b"\0" * 4096)  # 1024 floats for a (1, 16, 3) tensor
    onnx.save(m, tmp_path / "m.onnx")
    with pytest.raises(ModelFormatError, match="m.onnx"):
        lift(tmp_path / "m.onnx", tmp_path / "out.onnx")
    one_line_error(invoke("lift", tmp_path / "m.onnx", "-o", tmp_path / "out.onnx"), "m.onnx")


# --- hostile use -------------------------------------------------------------------------------------------------

def _plain_lstm() -> onnx.ModelProto:
    return _model([_lstm()], [_vi("x", ["T", "B", IN])], [_vi("y", ["T", 1, "B", H])], _lstm_weights())


def test_an_output_hard_linked_to_the_model_is_refused_and_the_model_kept(tmp_path):
    onnx.save(_plain_lstm(), tmp_path / "m.onnx")
    (tmp_path / "link.onnx").hardlink_to(tmp_path / "m.onnx")
    before = (tmp_path / "m.onnx").read_bytes()
    one_line_error(invoke("lift", tmp_path / "m.onnx", "-o", tmp_path / "link.onnx", "--long-steps", 0),
                   "would overwrite the model")
    assert (tmp_path / "m.onnx").read_bytes() == before


def test_a_lifted_file_lifted_again_keeps_its_states_and_is_proved(tmp_path):
    """Its states are graph inputs already: the original one pass is fed them too (it failed: 'Unable to find
    input lstm.h0')."""
    onnx.save(_plain_lstm(), tmp_path / "m.onnx")
    lift(tmp_path / "m.onnx", tmp_path / "once.onnx")
    again = lift(tmp_path / "once.onnx", tmp_path / "twice.onnx")
    assert again.proof.ok and [s.input for s in again.states] == ["lstm.h0", "lstm.c0"]


def test_a_lifted_file_lifted_again_keeps_the_initial_state_it_recorded(tmp_path):
    """A constant initial state becomes the contract's ``initial``; lifting the lifted file must not reset the
    streams it serves to zeros."""
    h0 = np.full((1, 1, H), 0.5, np.float32)
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0"], ["y"], name="lstm", hidden_size=H)
    m = _model([node], [_vi("x", ["T", "B", IN])], [_vi("y", ["T", 1, "B", H])], {**_lstm_weights(), "h0": h0})
    onnx.save(m, tmp_path / "m.onnx")
    once = lift(tmp_path / "m.onnx", tmp_path / "once.onnx", cases=_QUICK)
    again = lift(tmp_path / "once.onnx", tmp_path / "twice.onnx", cases=_QUICK)
    assert [s.initial for s in again.contract.states] == [s.initial for s in once.contract.states]
    assert again.contract.states[0].initial == (0.5,) * H


# --- a forged contract ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("dtype", "value"), [("float32", 1e39), ("float16", 1e6)])
def test_a_contract_initial_that_overflows_its_dtype_is_refused(dtype, value):
    """Finite as JSON, infinite as the state's dtype: every stream would start from inf."""
    from edge_rnn.contract import StateSpec

    with pytest.raises(ModelFormatError, match=f"finite numbers in {dtype}"):
        StateSpec("h0", "hn", (1, None, H), 1, dtype, initial=(value,) * H)


@pytest.mark.parametrize(("attr", "value", "message"), [
    ("clip", -1.0, "clip: expected a positive threshold or None, got -1.0"),
    ("clip", float("nan"), "clip: expected a positive threshold or None, got nan"),
    ("direction", "sideways", "direction: expected forward, reverse or bidirectional, got 'sideways'"),
    ("activations", ["Sigmoid", "Tanh", "Tanh", "Tanh"], "activations: expected 3 names, got 4"),
    ("activations", ["Sigmoid", "Foo", "Tanh"], "activations: expected names from the ONNX specification, got 'Foo'"),
])
def test_attributes_out_of_the_specification_are_one_line_naming_the_node(tmp_path, attr, value, message):
    """Refused before the surgery, as the specification says, not by onnxruntime loading a temporary file (which
    quoted its path and C++ text); the forms refuse them the same way."""
    from third_party_graphs import peephole_lstm

    from edge_rnn.deploy import decompose_recurrent

    m = peephole_lstm()
    n = m.graph.node[0]
    kept = [a for a in n.attribute if a.name != attr]
    del n.attribute[:]
    n.attribute.extend([*kept, helper.make_attribute(attr, value)])
    onnx.save(m, tmp_path / "bad.onnx")
    want = re.escape(f"LSTM node 'lstm_1': recurrent attribute {message}")
    with pytest.raises(ModelFormatError, match=want):
        lift(tmp_path / "bad.onnx", tmp_path / "s.onnx")
    with pytest.raises(ModelFormatError, match=want):
        decompose_recurrent(m)
    assert not (tmp_path / "s.onnx").exists()
