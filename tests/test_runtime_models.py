"""Stateful ONNX models edge-rnn did not write: state_map, pair detection, constants; and no torch."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")  # needs onnx (to write test graphs): skipped where only the runtime is installed

import subprocess
import sys

import numpy as np
import onnx
from conftest import batch_of_one_model
from onnx import TensorProto, helper, numpy_helper

from edge_rnn.errors import ModelFormatError
from edge_rnn.runtime import ForeignModel, SessionConfig, StreamingModel, detect_state_pairs

F = TensorProto.FLOAT


def vad_like(tmp_path, state_in="state", state_out="stateN", extra_outputs=()):
    """A silero-VAD-shaped toy: input (batch, 4), state (2, batch, 3), sr scalar -> output (batch, 1), new state.

    new_state = tanh(state + input @ W * sr / 16000); output = sum(new_state[0]).
    """
    w = numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "W")
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=F),
        helper.make_node("Div", ["srf", "k16000"], ["scale"]),
        helper.make_node("Mul", ["xw", "scale"], ["xws"]),
        helper.make_node("Add", [state_in, "xws"], ["pre"]),  # (2, B, 3) + (B, 3) broadcasts
        helper.make_node("Tanh", ["pre"], [state_out]),
        helper.make_node("Gather", [state_out, "zero"], ["first"], axis=0),
        helper.make_node("ReduceSum", ["first", "axes1"], ["output"], keepdims=1),
    ]
    inits = [w, numpy_helper.from_array(np.array(16000, np.float32), "k16000"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "axes1")]
    outputs = [helper.make_tensor_value_info("output", F, ["batch", 1]),
               helper.make_tensor_value_info(state_out, F, [2, "batch", 3])]
    for name in extra_outputs:
        nodes.append(helper.make_node("Identity", [state_out], [name]))
        outputs.append(helper.make_tensor_value_info(name, F, [2, "batch", 3]))
    g = helper.make_graph(
        nodes, "vad_like",
        [helper.make_tensor_value_info("input", F, ["batch", 4]),
         helper.make_tensor_value_info(state_in, F, [2, "batch", 3]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        outputs, inits)
    path = tmp_path / f"{state_in}.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def reference(xs, sr=16000):
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    s = np.zeros((2, 3), np.float32)
    outs = []
    for x in xs:
        s = np.tanh(s + (x @ w) * (sr / 16000))
        outs.append(s[0].sum(keepdims=True))
    return np.stack(outs), s


@pytest.mark.parametrize("pair", [("state", "stateN"), ("h0", "hn"), ("rnn_in", "rnn_out"), ("past_h", "present_h")])
def test_common_pairs_are_detected_and_constants_fed(tmp_path, pair):
    path = vad_like(tmp_path, *pair)
    model = StreamingModel.load(path, foreign=ForeignModel(constants={"sr": np.array(16000)}))
    assert [(s.input, s.output, s.shape, s.batch_axis) for s in model.states] == [(pair[0], pair[1], (2, None, 3), 1)]
    assert [p.name for p in model.inputs] == ["input"] and [p.name for p in model.outputs] == ["output"]
    xs = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    s = model.open_stream()
    got = np.stack([model.step(s, x)["output"] for x in xs])
    want, state = reference(xs)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(s.state[pair[0]], state, atol=1e-6)
    # batching works the same on a model without the contract
    a, b = model.open_stream(), model.open_stream()
    res = model.step_batch([(a, xs[0]), (b, xs[1])])
    np.testing.assert_allclose(res[1]["output"], reference(xs[1:2])[0][0], atol=1e-6)


def test_explicit_state_map_and_ambiguity(tmp_path):
    path = vad_like(tmp_path, "state", "stateN", extra_outputs=("state_out",))
    with pytest.raises(ModelFormatError, match=r"state -> \['stateN', 'state_out'\].*state_map"):
        StreamingModel.load(path, foreign=ForeignModel(constants={"sr": np.array(8000)}))
    model = StreamingModel.load(path, foreign=ForeignModel(state_map={"state": "stateN"},
                                                           constants={"sr": np.array(8000)}))
    assert [p.name for p in model.outputs] == ["output", "state_out"]
    xs = np.ones((3, 4), np.float32)
    s = model.open_stream()
    got = np.stack([model.step(s, x)["output"] for x in xs])
    np.testing.assert_allclose(got, reference(xs, sr=8000)[0], atol=1e-6)


def test_missing_pairs_constants_and_axes_are_clear_errors(tmp_path):
    path = vad_like(tmp_path, "memory", "memory_next")
    with pytest.raises(ModelFormatError, match=r"no state pairs detected among inputs \['input', 'memory'\]"):
        StreamingModel.load(path, foreign=ForeignModel(constants={"sr": np.array(16000)}))
    with pytest.raises(ModelFormatError, match=r"constants \['rate'\]: expected names of model inputs"):
        StreamingModel.load(path, foreign=ForeignModel(constants={"rate": 1}))
    with pytest.raises(ModelFormatError, match=r"state_map \{'memory': 'nope'\}"):
        StreamingModel.load(path, foreign=ForeignModel(state_map={"memory": "nope"}, constants={"sr": np.array(16000)}))
    with pytest.raises(ModelFormatError, match=r"expected time_axis in 0..1 \(rank 2\), got 5"):
        StreamingModel.load(path, foreign=ForeignModel(state_map={"memory": "memory_next"}, constants={"sr": 1},
                                                       time_axis=5))
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelFormatError, match="expected an ONNX model, could not parse it"):
        StreamingModel.load(tmp_path / "junk.onnx")
    with pytest.raises(ModelFormatError, match="no such file"):
        StreamingModel.load(tmp_path / "missing.onnx")


def test_detect_state_pairs_rules():
    shape = (1, None, 4)
    assert detect_state_pairs({"x": (None, 3), "h0": shape, "c0": shape},
                              {"y": (None, 3), "hn": shape, "cn": shape}) == {"h0": "hn", "c0": "cn"}
    assert detect_state_pairs({"past_key": shape}, {"present_key": shape}) == {"past_key": "present_key"}
    assert detect_state_pairs({"cache_in": shape}, {"cache_out": shape}) == {"cache_in": "cache_out"}
    with pytest.raises(ModelFormatError, match="could not tell the state pairs apart"):
        detect_state_pairs({"h0": shape, "h": shape}, {"hn": shape, "h0N": shape, "hN": shape})


BLOCKED_RUN = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx'):
            raise ImportError(name + ' is blocked')
sys.meta_path.insert(0, _Block())
import numpy as np
from edge_rnn.runtime import SessionConfig, StreamingModel
m = StreamingModel.load(sys.argv[1], session=SessionConfig(threads=1))
x = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
s = m.open_stream()
a = np.concatenate([m.step(s, x[:5])['y'], m.step(s, x[5:])['y']])
b = m.step(m.open_stream(), x)['y']
assert np.abs(a - b).max() <= 1e-6
outs = m.step_batch([(m.open_stream(), x[:3]), (m.open_stream(), x[:3])])
assert len(outs) == 2
snap = s.snapshot(); m.restore(snap)
assert not any(k.split('.')[0] in ('torch', 'onnx') for k in sys.modules)
print('ok', a.shape)
"""


