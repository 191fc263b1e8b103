"""Where ``ContextBuffer`` used to live: it is :class:`edge_rnn.nn.ContextBuffer` now (torch only)."""

from edge_rnn.nn import ContextBuffer

__all__ = ["ContextBuffer"]
