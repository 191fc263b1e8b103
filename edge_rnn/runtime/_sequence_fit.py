"""Whether a whole sequence, time first, fits a model's input: checked once, before it is cut into chunks, so that
a refusal names the user's array (its shape and dtype), not the first chunk cut from it."""

from __future__ import annotations

import numpy as np

from edge_rnn.runtime._ports import Port

__all__ = ["time_first", "describe_time_first", "shape_fits", "dtype_fits"]


def time_first(port: Port) -> tuple[int | None, ...]:
    """The per-frame dimensions of a sequence for ``port``, time first: the stream's shape with its time axis moved to
    the front and left out (None where the model leaves a dimension dynamic). A port without a time axis takes one
    row (its whole stream shape) per call."""
    dims = list(port.stream_shape)
    if port.stream_time_axis is not None:
        dims.pop(port.stream_time_axis)
    return tuple(dims)


def describe_time_first(port: Port) -> str:
    """``(time, 24) float32``: the shape and dtype of a whole sequence ``port`` takes, as a user writes it."""
    head = "time" if port.stream_time_axis is not None else "calls"
    dims = [head, *("any" if d is None else str(d) for d in time_first(port))]
    within = f" in [{port.values[0]}, {port.values[1]}]" if port.values is not None else ""
    return f"({', '.join(dims)}{',' if len(dims) == 1 else ''}) {port.dtype}{within}"


def shape_fits(port: Port, shape: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` (time first) has the rank and the fixed sizes of a sequence for ``port``."""
    frame = time_first(port)
    return len(shape) == 1 + len(frame) and all(d is None or d == s for d, s in zip(frame, shape[1:]))


def dtype_fits(port: Port, dtype: np.dtype) -> bool:
    """Whether an array of ``dtype`` goes to ``port`` as it is or by an exact or expected cast: any float for a float
    input (float64 .npy files are the common case), an integer that casts safely for an integer input."""
    dtype = np.dtype(dtype)
    if dtype == port.dtype:
        return True
    if dtype.kind == "f" and port.dtype.kind == "f":
        return True
    return dtype.kind in "iu" and port.dtype.kind in "iu" and bool(np.can_cast(dtype, port.dtype))
