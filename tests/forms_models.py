"""Single-node RNN/GRU/LSTM models for the forms' conformance tests, built with onnx.helper (no files, no torch).

The weights are constants (initializers, or computed from Constant nodes), as the decomposed and int8 forms need;
the data inputs (X, sequence_lens, initial states) stay graph inputs, with their shapes fixed where asked.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_rnn.harness._onnx_recurrent import RecurrentAttrs

INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
WEIGHTS = ("W", "R", "B", "P")


def node_attributes(attrs: RecurrentAttrs) -> dict:
    """The node's attributes, leaving out what is at its default (so that onnxruntime sees a plain node)."""
    kw = {"hidden_size": attrs.hidden_size, "direction": attrs.direction, "clip": attrs.clip,
          "activations": list(attrs.activations or ()), "activation_alpha": list(attrs.activation_alpha),
          "activation_beta": list(attrs.activation_beta), "layout": attrs.layout,
          "linear_before_reset": attrs.linear_before_reset if attrs.kind == "GRU" else None,
          "input_forget": attrs.input_forget if attrs.kind == "LSTM" else None}
    return {k: v for k, v in kw.items() if v is not None and v != [] and not (k == "layout" and v == 0)}


def _computed(name: str, value: np.ndarray) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``value`` from constants: W from a transposed Constant, B as a Concat of two Constants, the
    others a Constant node then Identity."""
    v = value.astype(np.float32)
    if name == "W":
        src = helper.make_node("Constant", [], [f"{name}_t"], value=numpy_helper.from_array(
            np.ascontiguousarray(np.transpose(v, (2, 1, 0))), f"{name}_t"))
        return [src, helper.make_node("Transpose", [f"{name}_t"], [name], perm=[2, 1, 0])], []
    if name == "B":
        half = v.shape[1] // 2
        return [helper.make_node("Constant", [], ["B_w"], value=numpy_helper.from_array(v[:, :half].copy(), "B_w")),
                helper.make_node("Concat", ["B_w", "B_r"], [name], axis=1)], \
            [numpy_helper.from_array(v[:, half:].copy(), "B_r")]
    src = helper.make_node("Constant", [], [f"{name}_c"], value=numpy_helper.from_array(v, f"{name}_c"))
    return [src, helper.make_node("Identity", [f"{name}_c"], [name])], []


def recurrent_model(attrs: RecurrentAttrs, d: dict, *, computed: bool = False, fixed: bool = True,
                    opset: int = 22, outputs: tuple[str, ...] | None = None) -> onnx.ModelProto:
    """One node of ``attrs`` over the inputs named in ``d`` (layout as ``attrs`` says): the weights constant
    (initializers, or computed from Constant nodes), the rest graph inputs (shapes fixed from ``d`` where
    ``fixed``); ``outputs`` the ones it writes (default: all)."""
    names = [n if n in d else "" for n in INPUTS[:8 if attrs.kind == "LSTM" else 6]]
    while names[-1] == "":
        names.pop()
    every = ("Y", "Y_h", "Y_c")[:3 if attrs.kind == "LSTM" else 2]
    outs = [o if outputs is None or o in outputs else "" for o in every]
    while outs[-1] == "":
        outs.pop()
    nodes, inits, inputs = [], [], []
    for n in names:
        if n in WEIGHTS and computed:
            made, more = _computed(n, d[n])
            nodes += made
            inits += more
        elif n in WEIGHTS:
            inits.append(numpy_helper.from_array(d[n].astype(np.float32), n))
        elif n:
            elem = TensorProto.INT32 if n == "sequence_lens" else TensorProto.FLOAT
            inputs.append(helper.make_tensor_value_info(n, elem, list(np.shape(d[n])) if fixed else None))
    nodes.append(helper.make_node(attrs.kind, names, outs, name="rec", **node_attributes(attrs)))
    graph = helper.make_graph(nodes, "recurrent", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * (4 if o == "Y" else 3))
                               for o in outs if o], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def feeds(model: onnx.ModelProto, d: dict) -> dict:
    """The graph inputs of ``model`` from ``d``, as onnxruntime takes them."""
    names = {i.name for i in model.graph.input}
    return {k: (v if k == "sequence_lens" else np.asarray(v, np.float32)) for k, v in d.items() if k in names}


def run_ort(model: onnx.ModelProto, d: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds(model, d))
