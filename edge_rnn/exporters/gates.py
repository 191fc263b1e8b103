"""Where the gate reorder used to live: it is :mod:`edge_rnn.gates` now (numpy only)."""

from edge_rnn.gates import ONNX_GATES, TORCH_GATES, from_onnx_gate_order, to_onnx_gate_order

__all__ = ["TORCH_GATES", "ONNX_GATES", "to_onnx_gate_order", "from_onnx_gate_order"]
