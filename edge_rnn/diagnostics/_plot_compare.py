"""One figure comparing diagnosed models side by side (matplotlib, the ``diag`` extra): ``edge-rnn diagnose --demo``.

Rows, each drawn from the diagnoses given (by name, e.g. "rnn", "lstm", "gru"):

1. accuracy by lag on a task, when given (chance as a dotted line); the memory horizons of each model's keep gate
   as the share of units whose horizon is at most k (a curve ending below 1: units beyond the data); gradient
   flow ``||dh_T / dx_t||`` relative to lag 0, each model against the untrained baselines of the first one;
2. the gates, one small axis per gate of each model's first layer (LSTM i f g o, GRU r z n, RNN a): the share of
   unit-steps at each value;
3. each model's empirical memory curves: PyTorch, its export and its int8 variant (the ``compare`` files) on one
   axis, so a variant that shortens the memory shows as a curve falling earlier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_rnn.diagnostics._plot import _GATE_NAMES, _pyplot
from edge_rnn.diagnostics._types import Diagnosis
from edge_rnn.errors import EdgeRnnError

__all__ = ["plot_comparison"]

_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown")
_CURVE_STYLES = ({"linewidth": 2.6, "alpha": 0.55}, {"linewidth": 1.2, "linestyle": "--", "color": "black"},
                 {"linewidth": 1.6, "color": "tab:orange", "marker": "o", "markersize": 2})


def plot_comparison(diagnoses: Mapping[str, Diagnosis], path: str | Path, *,
                    accuracy: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
                    chance: float | None = None, title: str | None = None) -> Path:
    """Write the figure comparing ``diagnoses`` (name -> diagnosis, in order) to ``path``; ``accuracy``: name ->
    (lags, accuracy at each) on a task, drawn first when given, with ``chance`` as a line. Returns the path."""
    if not diagnoses:
        raise EdgeRnnError("plot_comparison: expected at least one diagnosis, got none")
    plt = _pyplot()
    fig = plt.figure(figsize=(18, 13))
    path = Path(path)
    try:  # closed however the drawing or the writing ends: pyplot keeps every open figure
        _draw(fig, diagnoses, accuracy, chance)
        fig.suptitle(title or "edge-rnn diagnose: " + ", ".join(diagnoses), fontsize=15, y=0.95)
        try:
            fig.savefig(path, dpi=90, bbox_inches="tight")
        except (OSError, ValueError) as e:
            raise EdgeRnnError(f"plot {path}: cannot write the figure ({type(e).__name__}: {e})") from None
    finally:
        plt.close(fig)
    return path


def _draw(fig, diagnoses: Mapping[str, Diagnosis], accuracy: Mapping | None, chance: float | None) -> None:
    """The panels: accuracy, horizons and gradient flow on top, one axis per gate, one memory curve per model."""
    from matplotlib.gridspec import GridSpec

    names = list(diagnoses)
    colours = {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(names)}
    gates = [(n, h) for n in names for h in _first_layer(diagnoses[n])]
    cols = max(len(gates), 3 * len(names), 6)
    grid = GridSpec(3, cols, figure=fig, height_ratios=[1.15, 0.75, 1.0], hspace=0.55, wspace=0.9)
    third = cols // 3
    top = [fig.add_subplot(grid[0, i * third:(i + 1) * third]) for i in range(3)]
    if accuracy:
        _accuracy(top[0], accuracy, chance, colours)
    else:
        top[0].set_visible(False)
    _horizons(top[1], diagnoses, colours)
    _gradient(top[2], diagnoses, colours)
    _gate_row(fig, grid, cols, gates, colours)
    span = cols // len(names)
    for i, name in enumerate(names):
        _memory(fig.add_subplot(grid[2, i * span:(i + 1) * span]), name, diagnoses[name], colours[name])


def _gate_row(fig, grid, cols: int, gates: list, colours: dict[str, str]) -> None:
    """One small axis per gate, across the middle row."""
    width = cols // max(len(gates), 1)
    for i, (name, h) in enumerate(gates):
        ax = fig.add_subplot(grid[1, i * width:(i + 1) * width])
        _gate(ax, name, h, colours[name])
        if i == 0:
            ax.set_ylabel("share of unit-steps", fontsize=9)


def _first_layer(d: Diagnosis) -> list:
    first = d.histograms[0].layer if d.histograms else None
    return [h for h in d.histograms if h.layer == first]


def _accuracy(ax, accuracy: Mapping[str, tuple[Sequence[int], Sequence[float]]], chance: float | None,
              colours: dict[str, str]) -> None:
    for name, (lags, acc) in accuracy.items():  # "lstm int8": lstm's colour, dashed
        base, _, variant = name.partition(" ")
        ax.plot(lags, acc, marker="x" if variant else "o", linewidth=1.2 if variant else 2.2,
                linestyle="--" if variant else "-", color=colours.get(base), label=name)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.3g})")
    ax.set_xscale("log")
    ax.set_xticks(sorted({k for lags, _ in accuracy.values() for k in lags}))
    ax.get_xaxis().set_major_formatter(_plain())
    ax.set_ylim(0, 1.05)
    ax.set_title("Task accuracy by lag")
    ax.set_xlabel("lag: steps between the marked symbol and the query")
    ax.set_ylabel("share answered right")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower left")


def _plain():
    from matplotlib.ticker import ScalarFormatter

    f = ScalarFormatter()
    f.set_scientific(False)
    return f


def _horizons(ax, diagnoses: Mapping[str, Diagnosis], colours: dict[str, str]) -> None:
    top = 1.0
    without = []
    for name, d in diagnoses.items():
        if not d.horizons:
            without.append(name)
            continue
        h = d.horizons[0]
        steps = np.sort(h.steps)
        finite = steps[np.isfinite(steps)]
        share = np.arange(1, len(finite) + 1) / len(steps)
        top = max(top, float(finite.max()) if len(finite) else 1.0)
        beyond = len(steps) - len(finite)
        p10, p50, p90 = h.quantiles()
        ax.step(finite, share, where="post", linewidth=2, color=colours[name],
                label=f"{name} ({h.gate}): p10/p50/p90 {_g(p10)}/{_g(p50)}/{_g(p90)}"
                      + (f", {beyond} beyond the data" if beyond else ""))
    ax.set_xscale("log")
    ax.set_xlim(0.8, top * 1.5)
    ax.get_xaxis().set_major_formatter(_plain())
    ax.set_ylim(0, 1.02)
    ax.set_title("Memory horizons: units remembering at most k steps")
    ax.set_xlabel("horizon k (steps until the keep gate's product < 1/e)")
    ax.set_ylabel("share of units")
    if without:
        ax.text(0.98, 0.04, f"{', '.join(without)}: no keep gate", transform=ax.transAxes, ha="right", fontsize=9,
                color="dimgrey")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


def _g(v: float) -> str:
    return f"{v:g}" if math.isfinite(v) else "inf"


def _gradient(ax, diagnoses: Mapping[str, Diagnosis], colours: dict[str, str]) -> None:
    greys = iter(("0.35", "0.55", "0.75", "0.85"))
    first = next(iter(diagnoses.values()))
    for name, d in diagnoses.items():
        if d.gradient:
            _line(ax, d.gradient[0], colour=colours[name], label=f"{name}, trained", width=2.4)
    for g in first.gradient[1:]:
        _line(ax, g, colour=next(greys, "0.8"), label=f"{g.label} (untrained)", width=1.3, style="--")
    ax.set_yscale("log")
    ax.set_title("Gradient flow: ||dh_T / dx_t|| relative to lag 0")
    ax.set_xlabel("lag T - t (steps)")
    ax.set_ylabel("relative norm (log)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _line(ax, g, *, colour: str, label: str, width: float, style: str = "-") -> None:
    rel = g.relative()
    keep = rel > 0
    ax.plot(g.lags[keep], rel[keep], color=colour, linewidth=width, linestyle=style, label=label)


def _gate(ax, name: str, h, colour: str) -> None:
    centres = (h.edges[:-1] + h.edges[1:]) / 2
    share = h.counts / max(h.counts.sum(), 1)
    ax.fill_between(centres, share, step="mid", color=colour, alpha=0.35)
    ax.plot(centres, share, drawstyle="steps-mid", color=colour, linewidth=1.2)
    mean = float((centres * share).sum())
    ax.axvline(mean, color="black", linewidth=0.8, linestyle=":")
    ax.set_title(f"{name}: {_GATE_NAMES.get(h.gate, h.gate)}", fontsize=10)
    ax.set_xlim(h.edges[0], h.edges[-1])
    ax.set_xticks([h.edges[0], (h.edges[0] + h.edges[-1]) / 2, h.edges[-1]])
    ax.tick_params(labelsize=8)
    ax.text(0.5, 0.97, f"mean {mean:.2f}", transform=ax.transAxes, ha="center", va="top", fontsize=8)
    ax.set_xlabel("gate value", fontsize=8)
    ax.grid(True, alpha=0.3)


def _memory(ax, name: str, d: Diagnosis, colour: str) -> None:
    for i, m in enumerate(d.memory):
        rel = m.relative()
        keep = rel > 0
        style = dict(_CURVE_STYLES[min(i, len(_CURVE_STYLES) - 1)])
        style.setdefault("color", colour)
        ax.plot(m.lags[keep], rel[keep], label=f"{m.label}: 1/e at {_g(m.horizon())}", **style)
    ax.axhline(math.exp(-1), color="grey", linewidth=0.8, linestyle=":")
    ax.set_yscale("log")
    ax.set_title(f"{name}: memory curve, fp32 and int8")
    ax.set_xlabel("steps after the perturbed step")
    ax.set_ylabel("relative response (log)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
