"""edge-rnn: recurrent networks from PyTorch to streaming ONNX, run on the edge.

``edge_rnn.export`` and ``edge_rnn.verify`` need the ``export`` extra (torch,
onnx), ``edge_rnn.lift`` the ``deploy`` extra (onnx, no torch); they are
imported on first use so that ``import edge_rnn.runtime`` works on a device
without either.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export", "verify", "lift", "EdgeRnnError", "__version__"]

from edge_rnn._version import __version__
from edge_rnn.errors import EdgeRnnError

_LAZY = {"export", "verify"}


def __getattr__(name: str) -> Any:
    if name == "lift":
        try:
            from edge_rnn.deploy.lifting._api import lift
        except ImportError as e:
            raise ImportError(f"edge_rnn.lift needs onnx ({e}); install it with: pip install 'edge-rnn[deploy]'") from e
        return lift
    if name in _LAZY:
        try:
            from edge_rnn import exporters
        except ImportError as e:
            raise ImportError(
                f"edge_rnn.{name} needs torch and onnx ({e}); install them with: pip install 'edge-rnn[export]'"
            ) from e
        return getattr(exporters, name)
    raise AttributeError(f"module 'edge_rnn' has no attribute {name!r}")
