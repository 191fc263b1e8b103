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
    if name in ("create_app", "ServiceConfig"):
        from edge_rnn.service import _app

        return getattr(_app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
