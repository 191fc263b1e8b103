"""A state's own initial value in the contract (``initial``): read, refused when malformed, and where a new stream
starts (and a reset returns to) in the runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.contract import MAX_INITIAL, Contract, StateSpec
from edge_rnn.errors import ModelFormatError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

LSTM = REPO / "tests" / "data" / "lstm_layer.onnx"  # states h0/c0 of shape (2, batch, 6)


def _with_initial(tmp_path, initial: dict[str, np.ndarray]):
    m = onnx.load(str(LSTM))
    meta = {p.key: p.value for p in m.metadata_props}
    d = json.loads(meta["edge_rnn"])
    for s in d["states"]:
        if s["input"] in initial:
            s["initial"] = [float(v) for v in initial[s["input"]].ravel()]
    d["format"] = 2
    onnx.helper.set_model_props(m, {"edge_rnn": json.dumps(d)})
    path = tmp_path / "init.onnx"
    onnx.save(m, str(path))
    return path


def test_round_trip_keeps_every_value():
    row = np.random.default_rng(0).standard_normal(12).astype(np.float32)
    s = StateSpec("h0", "hn", (2, None, 6), 1, "float32", tuple(float(v) for v in row))
    back = Contract.from_json(Contract((), (), (s,)).to_json()).states[0]
    assert back == s
    assert back.initial_row().dtype == np.float32 and back.initial_row().shape == (2, 6)
    np.testing.assert_array_equal(back.initial_row().ravel(), row)  # float32 -> JSON -> float32 is exact


def test_absent_initial_is_not_written():
    s = StateSpec("h0", "hn", (1, None, 3), 1)
    assert "initial" not in Contract((), (), (s,)).to_dict()["states"][0]
    assert s.initial_row() is None


@pytest.mark.parametrize("initial, message", [
    ([0.0] * 5, "expected initial to hold 6 numbers (one stream's row), got 5"),
    ([0.0] * 5 + [float("nan")], "expected initial to hold finite numbers only"),
    ([0.0] * 5 + ["1"], "expected initial to hold finite numbers only"),
    ([0.0] * 5 + [True], "expected initial to hold finite numbers only"),
    ("zeros", "expected initial to be a list of numbers, got str"),
])
def test_malformed_initial_is_refused(initial, message):
    d = {"input": "h0", "output": "hn", "shape": [1, None, 6], "batch_axis": 1, "initial": initial}
    with pytest.raises(ModelFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        StateSpec.from_dict(d)


def test_initial_on_an_integer_state_is_refused():
    with pytest.raises(ModelFormatError, match="only on a float state, got dtype int64"):
        StateSpec("k", "kn", (None, 2), 0, "int64", (1.0, 2.0))


def test_initial_on_a_huge_state_is_refused_before_it_is_read():
    n = MAX_INITIAL + 1
    with pytest.raises(ModelFormatError, match=f"at most {MAX_INITIAL:,} elements per stream, got {n:,}"):
        StateSpec("h0", "hn", (None, n), 0, "float32", (0.0,) * 3)


def test_a_stream_starts_from_the_initial_state_and_reset_returns_to_it(tmp_path):
    from edge_rnn.runtime import StreamingModel

    rng = np.random.default_rng(1)
    h, c = (rng.standard_normal((2, 6)).astype(np.float32) for _ in range(2))
    model = StreamingModel.load(_with_initial(tmp_path, {"h0": h, "c0": c}))
    stream = model.open_stream()
    np.testing.assert_array_equal(stream.state["h0"], h)
    np.testing.assert_array_equal(stream.state["c0"], c)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = model.step(stream, {"x": x})["y"]
    sess = ort.InferenceSession(str(LSTM), providers=["CPUExecutionProvider"])
    want = sess.run(["y"], {"x": x[:, None], "h0": h[:, None], "c0": c[:, None]})[0][:, 0]
    np.testing.assert_array_equal(y, want)
    stream.reset()
    np.testing.assert_array_equal(stream.state["h0"], h)
    zero = model.open_stream(initial_state={"h0": np.zeros_like(h), "c0": np.zeros_like(c)})
    np.testing.assert_array_equal(zero.state["h0"], 0)  # a state given by the caller wins
    again = model.open_stream()  # a freed row is reused: from the initial state again, not what the last held
    stream.close()
    np.testing.assert_array_equal(again.state["c0"], c)


def test_a_contract_with_an_initial_value_is_format_2_and_format_1_refuses_it():
    s = StateSpec("h0", "hn", (1, None, 2), 1, "float32", (0.5, -0.5))
    d = Contract((), (), (s,)).to_dict()
    assert d["format"] == 2  # a format-1 reader refuses it instead of starting from zeros
    assert Contract((), (), (StateSpec("h0", "hn", (1, None, 2), 1),)).to_dict()["format"] == 1
    with pytest.raises(ModelFormatError, match="initial value needs format 2 .* got format 1"):
        Contract.from_dict({**d, "format": 1})
    with pytest.raises(ModelFormatError, match="expected format 1 or 2, got 3 \\(a newer edge-rnn"):
        Contract.from_dict({**d, "format": 3})
