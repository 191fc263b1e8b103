"""Binary chunks and replies: float32 little-endian bytes, time first, to and from the model's own layout.

A chunk is a whole number of frames, row-major (time x features); the reply is
the primary output (the model's first) in the same layout. What that takes is
decided once per model, not per message: a frame's size in bytes, and the
transposes between time first and where the model keeps its time axis
(:mod:`edge_rnn.runtime._layout`). No web framework here.
"""

from __future__ import annotations

import numpy as np

from edge_rnn.runtime import Port, StreamingModel
from edge_rnn.runtime._layout import from_front, to_front
from edge_rnn.service._errors import Refusal
from edge_rnn.service._status import (
    HTTP_400_BAD_REQUEST,
    HTTP_413_CONTENT_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
)

__all__ = ["Codec"]

_F4 = np.dtype("<f4")


class Codec:
    """Decodes a model's binary chunks and encodes its primary output; :attr:`frame` is one frame's shape (None:
    the model takes JSON chunks only)."""

    def __init__(self, model: StreamingModel, max_message_bytes: int):
        self.max_message_bytes = max_message_bytes
        self.port = _binary_input(model)
        self.frame = _frame(self.port)
        self.primary = model.outputs[0]
        self._frame_bytes = 4 * int(np.prod(self.frame)) if self.frame is not None else 0
        self._frames = (-1, *(self.frame or ()))
        t_in, t_out = (self.port.stream_time_axis if self.port else None), self.primary.stream_time_axis
        self._one_step = self.port is not None and t_in is None  # one step per call: a chunk is one frame
        # None: time is first already
        self._to_model = None if t_in is None else from_front(len(self._frames), t_in)
        self._from_model = None if t_out is None else to_front(len(self.primary.stream_shape), t_out)

    def check_binary(self) -> None:
        """A 415 where the model takes no binary chunks (before a body is read)."""
        if self.frame is None:
            raise Refusal(HTTP_415_UNSUPPORTED_MEDIA_TYPE, "unsupported", "binary chunks need a model with one "
                          "float32 input of fixed frame size; send JSON {\"x\": ...}")

    def decode(self, body: bytes | bytearray) -> np.ndarray:
        """A binary chunk: float32 little-endian, whole frames, row-major."""
        self.check_binary()
        if len(body) > self.max_message_bytes:
            raise Refusal(HTTP_413_CONTENT_TOO_LARGE, "too_large", f"expected at most {self.max_message_bytes} "
                          f"bytes, got {len(body)}")
        size = self._frame_bytes
        if not body or len(body) % size:
            raise Refusal(HTTP_400_BAD_REQUEST, "bad_chunk", f"expected a whole number of frames of {size} bytes "
                          f"(float32 x {self.frame}), got {len(body)} bytes")
        x = np.frombuffer(body, dtype=_F4).reshape(self._frames)  # (time, *frame), as the protocol sends it
        if self._one_step:  # exactly one frame
            return x.reshape(self.frame) if len(x) == 1 else x
        return x if self._to_model is None else x.transpose(self._to_model)  # time where the model has it

    def encode(self, out: dict) -> bytes:
        """The primary output as float32 little-endian bytes, time first (time x features, row-major)."""
        y = out[self.primary.name]
        if self._from_model is not None:
            y = y.transpose(self._from_model)
        return (y if y.dtype == _F4 else y.astype(_F4)).tobytes()  # tobytes: row-major, whatever the strides


def _binary_input(model: StreamingModel) -> Port | None:
    """The model's input that binary chunks feed: its only input, if float32; else None."""
    port = model.inputs[0] if len(model.inputs) == 1 else None
    return port if port is not None and port.dtype == np.float32 else None


def _frame(port: Port | None) -> list[int] | None:
    """One frame's shape: the input's per-stream shape without its time axis; None where a dimension is dynamic."""
    if port is None:
        return None
    rest = [d for i, d in enumerate(port.stream_shape) if i != port.stream_time_axis]
    return None if None in rest else rest
