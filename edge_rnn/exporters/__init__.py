"""PyTorch recurrent modules -> streaming ONNX graphs, and parity checks against PyTorch.

Needs torch and onnx (``pip install 'edge-rnn[export]'``).
"""

from edge_rnn.exporters._api import export
from edge_rnn.exporters._export import build_model
from edge_rnn.exporters._spec import RecurrentSpec, build_module, spec_from_module
from edge_rnn.exporters._write import ExportReport
from edge_rnn.exporters.context import ContextBuffer
from edge_rnn.exporters.gates import from_onnx_gate_order, to_onnx_gate_order
from edge_rnn.exporters.options import ExportOptions, StreamingIO
from edge_rnn.exporters.parity import TOLERANCE, ParityReport, ParityRow, verify

__all__ = [
    "export",
    "ContextBuffer",
    "StreamingIO",
    "ExportOptions",
    "verify",
    "build_model",
    "build_module",
    "spec_from_module",
    "to_onnx_gate_order",
    "from_onnx_gate_order",
    "ExportReport",
    "ParityReport",
    "ParityRow",
    "RecurrentSpec",
    "TOLERANCE",
]
