"""The diagnostics figure (matplotlib, the ``diag`` extra); computations live elsewhere.

Four panels, each drawn only when the diagnosis has its data:

1. gate histograms, one line per gate of the first layer (0..1 for sigmoid gates, -1..1 for tanh);
2. the distribution of memory horizons over units, per layer, on a log axis (units beyond the data
   counted in the legend);
3. gradient flow: the norm of dh_T/dx_t against T - t on a log scale, relative to lag 0, for the
   model and the vanilla RNN, LSTM and GRU baselines;
4. the empirical memory curve: the output's response to one perturbed step against the lag,
   relative to lag 0, for each file (``--compare``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge_rnn.diagnostics._types import Diagnosis
from edge_rnn.errors import EdgeRnnError

__all__ = ["plot", "plot_target"]

_GATE_NAMES = {"i": "input i", "f": "forget f", "g": "candidate g", "o": "output o", "r": "reset r",
               "z": "update z", "n": "candidate n", "a": "tanh a"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EdgeRnnError("a plot needs matplotlib: pip install 'edge-rnn[diag]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_target(path: str | Path, what: str = "plot") -> Path:
    """Where a figure will go, checked before any work: a suffix matplotlib writes (.png, .svg, .pdf, ...), in
    an existing folder this process can write to (a file is created there and removed at once)."""
    import tempfile

    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})  # pgf: needs LaTeX
    if path.suffix[1:].lower() not in formats:
        raise EdgeRnnError(f"{what} {path}: expected a file name ending in one of "
                           f"{', '.join('.' + f for f in formats)}, got {path.suffix or 'no suffix'!r}")
    folder = path.parent
    if path.is_dir():
        raise EdgeRnnError(f"{what} {path}: expected a file name, got a directory")
    if not folder.is_dir():
        raise EdgeRnnError(f"{what} {path}: expected an existing folder to write it in, got "
                           f"{folder} ({'a file' if folder.exists() else 'no such folder'})")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise EdgeRnnError(f"{what} {path}: cannot write in {folder} ({e.strerror or e})") from None
    return path


def plot(diagnosis: Diagnosis, path: str | Path, *, title: str | None = None) -> Path:
    """Write the figure of ``diagnosis`` to ``path`` (PNG, SVG or PDF by its suffix); returns the path."""
    plt = _pyplot()
    panels = [p for p, has in (("gates", diagnosis.histograms), ("horizons", diagnosis.horizons),
                               ("gradient", diagnosis.gradient), ("memory", diagnosis.memory)) if has]
    if not panels:
        raise EdgeRnnError("nothing to plot: the diagnosis holds no gates, horizons, gradients or memory curves")
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.4 * rows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels):
        {"gates": _gates, "horizons": _horizons, "gradient": _gradient, "memory": _memory}[panel](ax, diagnosis)
        ax.grid(True, alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or f"edge-rnn diagnose: {diagnosis.source}", fontsize=13)
    fig.tight_layout()
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as e:  # an unknown format, or the folder gone since it was checked
        raise EdgeRnnError(f"plot {path}: cannot write the figure ({type(e).__name__}: {e})") from None
    finally:
        plt.close(fig)
    return path


def _gates(ax, d: Diagnosis) -> None:
    first = d.histograms[0].layer
    for h in (h for h in d.histograms if h.layer == first):
        centres = (h.edges[:-1] + h.edges[1:]) / 2
        share = h.counts / max(h.counts.sum(), 1)
        ax.plot(centres, share, drawstyle="steps-mid", label=_GATE_NAMES.get(h.gate, h.gate))
    ax.set_title(f"Gate activations ({first})")
    ax.set_xlabel("gate value")
    ax.set_ylabel("share of unit-steps")
    ax.legend(fontsize=9)


def _horizons(ax, d: Diagnosis) -> None:
    finite = [h.steps[np.isfinite(h.steps)] for h in d.horizons]
    top = max((f.max() for f in finite if len(f)), default=1.0)
    n = len(d.horizons)
    if top <= 60:  # short horizons: one bar per step count, the layers side by side
        width = 0.8 / n
        for i, (h, f) in enumerate(zip(d.horizons, finite)):
            values, counts = np.unique(f, return_counts=True)
            ax.bar(values - 0.4 + width * (i + 0.5), counts, width=width, label=_horizon_label(h))
        ax.set_xlim(0, top + 1)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        bins = np.logspace(0, math.log10(top) + 0.05, 30)
        for h, f in zip(d.horizons, finite):
            ax.hist(f, bins=bins, histtype="step", linewidth=1.5, label=_horizon_label(h))
        ax.set_xscale("log")
    ax.set_title("Memory horizon per unit (steps until the gate product < 1/e)")
    ax.set_xlabel("horizon (steps)")
    ax.set_ylabel("units")
    ax.legend(fontsize=8)


def _horizon_label(h) -> str:
    beyond = int((~np.isfinite(h.steps)).sum())
    label = f"{h.layer} ({h.gate}), median {np.median(h.steps):g}"
    return label + (f", {beyond} beyond the data" if beyond else "")


def _gradient(ax, d: Diagnosis) -> None:
    for i, g in enumerate(d.gradient):
        rel = g.relative()
        keep = rel > 0
        ax.plot(g.lags[keep], rel[keep], label=g.label, linewidth=2.4 if i == 0 else 1.4,
                linestyle="-" if i == 0 else "--")
    ax.set_yscale("log")
    ax.set_title("Gradient flow: ||dh_T / dx_t|| relative to lag 0")
    ax.set_xlabel("lag T - t (steps)")
    ax.set_ylabel("relative norm (log)")
    ax.legend(fontsize=9)


def _memory(ax, d: Diagnosis) -> None:
    for m in d.memory:
        rel = m.relative()
        keep = rel > 0
        ax.plot(m.lags[keep], rel[keep], marker="o", markersize=3, label=f"{m.label} (1/e at {m.horizon():g})")
    ax.axhline(math.exp(-1), color="grey", linewidth=0.8, linestyle=":", label="1/e")
    ax.set_yscale("log")
    ax.set_title("Empirical memory: output response to one perturbed step")
    ax.set_xlabel("steps after the perturbation")
    ax.set_ylabel("relative response (log)")
    ax.legend(fontsize=9)
