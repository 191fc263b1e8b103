"""What a stream may feed a model, and what a call may give back: checked before any state moves.

:class:`ChunkChecker` is built once per model from its ports; the single
stream's step and the batch stepper both validate through it, so a chunk is
refused with the same error whichever path it takes. :class:`ResultChecker`
looks at a call's outputs and new states before they are kept: NaN or Inf the
model computed from finite input (an overflow) is refused by the same
``allow_nonfinite`` policy, so a step that fails is never applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_rnn.contract import StateSpec
from edge_rnn.errors import NonFiniteError, ShapeError
from edge_rnn.runtime._ports import Port

__all__ = ["ChunkChecker", "ResultChecker", "Arrays", "float_values"]

Arrays = dict[str, np.ndarray]
_MAX_LAYOUTS = 64  # chunk layouts remembered as valid, per model
_PLAIN_NUMBERS = {int, float}
_NUMBERS = (int, float, np.integer, np.floating)  # bool (an int) aside
_SUMMED = 24  # results up to this many values are summed in Python, larger ones by np.vdot (faster from ~24 on)


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


def float_values(a: Any, dtype: np.dtype, name: str, shape: str) -> np.ndarray:
    """Nested lists (or scalars, tuples, array-likes) of numbers as an array of the float ``dtype``, else a
    ShapeError naming ``name`` and the ``shape`` expected: "1" or True is refused, not read as 1.0, and so is a
    finite value beyond the dtype (1e300 for float32), never turned into Inf."""
    expected = f"{name}: expected an array of shape {shape}"
    try:
        # nested lists as objects, so that a bool or a str among floats is seen (numpy would make them all floats)
        raw = np.asarray(a) if isinstance(a, np.ndarray) else np.asarray(a, dtype=object)
        odd = _not_numbers(raw)
        if odd is not None:
            raise ShapeError(f"{expected}, got {odd}: numbers only")
        with np.errstate(over="raise"):
            return raw.astype(dtype)
    except FloatingPointError:
        raise ShapeError(f"{name}: expected values within {dtype}'s range, got a finite value beyond it (it would "
                         "become Inf)") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise ShapeError(f"{expected}, got {type(a).__name__} that numpy cannot convert ({e})") from None


def _not_numbers(raw: np.ndarray) -> str | None:
    """What in ``raw`` is not a number ("str values ('1', ...)": a str, a bool, None, a list), or None when all
    values are numbers."""
    kind = raw.dtype.kind
    if kind in "iuf" or not raw.size:
        return None
    flat = raw.reshape(-1).tolist()
    if kind == "O":  # nested lists' values as they are: Python numbers (or numpy's), or anything else
        types = set(map(type, flat))
        if types <= _PLAIN_NUMBERS:
            return None
        odd = [t for t in types if issubclass(t, (bool, np.bool_)) or not issubclass(t, _NUMBERS)]
        if not odd:
            return None
        first = next(v for v in flat if type(v) in odd)
    else:  # an array of bools, strs, bytes, ...: every value
        first = flat[0]
    return f"{type(first).__name__} values ({first!r:.40}, ...)"


def _from_values(p: Port, a: Any) -> np.ndarray:
    """Nested lists (or scalars, tuples, array-likes) as an array of the port's dtype; never a silent rounding."""
    if p.dtype.kind == "f":
        return float_values(a, p.dtype, p.name, p.describe())
    try:
        return _integers(p, a)
    except ShapeError:
        raise
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


class ResultChecker:
    """One model's look at a call's outputs and new states before they are kept: NaN or Inf in a float one is
    refused unless ``allow_nonfinite`` (the policy of the :class:`ChunkChecker` it is handed, read on each call).

    With finite chunks and states, that is the model overflowing (finite input times huge weights): the stream is
    not advanced, as for a refused chunk. ``results`` are a call's arrays, the outputs and then the state outputs,
    in port and state order (the session runner's order).
    """

    def __init__(self, chunks: ChunkChecker, outputs: tuple[Port, ...], states: tuple[StateSpec, ...]):
        self._chunks = chunks
        found = [(f"output {p.name!r}", p.dtype, p.batch_axis) for p in outputs]
        found += [(f"state {s.input!r} (output {s.output!r})", np.dtype(s.dtype), s.batch_axis) for s in states]
        # (index in the results, what it is, its batch axis), for each float one: no other dtype holds NaN or Inf
        self._floats = [(i, label, axis) for i, (label, dtype, axis) in enumerate(found) if dtype.kind == "f"]
        self._index = [i for i, _, _ in self._floats]

    def _all_finite(self, results: list[np.ndarray]) -> bool:
        """Whether every float result is finite, or NaN and Inf are let through. One sum per array finds any NaN
        or Inf (both propagate into it; float32 values summed as Python floats cannot overflow), a dot of a
        larger one too; a dot that overflowed from finite values is told apart by the exact look after it."""
        if self._chunks.allow_nonfinite:
            return True
        total = 0.0
        for i in self._index:
            a = results[i]
            total += sum(a.ravel().tolist()) if a.size <= _SUMMED else float(np.vdot(a, a))
        return math.isfinite(total) or all(np.isfinite(results[i]).all() for i in self._index)

    def check(self, results: list[np.ndarray]) -> None:
        """One stream's call: raise NonFiniteError naming the first output or state with NaN or Inf."""
        if not self._all_finite(results):
            label = next(label for i, label, _ in self._floats if not np.isfinite(results[i]).all())
            raise NonFiniteError(f"{_overflow(label)}; the stream did not advance")

    def bad_rows(self, results: list[np.ndarray]) -> dict[int, str]:
        """A batched call's rows (positions on the batch axis) with NaN or Inf in an output or state, each with
        its message naming the first such one (what became of the stream is the caller's to add); empty when
        every row is good."""
        if self._all_finite(results):
            return {}
        bad: dict[int, str] = {}
        for i, label, axis in self._floats:
            a = results[i]
            ok = np.isfinite(a).all(axis=tuple(k for k in range(a.ndim) if k != axis))
            for row in np.flatnonzero(~ok).tolist():
                bad.setdefault(row, label)
        return {row: _overflow(label) for row, label in sorted(bad.items())}


def _overflow(label: str) -> str:
    return (f"{label}: expected finite values, got NaN or Inf from the model (an overflow; load with "
            "allow_nonfinite=True, or --allow-nonfinite on the command line, to let them through)")
