"""What a stream may feed a model: one chunk's arrays checked against the model's ports before any state moves.

:class:`ChunkChecker` is built once per model from its ports; the single
stream's step and the batch stepper both validate through it, so a chunk is
refused with the same error whichever path it takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_rnn.errors import NonFiniteError, ShapeError
from edge_rnn.runtime._ports import Port

__all__ = ["ChunkChecker", "Arrays"]

Arrays = dict[str, np.ndarray]
_MAX_LAYOUTS = 64  # chunk layouts remembered as valid, per model


def _steps_mismatch(p: Port, a: np.ndarray, rank: int, fixed: list[tuple[int, int]]) -> str | None:
    """The message for a chunk that is right but for its number of steps, on a model with a fixed chunk."""
    t = p.stream_time_axis
    steps = None if t is None else p.stream_shape[t]
    shape = a.shape
    if steps is None or a.dtype != p.dtype or len(shape) != rank or shape[t] == steps:
        return None
    if not all(shape[i] == d for i, d in fixed if i != t):
        return None
    return (f"{p.name}: expected exactly {steps} time step(s) per call (this model has a fixed chunk, a static form "
            f"for NPUs), got {shape[t]}")


def _checked_array(p: Port, a: Any, rank: int, fixed: list[tuple[int, int]]) -> np.ndarray:
    """One input of one stream's chunk as an array of the port's dtype, rank and fixed sizes, not empty."""
    if type(a) is not np.ndarray:
        a = _from_values(p, a)
    shape = a.shape
    if a.dtype != p.dtype or len(shape) != rank or any(shape[i] != d for i, d in fixed):
        fixed_chunk = _steps_mismatch(p, a, rank, fixed)
        if fixed_chunk is not None:
            raise ShapeError(fixed_chunk)
        hint = f" (cast it: .astype(np.{p.dtype}))" if a.dtype != p.dtype and a.dtype.kind == p.dtype.kind else ""
        raise ShapeError(f"{p.name}: expected shape {p.describe()}, got {shape} {a.dtype}{hint}")
    if a.size == 0:
        raise ShapeError(f"{p.name}: expected at least one time step, got an empty chunk of shape {shape}")
    return a


def _integers(p: Port, a: Any) -> np.ndarray:
    """Integers stay integers: 1.5 for a token id is refused, not rounded to 1; nor is a value beyond the dtype
    wrapped around."""
    raw = np.asarray(a)
    if raw.dtype.kind not in ("b" if p.dtype.kind == "b" else "iu") and raw.size:
        first = raw.reshape(-1)[:1].tolist()[0]
        raise ShapeError(f"{p.name}: expected {p.dtype} values, got {raw.dtype} ({first!r}, ...)")
    if raw.size and raw.dtype.kind in "iu":
        info = np.iinfo(p.dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ShapeError(f"{p.name}: expected values within {p.dtype}'s range, got {raw.min()}..{raw.max()}")
    return raw.astype(p.dtype)


def _from_values(p: Port, a: Any) -> np.ndarray:
    """Nested lists (or scalars, tuples, array-likes) as an array of the port's dtype; never a silent rounding."""
    try:
        if p.dtype.kind != "f":
            return _integers(p, a)
        with np.errstate(over="raise"):  # 1e300 in a list is finite, just beyond float32: say so
            return np.asarray(a, dtype=p.dtype)
    except ShapeError:
        raise
    except FloatingPointError:
        raise ShapeError(f"{p.name}: expected values within {p.dtype}'s range, got a finite value beyond it "
                         "(it would become Inf)") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise ShapeError(f"{p.name}: expected an array of shape {p.describe()}, got {type(a).__name__} "
                         f"that numpy cannot convert ({e})") from None


class ChunkChecker:
    """One model's checks of a stream's chunk: names, dtypes, shapes, time steps, and values (NaN or Inf unless
    ``allow_nonfinite``; an integer input outside the range its contract gives)."""

    def __init__(self, inputs: tuple[Port, ...], *, allow_nonfinite: bool = False):
        self.inputs = inputs
        self.allow_nonfinite = allow_nonfinite
        self.single = inputs[0].name if len(inputs) == 1 else None  # the one input's name, or None
        self._names = {p.name for p in inputs}
        self._ranges = {p.name: p.values for p in inputs if p.values is not None}
        # per input: (port, per-stream rank, its fixed sizes by axis, per-stream time axis); precomputed
        self._checks = [(p, len(p.stream_shape), [(i, d) for i, d in enumerate(p.stream_shape) if d is not None],
                         p.stream_time_axis) for p in inputs]
        self.layouts: dict[tuple, int] = {}  # (shape, dtype) of single-input chunks that passed -> their steps

    def remember(self, a: np.ndarray, steps: int) -> None:
        """A single-input chunk's layout passed every shape check: the next one alike skips them."""
        if len(self.layouts) < _MAX_LAYOUTS:
            self.layouts[a.shape, a.dtype] = steps

    def prepare(self, x: Any, *, check_finite: bool = True) -> tuple[Arrays, int]:
        """Validate one stream's chunk; returns the arrays (no batch axis) and the number of time steps."""
        if type(x) is np.ndarray or not isinstance(x, Mapping):
            if self.single is None:
                raise ShapeError(f"expected a dict with inputs {[p.name for p in self.inputs]}, got "
                                 f"{type(x).__name__}")
            x = {self.single: x}
        elif x.keys() != self._names:
            raise ShapeError(f"expected inputs {sorted(self._names)}, got {sorted(x)}")
        out: Arrays = {}
        steps: int | None = None
        for p, rank, fixed, t in self._checks:
            a = _checked_array(p, x[p.name], rank, fixed)
            n = 1 if t is None else a.shape[t]
            if steps is not None and n != steps:
                raise ShapeError(f"{p.name}: expected {steps} time steps like the other inputs, got {n}")
            steps = n
            if check_finite:
                self.check_values(p.name, a)
            out[p.name] = a
        return out, steps or 1

    def check_values(self, name: str, a: np.ndarray) -> None:
        """NaN or Inf in a float input (unless allow_nonfinite), or an integer input outside its range: refused."""
        if a.dtype.kind == "f":
            self.check_finite(name, a)
        elif name in self._ranges:
            low, high = self._ranges[name]
            smallest, largest = int(a.min()), int(a.max())
            if smallest < low or largest > high:
                bad = smallest if smallest < low else largest
                raise ShapeError(f"{name}: expected values in [{low}, {high}] (the rows of the table it indexes), "
                                 f"got {bad}")

    def values_ok(self, name: str, a: np.ndarray) -> bool:
        try:
            self.check_values(name, a)
        except (NonFiniteError, ShapeError):
            return False
        return True

    def check_finite(self, name: str, a: np.ndarray) -> None:
        # One sum of squares finds any NaN or Inf (both propagate into it); only one that overflowed
        # from finite values needs the element-wise look. np.vdot is not a ufunc: no floating-point
        # warning to silence (np.errstate costs more than the dot on a small batch). One step of one
        # stream (up to 128 values) is summed in Python, ~4 us less on the demo LSTM's step.
        if self.allow_nonfinite:
            return
        flat = a.reshape(-1)
        total = sum(flat.tolist()) if flat.size <= 128 else float(np.vdot(flat, flat))
        if not math.isfinite(total) and not np.isfinite(a).all():
            raise NonFiniteError(
                f"{name}: expected finite values, got NaN or Inf (load with allow_nonfinite=True, or "
                "--allow-nonfinite on the command line, to let them in)"
            )
