"""Gate and memory diagnostics: what an LSTM or GRU remembers, and why a vanilla RNN forgets.

The computations return dataclasses (:mod:`edge_rnn.diagnostics._types`); the
figure is drawn separately (``_plot``, the ``diag`` extra: matplotlib).

Torch-free, for any streaming ONNX file (third-party models and int8/fp16
variants too): :func:`memory_curve`, the empirical memory curve
(:func:`diagnose_onnx` for one file and the files it is compared with), and
:func:`summary`, the table of any diagnosis.

With PyTorch (the ``export`` extra), from a reference layer, a ``torch.nn``
RNN/LSTM/GRU, or a whole model containing them: :func:`gate_trace`,
:func:`gate_stats`, :func:`horizons`, :func:`gradient_flow`, :func:`baselines`
and :func:`memory_curve_torch`; :func:`diagnose` runs them all.
"""

from __future__ import annotations

from typing import Any

from edge_rnn.diagnostics._memory import memory_curve
from edge_rnn.diagnostics._report import diagnose_bundle, diagnose_onnx, summary
from edge_rnn.diagnostics._types import (
    Diagnosis,
    GateStats,
    GradientFlow,
    Horizon,
    MemoryCurve,
    horizon_of_constant,
)

__all__ = [
    "Diagnosis", "GateStats", "GradientFlow", "Horizon", "MemoryCurve", "horizon_of_constant", "memory_curve",
    "diagnose_onnx", "diagnose_bundle", "summary",
    "gate_trace", "gate_stats", "horizons", "gradient_flow", "baselines", "memory_curve_torch", "diagnose",
]

_TORCH = {  # imported when first used: they need torch
    "gate_trace": "edge_rnn.diagnostics._gates", "gate_stats": "edge_rnn.diagnostics._gates",
    "horizons": "edge_rnn.diagnostics._gates", "gradient_flow": "edge_rnn.diagnostics._gradient",
    "baselines": "edge_rnn.diagnostics._gradient", "memory_curve_torch": "edge_rnn.diagnostics._memory_torch",
    "diagnose": "edge_rnn.diagnostics._diagnose",
}


def __getattr__(name: str) -> Any:
    if name in _TORCH:
        import importlib

        return getattr(importlib.import_module(_TORCH[name]), name)
    raise AttributeError(f"module 'edge_rnn.diagnostics' has no attribute {name!r}")
