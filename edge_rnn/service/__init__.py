"""The streaming inference service: many clients' streams batched into few onnxruntime calls.

:class:`Batcher` is the engine (asyncio, no web framework); the HTTP and
WebSocket server on top of it comes with the ``serve`` extra.
"""

from edge_rnn.service._batcher import Batcher, BatchStats, Overloaded, ShuttingDown

__all__ = ["Batcher", "BatchStats", "Overloaded", "ShuttingDown"]
