"""Three recurrent ONNX files as other tools write them, built with onnx.helper (small: nothing large committed).

- :func:`keras_gru`: what tf2onnx writes for a Keras ``GRU(reset_after=False)`` (``linear_before_reset=0``) with an
  old Keras' ``hard_sigmoid`` recurrent activation, batch-major (``layout=1``), batch and time pinned by the
  example it was converted with, the time length baked into the ``Reshape`` after it, then a ``Dense`` + sigmoid.
- :func:`peephole_lstm`: a vendor zoo's LSTM with peepholes and ``clip``, time-major, its initial state a constant
  (not zeros) in the file, then a projection.
- :func:`torch_lstm`: what ``torch.onnx.export`` (TorchScript) writes for ``nn.LSTM(batch_first=True,
  num_layers=2)`` called without a state, then ``nn.Linear``: the zero initial states shaped from the input at run
  time (``Shape -> Gather -> Concat -> ConstantOfShape -> Slice``), the node names and layout of a real export.

Each returns the model; the one-pass outputs are what the tests compare a lifted, packaged and served stream with.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

__all__ = ["keras_gru", "peephole_lstm", "torch_lstm", "GRAPHS"]


def _t(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 0.4) -> onnx.TensorProto:
    return nh.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)


def _uniform(rng: np.random.Generator, name: str, shape: tuple[int, ...], hidden: int) -> onnx.TensorProto:
    """PyTorch's initialisation of a recurrent layer's weights: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
    k = 1 / np.sqrt(hidden)
    return nh.from_array(rng.uniform(-k, k, shape).astype(np.float32), name)


