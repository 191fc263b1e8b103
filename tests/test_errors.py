"""Every error edge-rnn raises on purpose is an EdgeRnnError, and still the built-in type a caller may catch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_rnn.errors import ArgumentError, EdgeRnnError, ShapeError, UnsupportedError
from edge_rnn.gates import gate_blocks, to_onnx_gate_order
from edge_rnn.runtime import SessionConfig, StreamingModel

MODEL = Path(__file__).parent / "data" / "lstm_layer.onnx"


def test_the_formerly_plain_errors_are_edge_rnn_errors_of_the_same_builtin_type():
    with pytest.raises(ShapeError, match="divisible by 4 gates") as e:
        to_onnx_gate_order("lstm", np.zeros((5, 2), np.float32))
    assert isinstance(e.value, ValueError)
    with pytest.raises(ShapeError, match="divisible by 3 gates"):
        gate_blocks("gru", np.zeros((4, 2), np.float32))
    m = StreamingModel.load(MODEL)
    with pytest.raises(UnsupportedError, match="on_error") as e:
        m.step_batch([(m.open_stream(), np.zeros((1, 4), np.float32))], on_error="ignore")
    assert isinstance(e.value, ValueError)
    with pytest.raises(UnsupportedError, match="not both"):
        StreamingModel.load(MODEL, session=SessionConfig(), threads=1)
    with pytest.raises(ArgumentError, match=r"unexpected keyword arguments \['thread'\]") as e:
        StreamingModel.load(MODEL, thread=1)
    assert isinstance(e.value, TypeError) and isinstance(e.value, EdgeRnnError)
