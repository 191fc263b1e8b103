"""run_sequence: a whole array streamed through a model, chunk by chunk, with the state carried."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_rnn._numbers import is_int
from edge_rnn.errors import ArgumentError, ShapeError
from edge_rnn.runtime._layout import from_front, to_front
from edge_rnn.runtime._ports import Port
from edge_rnn.runtime._sequence_fit import check_fits, check_float_range, describe_time_first

if TYPE_CHECKING:
    from edge_rnn.runtime._model import StreamingModel
    from edge_rnn.runtime._stream import Stream

__all__ = ["run_sequence"]


def run_sequence(model: StreamingModel, stream: Stream, x: np.ndarray, *, chunk: int = 32,
                 progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Feed ``x`` to ``stream`` in chunks of ``chunk`` time steps; every output, time (or calls) first.

    ``x`` is one stream's input with its time axis first, ``(time, *rest)``,
    whatever the model's own layout (the per-stream shape of the model's one
    input, its time axis moved to the front). For a model that takes one step
    per call, axis 0 counts calls and each call gets one row. ``progress``, if
    given, is called with the number of steps of each chunk as it is done.
    Any float array goes to a float input (a float64, float16 or big-endian
    array is cast to the model's dtype once, as ``edge-rnn run`` casts a
    float64 .npy; a finite value the cast would make Inf, 1e300 for float32,
    is refused, allow_nonfinite or not), and integers that cast exactly go to an integer input;
    anything else, a ragged list included, is a ShapeError naming the whole
    array's shape and dtype, raised before any step.
    ``chunk`` is an int >= 1 (one pass over the whole array: ``chunk=len(x)``);
    it and ``progress`` are checked before any step. The stream advances by
    every step; on an error it stops after the last chunk that succeeded.

    Example::

        >>> y = run_sequence(model, model.open_stream(), features, chunk=10)["y"]   # doctest: +SKIP
    """
    chunk = _checked(model, chunk, progress)
    port = model.inputs[0]
    pieces = _pieces(port, _whole(port, x), chunk)
    collected: dict[str, list[np.ndarray]] = {p.name: [] for p in model.outputs}
    for piece in pieces:
        for name, y in model.step(stream, piece).items():
            collected[name].append(y)
        if progress is not None:
            progress(1 if port.stream_time_axis is None else piece.shape[port.stream_time_axis])
    return {p.name: _joined(p, collected[p.name]) for p in model.outputs}


def _checked(model: StreamingModel, chunk: Any, progress: Any) -> int:
    """``chunk`` as an int, once it and the rest of run_sequence's arguments are what it takes."""
    if len(model.inputs) != 1:
        raise ShapeError(f"run_sequence: expected a model with one input, got {[p.name for p in model.inputs]}")
    if not is_int(chunk) and not isinstance(chunk, np.integer):  # None, 2.5, "4", True: a TypeError from
        raise ArgumentError(f"run_sequence: expected chunk to be an int >= 1, got {chunk!r}")  # `<`, or True as 1
    chunk = int(chunk)
    if chunk < 1:
        raise ShapeError(f"run_sequence: expected chunk >= 1, got {chunk}")
    if progress is not None and not callable(progress):
        raise ArgumentError(f"run_sequence: expected progress to be callable (or None), got {type(progress).__name__}")
    return chunk


def _whole(port: Port, x: Any) -> np.ndarray:
    """``x`` as one array of the port's dtype, its shape and dtype checked whole, before any chunk is cut from it:
    a refusal names the user's array, never a chunk."""
    try:
        a = np.asarray(x)
    except ValueError:  # numpy's "inhomogeneous shape": chunks of different lengths, a ragged nested list
        raise ShapeError(f"{port.name}: expected a sequence {describe_time_first(port)}, time first, got a ragged "
                         f"{type(x).__name__}{_shapes(x)} (join chunks with np.concatenate)") from None
    check_fits(port, a.shape, a.dtype, port.name)  # a 0-d array too: no rank fits it
    if not len(a):
        raise ShapeError(f"{port.name}: expected at least one time step, got an empty array {a.shape}")
    check_float_range(a, port.dtype, port.name)  # a finite value the cast would make Inf, allow_nonfinite or not
    return a


def _shapes(x: Any) -> str:
    """`` of shapes [(3, 4), (2, 4)]``: the first few items' shapes of a ragged sequence, where it has items."""
    try:
        items = list(x)
    except TypeError:
        return ""
    shapes = [np.shape(v) if not isinstance(v, (list, tuple)) else f"{len(v)} items" for v in items[:4]]
    return f" of shapes [{', '.join(map(str, shapes))}{', ...' if len(items) > 4 else ''}]"


def _pieces(port: Port, x: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """``x`` (time first, checked whole by :func:`_whole`) cut into chunks of ``chunk`` steps in the port's own
    layout, one at a time as they are stepped (a chunk the model refuses stops the cutting: the rest are never
    copied); one row per call for a port without a time axis."""
    return _cut(x, port.stream_time_axis, chunk, port.dtype)


def _cut(x: np.ndarray, t_axis: int | None, chunk: int, dtype: np.dtype) -> Iterator[np.ndarray]:
    """Each chunk copied and cast to ``dtype`` as it is cut (exact for integers, per dtype_fits; floats as
    ``edge-rnn run`` casts them), so that a cast never copies the whole of ``x``."""
    if t_axis is None:  # one step per call: rows are steps
        for row in x:
            yield np.asarray(row, dtype)
        return
    to_model = from_front(x.ndim, t_axis)
    x = x if to_model is None else x.transpose(to_model)
    steps = x.shape[t_axis]
    before = (slice(None),) * t_axis
    for a in range(0, steps, chunk):
        yield np.array(x[(*before, slice(a, a + chunk))], dtype)  # a copy of the chunk alone (np.take copied all of x
        # first where x was not contiguous: a broadcast or transposed array)


def _joined(port: Port, parts: list[np.ndarray]) -> np.ndarray:
    """One output's chunks joined along time, time first (stacked, for a port without a time axis)."""
    ax = port.stream_time_axis
    if ax is None:
        return np.stack(parts)
    y, time_first = np.concatenate(parts, axis=ax), to_front(len(port.stream_shape), ax)
    return y if time_first is None else y.transpose(time_first)
