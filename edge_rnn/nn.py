"""Torch building blocks for streamable models (training code imports these; no onnx, no exporter).

ContextBuffer: the look-back a causal convolution needs, as streaming state.

A convolution over time with kernel ``k`` needs the last ``k - 1`` frames of
the previous chunk. Put a :class:`ContextBuffer` in front of it and give the
convolution no padding::

    self.context = ContextBuffer(kernel_size - 1)       # frames of look-back
    self.conv = torch.nn.Conv1d(40, 64, kernel_size)    # padding=0
    ...
    z = self.conv(self.context(x))                      # x: (batch, 40, time)

Called normally, the buffer pads the left of the time axis with zeros, so the
module is an ordinary causal convolution over the whole sequence. When
:func:`edge_rnn.export` lifts the model's state (it patches the buffer in its
own copy of the model, as it patches recurrent layers), the buffer becomes a state
input/output pair (``<path>.ctx0`` -> ``<path>.ctxn``, shaped
``(batch, channels, length)`` for ``time_dim=-1``): each call prepends the
previous call's last ``length`` frames instead of zeros, so chunked streaming
equals one pass over the whole sequence.
"""

from __future__ import annotations

import torch

from edge_rnn.errors import ShapeError

__all__ = ["ContextBuffer"]


class ContextBuffer(torch.nn.Module):
    """Prepend ``length`` frames of context along ``time_dim`` (zeros, or the previous chunk's tail when streaming).

    Input ``(batch, ..., time)`` for the default ``time_dim=-1``; output has
    ``time + length`` frames. The state is the last ``length`` frames of
    ``cat(context, input)``.
    """

    def __init__(self, length: int, *, time_dim: int = -1):
        super().__init__()
        if length < 1:
            raise ShapeError(f"ContextBuffer: expected length >= 1, got {length}")
        if time_dim == 0:
            raise ShapeError("ContextBuffer: expected time_dim other than 0, the batch axis")
        self.length = length
        self.time_dim = time_dim

    def zeros(self, x: torch.Tensor) -> torch.Tensor:
        shape = list(x.shape)
        shape[self.time_dim] = self.length
        return x.new_zeros(shape)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([self.zeros(x) if context is None else context, x], dim=self.time_dim)

    def extra_repr(self) -> str:
        return f"length={self.length}, time_dim={self.time_dim}"