def _keras(rng: np.random.Generator, features: int, hidden: int, gates: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras' initialisation, in ONNX's layout: glorot_uniform kernel, orthogonal recurrent kernel per gate."""
    limit = np.sqrt(6 / (features + gates * hidden))
    w = rng.uniform(-limit, limit, (1, gates * hidden, features))
    q, _ = np.linalg.qr(rng.standard_normal((gates * hidden, hidden)))
    return w.astype(np.float32), q.reshape(1, gates * hidden, hidden).astype(np.float32)


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return nh.from_array(np.asarray(values, np.int64), name)


def _model(nodes, name, inputs, outputs, inits, opset: int, producer: str) -> onnx.ModelProto:
    m = h.make_model(h.make_graph(nodes, name, inputs, outputs, inits), opset_imports=[h.make_opsetid("", opset)],
                     producer_name=producer)
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def keras_gru(batch: int = 1, time: int = 20, features: int = 8, hidden: int = 12, classes: int = 3,
              seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w, r = _keras(rng, features, hidden, 3)
    nodes = [
        h.make_node("GRU", ["input_1", "gru/W", "gru/R", "gru/B"], ["gru/Y"], name="sequential/gru",
                    hidden_size=hidden, layout=1, linear_before_reset=0, activations=["HardSigmoid", "Tanh"],
                    activation_alpha=[0.2], activation_beta=[0.5]),
        # Y (batch, time, 1, hidden) -> (batch, time, hidden), with the converter's example baked in
        h.make_node("Reshape", ["gru/Y", "gru/shape"], ["gru/out"], name="sequential/gru/Reshape"),
        h.make_node("MatMul", ["gru/out", "dense/kernel"], ["dense/mm"], name="sequential/dense/MatMul"),
        h.make_node("Add", ["dense/mm", "dense/bias"], ["dense/logits"], name="sequential/dense/BiasAdd"),
        h.make_node("Sigmoid", ["dense/logits"], ["dense"], name="sequential/dense/Sigmoid"),
    ]
    inits = [nh.from_array(w, "gru/W"), nh.from_array(r, "gru/R"),
             _t(rng, "gru/B", (1, 6 * hidden), 0.05), _i64("gru/shape", [batch, time, hidden]),
             _t(rng, "dense/kernel", (hidden, classes)), _t(rng, "dense/bias", (classes,), 0.1)]
    return _model(nodes, "tf2onnx", [h.make_tensor_value_info("input_1", TensorProto.FLOAT, [batch, time, features])],
                  [h.make_tensor_value_info("dense", TensorProto.FLOAT, [batch, time, classes])], inits, 15,
                  "tf2onnx")


def peephole_lstm(time: int = 16, features: int = 6, hidden: int = 10, out: int = 4, seed: int = 1
                  ) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [
        h.make_node("LSTM", ["features", "W", "R", "B", "", "h_init", "c_init", "P"], ["Y", "", ""], name="lstm_1",
                    hidden_size=hidden, clip=3.0),
        h.make_node("Squeeze", ["Y", "axis1"], ["Y2"], name="squeeze_dirs"),  # (time, 1, batch, hidden) -> 3-D
        h.make_node("MatMul", ["Y2", "proj"], ["scores"], name="projection"),
    ]
    inits = [_uniform(rng, "W", (1, 4 * hidden, features), hidden), _uniform(rng, "R", (1, 4 * hidden, hidden), hidden),
             _uniform(rng, "B", (1, 8 * hidden), hidden), _t(rng, "P", (1, 3 * hidden), 0.3),
             _t(rng, "h_init", (1, 1, hidden), 0.3), _t(rng, "c_init", (1, 1, hidden), 0.3),
             _i64("axis1", [1]), _t(rng, "proj", (hidden, out))]
    return _model(nodes, "zoo_lstm", [h.make_tensor_value_info("features", TensorProto.FLOAT, [time, 1, features])],
                  [h.make_tensor_value_info("scores", TensorProto.FLOAT, [time, 1, out])], inits, 14, "model-zoo")


def _torch_layer(k: int, x: str, zeros: str, hidden: int, nodes: list, inits: list, rng: np.random.Generator,
                 features: int) -> str:
    """Layer ``k`` as torch.onnx writes it: its h0/c0 sliced from the zeros, LSTM, Squeeze of the direction axis."""
    p = f"/lstm/{'LSTM' if k == 0 else f'LSTM_{k}'}"
    states = []
    for j, which in enumerate(("h", "c")):
        s = f"/lstm/Slice_{2 * k + j}_output_0"
        inits += [_i64(f"/lstm/{which}{k}_axes", [0]), _i64(f"/lstm/{which}{k}_starts", [k]),
                  _i64(f"/lstm/{which}{k}_ends", [k + 1])]
        nodes.append(h.make_node("Slice", [zeros, f"/lstm/{which}{k}_starts", f"/lstm/{which}{k}_ends",
                                           f"/lstm/{which}{k}_axes"], [s], name=f"/lstm/Slice_{2 * k + j}"))
        states.append(s)
    inits += [_uniform(rng, f"onnx::LSTM_{k}_W", (1, 4 * hidden, features), hidden),
              _uniform(rng, f"onnx::LSTM_{k}_R", (1, 4 * hidden, hidden), hidden),
              _uniform(rng, f"onnx::LSTM_{k}_B", (1, 8 * hidden), hidden)]
    nodes.append(h.make_node("LSTM", [x, f"onnx::LSTM_{k}_W", f"onnx::LSTM_{k}_R", f"onnx::LSTM_{k}_B", "", *states],
                             [f"{p}_output_0", f"{p}_output_1", f"{p}_output_2"], name=p, hidden_size=hidden))
    nodes.append(h.make_node("Squeeze", [f"{p}_output_0", "/lstm/squeeze_axis"], [f"/lstm/Squeeze_{k}_output_0"],
                             name=f"/lstm/Squeeze_{k}"))
    return f"/lstm/Squeeze_{k}_output_0"


def torch_lstm(features: int = 4, hidden: int = 6, classes: int = 3, seed: int = 2) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [
        h.make_node("Shape", ["x"], ["/lstm/Shape_output_0"], name="/lstm/Shape"),
        h.make_node("Gather", ["/lstm/Shape_output_0", "/lstm/zero"], ["/lstm/Gather_output_0"], name="/lstm/Gather",
                    axis=0),
        h.make_node("Unsqueeze", ["/lstm/Gather_output_0", "/lstm/squeeze_axis0"], ["/lstm/Unsqueeze_output_0"],
                    name="/lstm/Unsqueeze"),
        h.make_node("Concat", ["/lstm/layers", "/lstm/Unsqueeze_output_0", "/lstm/hidden"], ["/lstm/Concat_output_0"],
                    name="/lstm/Concat", axis=0),
        h.make_node("ConstantOfShape", ["/lstm/Concat_output_0"], ["/lstm/ConstantOfShape_output_0"],
                    name="/lstm/ConstantOfShape", value=nh.from_array(np.zeros(1, np.float32))),
        h.make_node("Transpose", ["x"], ["/lstm/Transpose_output_0"], name="/lstm/Transpose", perm=[1, 0, 2]),
    ]
    inits = [_i64("/lstm/zero", 0), _i64("/lstm/squeeze_axis0", [0]), _i64("/lstm/layers", [2]),
             _i64("/lstm/hidden", [hidden]), _i64("/lstm/squeeze_axis", [1])]
    zeros = "/lstm/ConstantOfShape_output_0"
    y = _torch_layer(0, "/lstm/Transpose_output_0", zeros, hidden, nodes, inits, rng, features)
    y = _torch_layer(1, y, zeros, hidden, nodes, inits, rng, hidden)
    nodes += [h.make_node("Transpose", [y], ["/lstm/Transpose_1_output_0"], name="/lstm/Transpose_1", perm=[1, 0, 2]),
              h.make_node("MatMul", ["/lstm/Transpose_1_output_0", "onnx::MatMul_216"], ["/fc/MatMul_output_0"],
                          name="/fc/MatMul"),
              h.make_node("Add", ["fc.bias", "/fc/MatMul_output_0"], ["y"], name="/fc/Add")]
    inits += [_t(rng, "onnx::MatMul_216", (hidden, classes)), _t(rng, "fc.bias", (classes,), 0.1)]
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "seq", features])
    return _model(nodes, "main_graph", [x], [h.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", "seq",
                                                                                                 classes])],
                  inits, 17, "pytorch")


GRAPHS = {"keras_gru": keras_gru, "peephole_lstm": peephole_lstm, "torch_lstm": torch_lstm}
