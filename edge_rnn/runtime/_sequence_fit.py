"""Whether a whole sequence, time first, fits a model's input: checked once, before it is cut into chunks, so that
a refusal names the user's array (its shape and dtype), not the first chunk cut from it."""

from __future__ import annotations

import numpy as np

from edge_rnn.errors import ShapeError
from edge_rnn.runtime._ports import Port

__all__ = ["time_first", "describe_time_first", "shape_fits", "dtype_fits", "check_fits", "check_float_range"]


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


def check_fits(port: Port, shape: tuple[int, ...], dtype: np.dtype, label: str, *, model: str | None = None,
               got: str = "") -> None:
    """The one refusal of a whole sequence that does not fit ``port`` (:func:`shape_fits`, :func:`dtype_fits`): a
    ShapeError naming ``label`` (the user's array: ``--input x.npy``), what the input takes, and the array's own
    ``shape`` and ``dtype`` (``got``: after them, e.g. " in the file"); ``model`` names whose input it is."""
    if shape_fits(port, shape) and dtype_fits(port, dtype):
        return
    cast = ", any float is cast" if port.dtype.kind == "f" else ""
    wanted = (f"{describe_time_first(port)} for {model}'s input {port.name} (time first{cast})" if model is not None
              else f"a sequence {describe_time_first(port)}, time first{cast}")
    raise ShapeError(f"{label}: expected {wanted}, got {shape} {np.dtype(dtype)}{got}")


def check_float_range(x: np.ndarray, dtype: np.dtype, label: str) -> None:
    """A ShapeError where a cast of ``x`` (time first) to the float ``dtype`` would turn a finite value into Inf
    (float64 1e300 for a float32 input), naming how many, the largest and the first one's step: such a value is no
    NaN or Inf the user passed, so it is refused whether or not the model lets non-finite inputs in. Checked
    against the cast's exact bound, without casting (or copying) ``x``."""
    dtype = np.dtype(dtype)
    if x.dtype.kind != "f" or dtype.kind != "f" or np.finfo(x.dtype).max <= np.finfo(dtype).max or not x.size:
        return
    limit = _overflow_bound(dtype, x.dtype)
    if -limit < x.min() and x.max() < limit:  # the common case, two reductions and no copy (a NaN fails it)
        return
    rows = max(1, _BLOCK // max(1, x[0].size))  # masks block by block: memory bounded whatever the array's size
    found = [hit for start in range(0, len(x), rows) if (hit := _beyond(x[start:start + rows], limit, start))]
    if found:
        count = sum(n for n, _, _ in found)
        largest = max((big for _, big, _ in found), key=abs)
        raise ShapeError(f"{label}: expected values within {dtype}'s range (the model's input dtype), got "
                         f"{count:,} {x.dtype} values beyond it (largest {largest:g}), the first at step "
                         f"{found[0][2]} of {len(x)}")


def _beyond(block: np.ndarray, limit: np.floating, start: int) -> tuple[int, float, int] | None:
    """In ``block`` (rows ``start``...): how many finite values reach ``limit`` in magnitude, the largest, and the
    first one's row; None where there is none. NaN compares False; an Inf stays Inf (the model's own NaN-or-Inf
    check, or allow_nonfinite, takes it)."""
    beyond = (block >= limit) | (block <= -limit)
    beyond &= np.isfinite(block)
    if not beyond.any():
        return None
    values = block[beyond]
    first = start + int(beyond.reshape(len(block), -1).any(axis=1).argmax())
    return values.size, values[np.argmax(np.abs(values))], first


_BLOCK = 1 << 16  # values per block of the range check's masks (two bool masks of 64 KiB)


def _overflow_bound(dtype: np.dtype, wide: np.dtype) -> np.floating:
    """The smallest magnitude, in the ``wide`` float dtype, that a cast to the narrower ``dtype`` rounds to Inf: its
    largest finite value plus half an ulp there (below that, round to nearest gives the largest finite value)."""
    info = np.finfo(dtype)
    top, half_ulp = wide.type(info.max), wide.type(2.0) ** (int(info.maxexp) - 2 - int(info.nmant))
    return top + half_ulp