def test_runtime_runs_with_torch_and_onnx_unimportable(tmp_path):
    torch = pytest.importorskip("torch")  # it exports the model it then runs without torch
    import edge_rnn

    torch.manual_seed(0)
    edge_rnn.export(torch.nn.LSTM(5, 6, num_layers=2).eval(), tmp_path / "m.onnx", verify_parity=False)
    r = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(tmp_path / "m.onnx")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok (12, 6)"


def test_constants_are_checked_at_load(tmp_path):
    path = vad_like(tmp_path)
    with pytest.raises(ModelFormatError, match=r"constant 'sr': expected shape \[\], got \(2,\)"):
        StreamingModel.load(path, foreign=ForeignModel(constants={"sr": np.array([1, 2])}))
    with pytest.raises(ModelFormatError, match="constant 'sr': expected a tensor\\(int64\\) value"):
        StreamingModel.load(path, foreign=ForeignModel(constants={"sr": "abc"}))


def test_model_with_batch_fixed_at_one_steps_streams_one_call_each(tmp_path):
    g = helper.make_graph(
        [helper.make_node("Add", ["h0", "x"], ["s"]), helper.make_node("Tanh", ["s"], ["hn"]),
         helper.make_node("Identity", ["hn"], ["y"])],
        "fixed", [helper.make_tensor_value_info("x", F, [1, 3]), helper.make_tensor_value_info("h0", F, [1, 3])],
        [helper.make_tensor_value_info("y", F, [1, 3]), helper.make_tensor_value_info("hn", F, [1, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fixed.onnx")
    model = StreamingModel.load(tmp_path / "fixed.onnx", foreign=ForeignModel(state_batch_axis=0))
    a, b, c = model.open_stream(), model.open_stream(), model.open_stream()
    xa, xb = np.full(3, 0.5, np.float32), np.full(3, -1.0, np.float32)
    got = model.step_batch([(a, xa), (b, xb)])
    np.testing.assert_allclose(got[1]["y"], model.step(c, xb)["y"], atol=1e-7)
    np.testing.assert_allclose(got[0]["y"], np.tanh(xa), atol=1e-6)


def test_onnxruntime_failure_is_an_edge_rnn_error_run_once_and_no_stream_advances(tmp_path):
    """A graph that only takes a batch of 1 (a Reshape to (1, 3)) although its batch axis is dynamic."""
    from edge_rnn.errors import InferenceError

    batch_of_one_model(tmp_path / "r.onnx")
    model = StreamingModel.load(tmp_path / "r.onnx", foreign=ForeignModel(state_batch_axis=0))
    a, b = model.open_stream(), model.open_stream()
    x = np.ones(3, np.float32)
    calls = []
    real = model.session.run
    model.session.run = lambda *args: calls.append(1) or real(*args)  # counts the public path's calls
    with pytest.raises(InferenceError, match="onnxruntime failed to run .* no stream in this call advanced"):
        model.step_batch([(a, x), (b, x)])
    assert a.steps == b.steps == 0 and not np.any(a.state["h0"]) and calls == []  # run once, on the fast path
    out = model.step_batch([(a, x), (b, x)], on_error="isolate")  # one call each: both fine alone
    assert a.steps == b.steps == 1 and np.allclose(out[0]["y"], np.tanh(1.0))


def test_load_never_changes_the_callers_session_options_and_takes_a_contract(tmp_path):
    import onnxruntime as ort

    from edge_rnn.contract import Contract, StateSpec, TensorSpec

    path = vad_like(tmp_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    StreamingModel.load(path, session=SessionConfig(session_options=so),
                        foreign=ForeignModel(constants={"sr": np.array(16000)}))
    assert so.intra_op_num_threads == 3 and so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with pytest.raises(ValueError, match="set threads and the optimisation level on it"):
        StreamingModel.load(path, session=SessionConfig(session_options=so, threads=1))
    g = helper.make_graph(
        [helper.make_node("Add", ["mem", "x"], ["s"]), helper.make_node("Tanh", ["s"], ["mem_next"]),
         helper.make_node("Identity", ["mem_next"], ["out"])],
        "odd", [helper.make_tensor_value_info("x", F, ["b", 3]), helper.make_tensor_value_info("mem", F, ["b", 3])],
        [helper.make_tensor_value_info("out", F, ["b", 3]), helper.make_tensor_value_info("mem_next", F, ["b", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "odd.onnx")
    contract = Contract(inputs=(TensorSpec("x", 0),), outputs=(TensorSpec("out", 0),),
                        states=(StateSpec("mem", "mem_next", (None, 3), 0),))
    model = StreamingModel.load(tmp_path / "odd.onnx", contract=contract)  # names no rule would pair
    s = model.open_stream()
    model.step(s, np.ones(3, np.float32))
    assert np.allclose(model.step(s, np.zeros(3, np.float32))["out"], np.tanh(np.tanh(1.0)))
