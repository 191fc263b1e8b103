"""Native ``GRU`` and ``RNN`` nodes rewritten as a lean int8 ``Scan``: onnxruntime has no quantised GRU or RNN kernel.

``quantize_dynamic`` of the decomposed form (:mod:`edge_rnn.deploy._decompose`)
works, but leaves each step a dozen small nodes beside every quantised MatMul:
an Add for each bias, a Split of the projected input inside the loop. This
form writes the products as ``com.microsoft.DynamicQuantizeMatMul`` with the
biases in the node, splits the input projection once outside the ``Scan``,
and computes the GRU step (PyTorch's gate order and ``linear_before_reset=1``)
as::

    u = h W_hh^T + [0, 0, b_hn]                      (one quantised product)
    r, z = sigmoid(x_rz + u_rz)                      x_rz, x_n: x W_ih^T + folded biases, outside the loop
    n = tanh(x_n + r * u_n)
    h' = n + z * (h - n)

On the demo GRU (80 -> 256 x 2, AMD EPYC with AVX-512 VNNI) it is 1.20x the
float32 GRU at one step per call against 1.13x for ``quantize_dynamic`` of
the decomposed form, and 1.03x at ten steps against 0.91x, with uint8
weights; 1.29x and 1.25x with int8 weights (docs/deployment.md). The weights
are quantised as :class:`~edge_rnn.deploy._int8.Int8Settings` say; activations
per call, as ``quantize_dynamic`` does. A node in any other convention is left
here for :func:`general_int8_nodes`: the general decomposed form, whose MatMuls
``quantize_dynamic`` quantises.

``DynamicQuantizeLSTM`` (what ``quantize_dynamic`` makes of an ``LSTM``) was
measured against the float64 reference of the operator (onnxruntime 1.32,
reduce_range, this project's test grid): peepholes, ``clip``, ``input_forget``,
LeakyRelu/HardSigmoid/Elu/Softsign activations with their alpha and beta, reverse,
bidirectional and ``sequence_lens`` are within 0.01 of it; but it takes
``layout=1`` as layout 0 without a word (max |Y| error 0.60), writes zeros to
``Y_h``/``Y_c`` of a row of length 0 where the initial state should stay (0.64),
and defaults Affine, ScaledTanh and ThresholdedRelu's alpha and beta to 0
(0.66, 0.41, 0.45). Such an LSTM takes the general decomposed form instead.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from edge_rnn.deploy._decompose import _weights, node_weights, pytorch_conventions, read_node, splice
from edge_rnn.deploy._int8 import Int8Settings
from edge_rnn.deploy._onnx_weights import ConstantFolder
from edge_rnn.gates import gate_blocks, join_gates
from edge_rnn.graphs import GraphBuilder

__all__ = ["quantize_recurrent", "quantized_weight", "general_int8_nodes", "lstm_departure"]

MS_DOMAIN = "com.microsoft"


def quantized_weight(w: np.ndarray, settings: Int8Settings) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``w`` (K, N) as DynamicQuantizeMatMul's B, b_scale and b_zero_point (None: symmetric int8).

    int8: symmetric, |q| <= 63 with ``reduce_range`` (127 without); uint8: asymmetric over [min(w, 0), max(w, 0)],
    q <= 127 with ``reduce_range`` (255 without). Per channel: one scale per output column.
    """
    axis = 0 if settings.per_channel else None
    if settings.weight_type == "int8":
        qmax = 63 if settings.reduce_range else 127
        scale = np.max(np.abs(w), axis=axis) / qmax
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8)
        return q, scale, None
    qmax = 127 if settings.reduce_range else 255
    low, high = np.minimum(np.min(w, axis=axis), 0), np.maximum(np.max(w, axis=axis), 0)
    scale = ((high - low) / qmax).astype(np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    zero = np.clip(np.round(-low / scale), 0, qmax).astype(np.uint8)
    q = np.clip(np.round(w / scale) + zero, 0, qmax).astype(np.uint8)
    return q, scale, zero


def _product(g: GraphBuilder, a: str, w: np.ndarray, bias: np.ndarray | None, settings: Int8Settings,
             hint: str) -> str:
    """``a @ w + bias`` as one DynamicQuantizeMatMul; ``w`` is (K, N)."""
    q, scale, zero = quantized_weight(w, settings)
    inputs = [a, g.const(q, f"{hint}_q"), g.const(scale, f"{hint}_scale"),
              g.const(zero, f"{hint}_zero") if zero is not None else "",
              g.const(bias.astype(np.float32), f"{hint}_bias") if bias is not None else ""]
    while inputs[-1] == "":
        inputs.pop()
    return g.op1("DynamicQuantizeMatMul", inputs, hint=hint, domain=MS_DOMAIN)


def _gru_direction(g: GraphBuilder, hidden: int, w: dict, x: str, h0: str, reverse: bool,
                   settings: Int8Settings) -> tuple[str, str]:
    """One GRU direction over time-major ``x``; returns ``(y (T, B, H), h_T (B, H))``."""
    blocks_ih, blocks_hh = gate_blocks("gru", w["b_ih"]), gate_blocks("gru", w["b_hh"])
    folded = join_gates("gru", {"r": blocks_ih["r"] + blocks_hh["r"], "z": blocks_ih["z"] + blocks_hh["z"],
                                "n": blocks_ih["n"]})
    b_hn = join_gates("gru", {"r": np.zeros(hidden, np.float32), "z": np.zeros(hidden, np.float32),
                              "n": blocks_hh["n"]})
    xw = _product(g, x, w["w_ih"].T, folded, settings, "xw")
    x_rz, x_n = g.op("Split", [xw, g.ints([2 * hidden, hidden], "split")], outputs=2, axis=2, hint="x_gates")
    body = GraphBuilder("step", parent=g)
    h = body.add_input(body.fresh("h_in"), [None, hidden])
    xrz_t = body.add_input(body.fresh("x_rz_t"), [None, 2 * hidden])
    xn_t = body.add_input(body.fresh("x_n_t"), [None, hidden])
    u = _product(body, h, w["w_hh"].T, b_hn, settings, "hw")
    u_rz, u_n = body.op("Split", [u, g.ints([2 * hidden, hidden], "split")], outputs=2, axis=1, hint="h_gates")
    rz = body.op1("Sigmoid", [body.op1("Add", [xrz_t, u_rz])], hint="rz")
    r, z = body.op("Split", [rz, g.ints([hidden, hidden], "split")], outputs=2, axis=1, hint="gate")
    n = body.op1("Tanh", [body.op1("Add", [xn_t, body.op1("Mul", [r, u_n])])], hint="n")
    h_new = body.op1("Add", [n, body.op1("Mul", [z, body.op1("Sub", [h, n])])], hint="h")
    body.add_output(h_new, [None, hidden])
    body.add_output(body.op1("Identity", [h_new], hint="y_t"), [None, hidden])
    direction = [1 if reverse else 0]
    h_t, y = g.op("Scan", [h0, x_rz, x_n], outputs=2, hint="scan", body=body.graph(), num_scan_inputs=2,
                  scan_input_directions=direction * 2, scan_output_directions=direction)
    return y, h_t


def _rnn_direction(g: GraphBuilder, hidden: int, w: dict, x: str, h0: str, reverse: bool,
                   settings: Int8Settings, act: str) -> tuple[str, str]:
    xw = _product(g, x, w["w_ih"].T, w["b_ih"] + w["b_hh"], settings, "xw")
    body = GraphBuilder("step", parent=g)
    h = body.add_input(body.fresh("h_in"), [None, hidden])
    xw_t = body.add_input(body.fresh("xw_t"), [None, hidden])
    h_new = body.op1(act, [body.op1("Add", [xw_t, _product(body, h, w["w_hh"].T, None, settings, "hw")])], hint="h")
    body.add_output(h_new, [None, hidden])
    body.add_output(body.op1("Identity", [h_new], hint="y_t"), [None, hidden])
    direction = [1 if reverse else 0]
    h_t, y = g.op("Scan", [h0, xw], outputs=2, hint="scan", body=body.graph(), num_scan_inputs=1,
                  scan_input_directions=direction, scan_output_directions=direction)
    return y, h_t


def _rewrite(node: onnx.NodeProto, folder: ConstantFolder, index: int, settings: Int8Settings) -> GraphBuilder:
    x, h0, _, w, r, b, spec = read_node(node, folder)
    g = GraphBuilder("int8", prefix=folder.free_prefix(f"{node.name or node.op_type}_{index}/"))
    outs = list(node.output) + [""] * (2 - len(node.output))
    ys, hs = [], []
    for d in range(spec.num_directions):
        h_init = g.op1("Gather", [h0, g.const(np.asarray(d, np.int64), "direction")], axis=0, hint="h_init")
        weights = _weights(spec, w, r, b, d)
        if spec.kind == "gru":
            y, h = _gru_direction(g, spec.hidden_size, weights, x, h_init, d == 1, settings)
        else:
            act = "Tanh" if spec.nonlinearity == "tanh" else "Relu"
            y, h = _rnn_direction(g, spec.hidden_size, weights, x, h_init, d == 1, settings, act)
        ys.append(g.op1("Unsqueeze", [y, g.ints([1], "axes")]))  # (T, B, H) -> (T, 1, B, H)
        hs.append(g.op1("Unsqueeze", [h, g.ints([0], "axes")]))
    for name, parts, axis in ((outs[0], ys, 1), (outs[1], hs, 0)):
        if name and len(parts) > 1:
            g.op1("Concat", parts, axis=axis, output=name)
        elif name:
            g.op1("Identity", parts, output=name)
    return g


_ORT_ALPHA_BETA = {"affine", "scaledtanh", "thresholdedrelu"}  # onnxruntime's defaults differ from the spec's


def lstm_departure(node: onnx.NodeProto) -> str | None:
    """Why ``DynamicQuantizeLSTM`` would not compute this LSTM node as the operator does (None: it does)."""
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    names = list(node.input) + [""] * (8 - len(node.input))
    acts = {(v.decode() if isinstance(v, bytes) else v).lower() for v in a.get("activations", [])}
    if not a.get("hidden_size"):
        return "no hidden_size (onnxruntime's LSTM kernels require it)"
    if a.get("layout", 0):
        return "layout=1, which DynamicQuantizeLSTM computes as layout 0"
    if names[4] and names[5]:
        return "sequence_lens with an initial state (DynamicQuantizeLSTM zeroes Y_h/Y_c of a row of length 0)"
    if acts & _ORT_ALPHA_BETA:
        return f"activations {sorted(acts & _ORT_ALPHA_BETA)} (onnxruntime's alpha/beta defaults differ)"
    return None


def general_int8_nodes(model: onnx.ModelProto, keep: set[str]) -> tuple[onnx.ModelProto, int]:
    """``model`` with the recurrent nodes that neither the lean int8 form nor DynamicQuantizeLSTM computes (a GRU or
    RNN outside PyTorch's conventions, an LSTM of :func:`lstm_departure`) in the general decomposed form, but those
    ``keep`` names (by node name or operator type), which stay float32; returns it and how many."""
    from edge_rnn.deploy._decompose import decompose_recurrent

    def kept(node: onnx.NodeProto) -> bool:
        return node.op_type in keep or bool(node.name and node.name in keep)

    def select(node: onnx.NodeProto) -> bool:
        if kept(node):
            return False
        return bool(lstm_departure(node)) if node.op_type == "LSTM" else bool(pytorch_conventions(node))

    model, count = decompose_recurrent(model, select=select)
    return _lstm_weights_baked(model, kept), count


def _lstm_weights_baked(model: onnx.ModelProto, kept: Callable[[onnx.NodeProto], bool]) -> onnx.ModelProto:
    """Each LSTM node left for DynamicQuantizeLSTM with its computed weights folded into initializers
    (quantize_dynamic quantises initializers only); UnsupportedError for weights computed at run time."""
    def rewrite(node: onnx.NodeProto, folder: ConstantFolder, index: int) -> GraphBuilder | None:
        if node.op_type != "LSTM" or kept(node):
            return None
        w = node_weights(node, folder)  # shapes checked: DynamicQuantizeLSTM would only fail when it runs
        slots = [k for k in (1, 2, 3, 7) if k < len(node.input) and node.input[k]]
        if all(folder.origin(node.input[k]) == "initializer" for k in slots):
            return None
        g = GraphBuilder("baked", prefix=folder.free_prefix(f"{node.name or node.op_type}_{index}/"))
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for k, value in zip((1, 2, 3, 7), (w.W, w.R, w.B, w.P)):
            if k in slots:
                copy.input[k] = g.const(value, {1: "W", 2: "R", 3: "B", 7: "P"}[k])
        g.nodes.append(copy)
        return g

    return splice(model, rewrite)[0]


def quantize_recurrent(model: onnx.ModelProto, settings: Int8Settings) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with each top-level GRU and RNN node in the lean int8 form, but those that
    ``settings.keep_float`` names (by node name or operator type), which stay float32; returns it and how many
    were rewritten."""
    def rewrite(node: onnx.NodeProto, folder: ConstantFolder, index: int) -> GraphBuilder | None:
        kept = node.op_type in settings.keep_float or (node.name and node.name in settings.keep_float)
        if node.op_type not in ("GRU", "RNN") or node.domain not in ("", "ai.onnx") or kept:
            return None
        if pytorch_conventions(node):  # the general decomposed form, which quantize_dynamic quantises
            return None
        return _rewrite(node, folder, index, settings)

    out, count = splice(model, rewrite)
    if count and not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return out, count
