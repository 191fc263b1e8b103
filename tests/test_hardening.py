"""Issue 9 (hardening), bugs fixed so far: each input gives a clear EdgeRnnError, never a wrong answer or a crash.

Runs without torch: the models are the committed fixtures, rewritten where a test needs a forged contract.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.errors import ModelFormatError, StateError, UnsupportedError
from edge_rnn.harness import Cases
from edge_rnn.runtime import StreamingModel

DATA = REPO / "tests" / "data"
LAYER = DATA / "lstm_layer.onnx"


def contract_of(path) -> dict:
    return StreamingModel.load(path).session.get_modelmeta().custom_metadata_map


def test_bug2_a_contract_output_the_graph_lacks_is_refused_not_answered_wrongly():
    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    d["outputs"][0]["name"] = "logits"  # was: loaded, and step returned one time step instead of all
    with pytest.raises(ModelFormatError, match=r"names \['logits'\], which the graph does not have"):
        StreamingModel.load(LAYER, contract=Contract.from_dict(d))


def test_bug3_a_state_too_large_to_allocate_is_refused_while_reading_the_contract():
    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    d["states"][0]["shape"] = [2, None, 10**12]  # was: open_stream tried to allocate 7.28 TiB
    with pytest.raises(ModelFormatError, match="expected at most 268,435,456 elements per stream"):
        Contract.from_dict(d)


def test_bug5_deeply_nested_json_is_a_format_error_not_a_recursion_error():
    with pytest.raises(ModelFormatError, match="nesting too deep"):
        Contract.from_json("[" * 100_000)
    model = StreamingModel.load(LAYER)
    snap = bytearray(model.open_stream().snapshot())
    head = b"[" * 100_000
    forged = bytes(snap[:16]) + len(head).to_bytes(4, "little") + head
    with pytest.raises(StateError, match="nesting too deep"):
        model.restore(forged)


@pytest.mark.parametrize("kw,match", [
    ({"batch": 0}, "batch: expected an int >= 1, got 0"),
    ({"long_steps": -1}, "long_steps: expected an int >= 0"),
    ({"seq_lens": (1, 0)}, "seq_lens: expected ints >= 1"),
])
def test_bug13_case_sizes_are_checked_before_onnxruntime_sees_them(kw, match):
    """Was: verify(batch_size=0) aborted the whole Python process inside onnxruntime's GRU kernel."""
    with pytest.raises(UnsupportedError, match=match):
        Cases(**kw)


def test_load_options_are_validated():
    import onnxruntime as ort

    with pytest.raises(UnsupportedError, match="optimization: expected one of"):
        StreamingModel.load(LAYER, optimization="max")
    with pytest.raises(UnsupportedError, match="threads: expected an int >= 1"):
        StreamingModel.load(LAYER, threads=-1)
    with pytest.raises(UnsupportedError, match="session_options: expected onnxruntime.SessionOptions, got str"):
        StreamingModel.load(LAYER, session_options="x")
    assert StreamingModel.load(LAYER, session_options=ort.SessionOptions()).states


def test_initial_state_takes_what_step_takes_and_refuses_what_step_refuses():
    from edge_rnn.errors import NonFiniteError

    model = StreamingModel.load(DATA / "gru_cell.onnx")
    s = model.open_stream({"h0": [0.5] * 6})  # a nested list, as step accepts
    assert s.state["h0"].dtype == np.float32 and np.allclose(s.state["h0"], 0.5)
    with pytest.raises(NonFiniteError, match="initial_state 'h0': expected finite values"):
        model.open_stream({"h0": [float("nan")] * 6})
    with pytest.raises(StateError, match="expected a mapping of state name -> array, got list"):
        model.open_stream([np.zeros(6, np.float32)])


def test_a_finite_value_beyond_float32_is_not_called_nan():
    from edge_rnn.errors import ShapeError

    model = StreamingModel.load(DATA / "gru_cell.onnx")
    s = model.open_stream()
    with pytest.raises(ShapeError, match="a finite value beyond it"):
        model.step(s, [1e300, 0.0, 0.0, 0.0])
    assert s.steps == 0
