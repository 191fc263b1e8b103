"""What an ONNX file alone shows, and the summary table of any diagnosis (numpy + onnxruntime, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_rnn._progress import Progress, Ticker
from edge_rnn.diagnostics._memory import memory_curve
from edge_rnn.diagnostics._types import Diagnosis, GateStats, GradientFlow, Horizon, MemoryCurve

__all__ = ["diagnose_onnx", "diagnose_bundle", "summary"]


def diagnose_onnx(path: str | Path, x: np.ndarray, *, max_lag: int = 50, starts: int = 8,
                  compare: Sequence[Any] = (), seed: int = 0, progress: Progress | None = None,
                  what: str | None = None) -> Diagnosis:
    """What an ONNX file alone shows (torch is not needed for this part): its empirical memory curve, and those of
    ``compare`` (paths, or loaded ``StreamingModel`` objects such as a bundle's variants). Gate statistics and
    gradient flow need the PyTorch model. ``progress`` (:mod:`edge_rnn._progress`): one unit per curve. ``what``
    names ``x`` in a refusal (``--input x.npy``)."""
    d = Diagnosis(source=str(path))
    models = (path, *compare)
    ticker = Ticker(progress, len(models), "memory curves")
    for model in models:
        d.memory.append(memory_curve(model, x, max_lag=max_lag, starts=starts, seed=seed, what=what))
        ticker.advance(1)
    d.notes.append("gate statistics, memory horizons and gradient flow need the PyTorch model (--arch or a "
                   "FACTORY); an ONNX file shows its empirical memory curve")
    return d


def diagnose_bundle(folder: str | Path, x: np.ndarray, *, max_lag: int = 50, starts: int = 8,
                    seed: int = 0, progress: Progress | None = None, what: str | None = None) -> Diagnosis:
    """The memory curve of every variant of a bundle (``edge-rnn package``), each loaded and hash-checked
    as ``StreamingModel.load(folder, variant=...)`` does: whether a variant shortened what the model remembers.
    ``progress`` (:mod:`edge_rnn._progress`): one unit per variant."""
    from edge_rnn.runtime import StreamingModel
    from edge_rnn.runtime._bundle import load_manifest

    folder = Path(folder)
    d = Diagnosis(source=str(folder))
    names = list(load_manifest(folder).variants)
    ticker = Ticker(progress, len(names), "memory curves")
    for name in names:
        model = StreamingModel.load(folder, variant=name)
        d.memory.append(memory_curve(model, x, max_lag=max_lag, starts=starts, seed=seed, label=name, what=what))
        ticker.advance(1)
    d.notes.append("a bundle holds ONNX files: gate statistics, memory horizons and gradient flow need the PyTorch "
                   "model (--arch or a FACTORY)")
    return d


def summary(d: Diagnosis) -> list[str]:
    """The table ``edge-rnn diagnose`` prints, as lines."""
    return [
        f"# {d.source}",
        *_gate_lines(d.stats),
        *map(_horizon_line, d.horizons),
        *map(_gradient_line, d.gradient),
        *map(_memory_line, d.memory),
        *(f"note: {n}" for n in d.notes),
    ]


def _gate_lines(stats: Sequence[GateStats]) -> list[str]:
    """A header and one row per gate of each layer; nothing when there are no gate statistics."""
    if not stats:
        return []
    rows = [f"{s.layer:<22} {s.gate:<5} {s.mean.mean():>6.3f} {s.near_zero.mean():>7.3f} {s.near_one.mean():>7.3f}"
            for s in stats]
    return [f"{'layer':<22} {'gate':<5} {'mean':>6} {'near 0':>7} {'near 1':>7}   (fraction of unit-steps)", *rows]


def _horizon_line(h: Horizon) -> str:
    p10, p50, p90 = h.quantiles()
    beyond = int((~np.isfinite(h.steps)).sum())
    return (f"memory horizon {h.layer} ({h.gate}): p10 {p10:g}, median {p50:g}, p90 {p90:g} steps over "
            f"{len(h.steps)} units" + (f"; {beyond} beyond the data" if beyond else ""))


def _gradient_line(g: GradientFlow) -> str:
    rel = g.relative()
    at = {k: rel[k] for k in _lags_shown(len(rel), (10, 25, 50))}
    return f"gradient flow, {g.label}: " + ", ".join(f"lag {k}: {v:.2e}" for k, v in at.items())


def _memory_line(m: MemoryCurve) -> str:
    rel = m.relative()
    at = {k: rel[k] for k in _lags_shown(len(rel), (1, 10, 25, 50))}
    h = m.horizon()
    after = f"{h:g} steps" if np.isfinite(h) else f"more than {int(m.lags[-1])} steps (beyond the curve)"
    return (f"memory curve, {m.label}: 1/e after {after}; " +
            ", ".join(f"lag {k}: {v:.3f}" for k, v in at.items()) + f" (mean of {m.starts} starts)")


def _lags_shown(n: int, marks: tuple[int, ...]) -> list[int]:
    """The lags of a curve of ``n`` points (lags 0 .. n - 1) that a summary line shows: the ``marks`` it reaches, and
    its last lag where no mark is it, so that a short curve (``--max-lag 3``) still shows where it ends; lag 1 too
    when no mark is reached."""
    shown = [k for k in marks if k < n]
    if not shown and n > 2:
        shown = [1]
    return shown + [n - 1] if n > 1 and (n - 1) not in shown else shown
