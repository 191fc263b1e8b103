"""The streaming inference service: many clients' streams batched into few onnxruntime calls.

:class:`Batcher` is the engine (asyncio, no web framework). The HTTP and
WebSocket server on top of it, :func:`create_app` with its
:class:`ServiceConfig`, comes with the ``serve`` extra: those names are
imported when first used, so the engine needs no web framework.
"""

from __future__ import annotations

from typing import Any

from edge_rnn.service._batcher import Batcher, Overloaded, ShuttingDown

__all__ = ["Batcher", "Overloaded", "ShuttingDown", "create_app", "ServiceConfig"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from edge_rnn.service._app import create_app

        return create_app
    if name == "ServiceConfig":  # needs no web framework
        from edge_rnn.service._config import ServiceConfig

        return ServiceConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
