"""ONNX graphs of recurrent layers, built from their weights: numpy and onnx only, never torch.

The exporters build a layer from a PyTorch module's weights; :mod:`edge_rnn.deploy`
rebuilds a native ``RNN``/``GRU``/``LSTM`` node from the weights in the file, for
the forms that int8 quantisation and NPU execution providers need.
"""

from edge_rnn.graphs._builder import GraphBuilder
from edge_rnn.graphs._layers import (
    emit_direction,
    emit_input_projection,
    emit_module,
    emit_stack,
    emit_step,
    native_possible,
)

__all__ = ["GraphBuilder", "emit_module", "emit_stack", "emit_direction", "emit_input_projection", "emit_step",
           "native_possible", "OPSET", "IR_VERSION"]

OPSET = 17
# IR 8 goes with opset 17 and loads in onnxruntime >= 1.13, mobile builds included.
IR_VERSION = 8
