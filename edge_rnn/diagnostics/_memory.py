"""The empirical memory curve of an exported model, from its ONNX file alone (numpy + onnxruntime, no torch).

Perturb the input at one step, stream on, and record how far the primary
output moves over the following steps; average over several perturbation
points. Works for any streaming model the runtime loads, third-party files and
int8/fp16 variants included, so comparing two files' curves shows whether a
variant shortened what the model remembers.

The procedure, one copy of it for every backend (:func:`curve_from`):

1. for each start ``t0``: from the state after ``x[:t0]``, the window
   ``x[t0 : t0 + max_lag + 1]`` twice, as it is and with ``x[t0]`` perturbed,
   in the same calls; the norm of the difference of the two outputs at each of
   its steps (over the output's other axes);
2. the mean over starts, per lag.

Both windows go through the backend the same way, one step per call (a
static form: its fixed chunk), so whatever it does per call is the same on
both sides after the perturbed step: a dynamic int8 variant quantises each
call's activations with a scale taken over that call, and comparing windows
cut into other calls would measure that, not memory.

A float input gets ``scale x std(x)`` times a random unit vector (one per
start, from ``seed``), computed in float64 so that the size follows the data
whatever its scale; an integer input (token ids) gets another id at that
step, drawn from the contract's range.

Every path refuses an input holding NaN or Inf (:func:`finite_input`, the one
check), and a curve is never returned with a figure that is not finite: a
perturbed step beyond the input dtype's range, or a model whose output
overflows on the input, is an error that says which.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_rnn.diagnostics._types import MemoryCurve
from edge_rnn.errors import NonFiniteError, ShapeError, UnsupportedError
from edge_rnn.runtime._sequence_fit import check_fits

__all__ = ["memory_curve", "curve_from", "perturbations", "start_points", "finite_input", "peak"]

# run_windows(x, t0s, windows) -> the primary output of each window (time first), each run from the state after
# x[:t0] (t0s repeat: each start has a perturbed and a plain window)
RunWindows = Callable[[np.ndarray, list[int], list[np.ndarray]], list[np.ndarray]]


def peak(x: np.ndarray) -> float:
    """The largest magnitude in ``x`` (0 for an empty or non-float array), for messages about scale."""
    return float(np.max(np.abs(x), initial=0.0)) if x.dtype.kind == "f" and x.size else 0.0


def finite_input(x: Any, dtype: Any = None, what: str = "diagnose input") -> np.ndarray:
    """``x`` as an array (in ``dtype``, when given, for a float input), refused when it holds NaN or Inf or when
    the cast takes a finite value beyond ``dtype``'s range: the one input check of every diagnostics path."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        return x
    bad = ~np.isfinite(x)
    if bad.any():
        where = f", the first at step {int(np.argwhere(bad)[0][0])} of {len(x)}" if x.ndim else ""
        raise NonFiniteError(f"{what}: expected finite values, got NaN or Inf ({int(bad.sum()):,} of {x.size:,}"
                             f"{where}); a diagnosis of NaN would be NaN")
    if dtype is None or np.dtype(dtype) == x.dtype or np.dtype(dtype).kind != "f":
        return x
    with np.errstate(over="ignore"):
        cast = x.astype(dtype)
    if not np.isfinite(cast).all():
        raise NonFiniteError(f"{what}: expected values within {np.dtype(dtype)}'s range (the model's input dtype), "
                             f"got {x.dtype} values up to {peak(x):.3g}, beyond {float(np.finfo(dtype).max):.3g}")
    return cast


