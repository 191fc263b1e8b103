"""Shared helpers: small recurrent modules over the whole option space."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests are small; one thread each keeps them fast and deterministic on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # the torch-free subset: nothing to set
        return
    torch.set_num_threads(1)


# name -> (arch, kwargs) covering every architecture variant edge-rnn exports
ARCHS = {
    "rnn_tanh": ("rnn", {}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
    "lstm": ("lstm", {}),
    "lstm_proj": ("lstm", {"proj_size": 3}),
    "gru": ("gru", {}),
}


def batch_of_one_model(path: Path) -> Path:
    """h' = tanh(h + x) behind a Reshape to (1, 3): a graph whose batch axis is dynamic but that only runs a
    batch of one, so onnxruntime itself fails on a batched call (needs onnx; written to ``path``)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "one_by_three"], ["x1"]), helper.make_node("Add", ["h0", "x1"], ["s"]),
         helper.make_node("Tanh", ["s"], ["hn"]), helper.make_node("Identity", ["hn"], ["y"])],
        "reshape", [helper.make_tensor_value_info("x", f, ["b", 3]), helper.make_tensor_value_info("h0", f, ["b", 3])],
        [helper.make_tensor_value_info("y", f, ["b", 3]), helper.make_tensor_value_info("hn", f, ["b", 3])],
        [numpy_helper.from_array(np.array([1, 3], np.int64), "one_by_three")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