def start_points(steps: int, max_lag: int, starts: int, every: int = 1) -> list[int]:
    """Up to ``starts`` perturbation steps spread evenly over the sequence, each with ``max_lag`` steps after it
    (multiples of ``every``, for a model with a fixed chunk)."""
    last = steps - max_lag - 1
    if last < 0:
        raise ShapeError(f"memory curve: expected a sequence of more than max_lag={max_lag} steps, got {steps}")
    points = np.linspace(0, last, num=min(starts, last // every + 1)).astype(int) // every * every
    return sorted(set(points.tolist()))


def perturbations(x: np.ndarray, t0s: list[int], scale: float, seed: int,
                  ids: tuple[int, int] | None = None) -> list[np.ndarray]:
    """The perturbed value of ``x[t0]`` for each start: float inputs moved by ``scale x std(x)`` along a random
    unit vector; integer inputs (ids in the inclusive range ``ids``) replaced by another id."""
    rng = np.random.default_rng(seed)
    out = []
    if x.dtype.kind in "iu":
        if ids is None:
            raise UnsupportedError("memory curve: an integer input needs the range of its values (the contract's "
                                   "`values`), to draw another id from")
        low, high = ids
        if high <= low:
            raise UnsupportedError(f"memory curve: expected at least two ids to choose from, got [{low}, {high}]")
        for t0 in t0s:
            new = rng.integers(low, high, size=x[t0].shape, endpoint=True).astype(x.dtype)
            same = new == x[t0]
            new[same] = np.where(x[t0][same] < high, x[t0][same] + 1, low).astype(x.dtype)  # never the same id
            out.append(new)
        return out
    if x.dtype.kind != "f":
        raise UnsupportedError(f"memory curve: expected a float or integer input, got {x.dtype}")
    size = float(scale) * (_std(x) or 1.0)
    for t0 in t0s:
        u = rng.standard_normal(x[t0].shape)
        value = x[t0].astype(np.float64) + size * u / np.linalg.norm(u)
        with np.errstate(over="ignore"):
            cast = value.astype(x.dtype)
        if not np.isfinite(cast).all():
            raise NonFiniteError(
                f"memory curve: the perturbation of step {t0} ({scale} x the input's std = {size:.3g}) takes it "
                f"beyond {x.dtype}'s range: the input is finite, its values reach {peak(x):.3g}, too close to "
                f"{float(np.finfo(x.dtype).max):.3g} to perturb; scale the input down")
        out.append(cast)
    return out


def _std(x: np.ndarray) -> float:
    """The standard deviation of a finite float array, without overflow at any scale (float32's square of 1e30
    is inf; float64's of 1e200 too): computed on ``x`` divided by its peak."""
    top = peak(x)
    return top * float(np.std(np.asarray(x, np.float64) / top)) if top > 0 else 0.0


def curve_from(run_windows: RunWindows, x: np.ndarray, *, max_lag: int, starts: int, scale: float, seed: int,
               label: str, ids: tuple[int, int] | None = None, every: int = 1) -> MemoryCurve:
    """The procedure of the module docstring over any backend (see :data:`RunWindows`)."""
    if max_lag < 1 or starts < 1 or scale <= 0:
        raise ShapeError(f"memory curve: expected max_lag >= 1, starts >= 1 and scale > 0, got {max_lag}, {starts}, "
                         f"{scale}")
    x = finite_input(x)
    t0s = start_points(len(x), max_lag, starts, every)
    windows, plain = [], []
    for t0, value in zip(t0s, perturbations(x, t0s, scale, seed, ids)):
        w = x[t0 : t0 + max_lag + 1].copy()
        plain.append(w.copy())
        w[0] = value
        windows.append(w)
    # each perturbed window against the same window unperturbed, run the same way in the same calls: what a
    # backend does per call (a dynamic int8 scale over the batch, say) is the same on both sides
    ys = run_windows(x, t0s + t0s, windows + plain)
    _finite_outputs(ys, t0s, x, label)
    diffs = []
    for y, ref in zip(ys[: len(t0s)], ys[len(t0s):]):
        d = (np.asarray(y, np.float64) - np.asarray(ref, np.float64)).reshape(max_lag + 1, -1)
        diffs.append(np.sqrt((d * d).sum(axis=1)))
    delta = float(np.mean([np.linalg.norm((np.asarray(w[0], np.float64) - x[t0]).ravel())
                           for t0, w in zip(t0s, windows)]))
    response = np.mean(diffs, axis=0)
    if not np.isfinite(response).all():  # finite float32 outputs cannot get here; a float64 model's might
        raise NonFiniteError(f"memory curve of {label}: the output's response overflows float64 (outputs up to "
                             f"{max(peak(np.asarray(y, np.float64)) for y in ys):.3g})")
    return MemoryCurve(label=label, lags=np.arange(max_lag + 1), response=response, starts=len(t0s), scale=delta)


def _finite_outputs(ys: list[np.ndarray], t0s: list[int], x: np.ndarray, label: str) -> None:
    """Refuse a curve whose outputs are not finite, saying so: the input was checked finite, so it is the model
    (or the perturbation it was given) that overflowed, never the user's data that holds NaN."""
    for i, y in enumerate(ys):
        y = np.asarray(y)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            which = "perturbed" if i < len(t0s) else "unperturbed"
            t0 = t0s[i % len(t0s)]
            raise NonFiniteError(
                f"memory curve of {label}: the model's output is NaN or Inf on the {which} window at step {t0}, "
                f"for finite input (values up to {peak(x):.3g}): the model overflows at this input's scale; give "
                "input of the scale it was trained on")


class _OnnxRunner:
    """:data:`RunWindows` over a StreamingModel: snapshots of one stream at the starts, the windows batched."""

    def __init__(self, model: Any):
        self.model = model
        self.port, self.out = model.inputs[0], model.outputs[0]
        self.t_in, self.t_out = self.port.stream_time_axis, self.out.stream_time_axis
        self.fixed = self.port.stream_shape[self.t_in] if self.t_in is not None else None  # a static form's chunk

    def chunks(self, seq: np.ndarray, cuts: set[int] = frozenset(), size: int | None = None) -> list[np.ndarray]:
        """``seq`` (time first) as the model's calls: one row per call, or pieces in its layout of ``size`` steps
        (None: as long as they can be), cut at ``cuts`` and at every fixed chunk."""
        if self.t_in is None:
            return list(seq)  # one step per call
        step = self.fixed or size or max(len(seq), 1)
        edges = set(cuts) | set(range(0, len(seq), step)) | {len(seq)}
        edges = sorted(e for e in edges if 0 <= e <= len(seq))
        return [np.moveaxis(seq[a:b], 0, self.t_in) for a, b in zip(edges, edges[1:])]

    def time_first(self, ys: list[np.ndarray]) -> np.ndarray:
        if self.t_out is None:
            return np.stack(ys).astype(np.float64)
        return np.moveaxis(np.concatenate(ys, axis=self.t_out), self.t_out, 0).astype(np.float64)

    def snapshots(self, seq: np.ndarray, points: set[int]) -> dict[int, bytes]:
        """The state after ``seq[:t0]`` for each ``t0`` in ``points``, streamed from zeros up to the last."""
        stream, done, out = self.model.open_stream(), 0, {}
        for c in self.chunks(seq[: max(points)], points):
            if done in points:
                out[done] = stream.snapshot()
            self.model.step(stream, c)
            done += 1 if self.t_in is None else c.shape[self.t_in]
        if done in points:
            out[done] = stream.snapshot()
        stream.close()
        return out

    def run_windows(self, x: np.ndarray, t0s: list[int], windows: list[np.ndarray]) -> list[np.ndarray]:
        model, snaps = self.model, self.snapshots(x, set(t0s))
        streams = [model.restore(snaps[t0]) for t0 in t0s]
        per = [self.chunks(w, size=1) for w in windows]  # step by step, as a stream runs in real time
        ys: list[list[np.ndarray]] = [[] for _ in t0s]
        for k in range(len(per[0])):
            for i, res in enumerate(model.step_batch([(s, p[k]) for s, p in zip(streams, per)])):
                ys[i].append(res[self.out.name])
        for s in streams:
            s.close()
        return [self.time_first(y) for y in ys]


def memory_curve(model: Any, x: np.ndarray, *, max_lag: int = 50, starts: int = 8, scale: float = 0.5,
                 seed: int = 0, label: str | None = None, what: str | None = None) -> MemoryCurve:
    """The empirical memory curve of a streaming ONNX model (a path or a loaded ``StreamingModel``).

    ``x`` is one sequence of the model's single input, time first: ``(time, *frame)``, as
    :func:`~edge_rnn.runtime.run_sequence` takes it. The curve is of the model's primary (first) output.
    Its ``label`` is by default the file's name; a bundle's variant adds ``(folder:variant)``. ``what`` names ``x``
    in a refusal (``--input x.npy``): a sequence that does not fit the input is refused whole, with its own shape and
    dtype, before any window is cut from it.
    """
    model, label = _loaded(model, label)
    if len(model.inputs) != 1:
        raise UnsupportedError(f"memory curve: expected a model with one input, got {[p.name for p in model.inputs]}")
    port = model.inputs[0]
    x = np.asarray(x)
    check_fits(port, x.shape, x.dtype, what or "x", model=label or model.source)
    x = finite_input(x, port.dtype if port.dtype.kind == "f" else None, what=what or "diagnose input")
    every = _steps_per_call(port, max_lag)
    x = x[: len(x) - len(x) % every]
    return curve_from(_OnnxRunner(model).run_windows, x, max_lag=max_lag, starts=starts, scale=scale, seed=seed,
                      label=label or model.source, ids=port.values, every=every)


def _loaded(model: Any, label: str | None) -> tuple[Any, str | None]:
    """``model`` loaded (a path) or as given, and its label: the one given, else the file's name or, for a bundle's
    variant, ``name (folder:variant)``; None leaves it to the model's source."""
    from edge_rnn.runtime import StreamingModel

    if isinstance(model, (str, Path)):
        return StreamingModel.load(model), label or Path(model).name
    if label is None and getattr(model, "variant", None) is not None:
        source = Path(model.source)
        label = f"{source.name} ({source.parent.name}:{model.variant})"
    return model, label


def _steps_per_call(port: Any, max_lag: int) -> int:
    """The steps every call of the input ``port`` takes (1 unless the graph fixes a chunk); the window of
    ``max_lag + 1`` steps must be a whole number of calls."""
    t = port.stream_time_axis
    every = (port.stream_shape[t] if t is not None else None) or 1
    if (max_lag + 1) % every:
        raise ShapeError(f"memory curve: this model takes exactly {every} steps per call; expected max_lag + 1 to be "
                         f"a multiple of it, got max_lag={max_lag}")
    return every
