"""The demo's figure: the diagnostics' side-by-side plot with each model's accuracy by lag."""

from __future__ import annotations

from pathlib import Path

from edge_rnn.demo._run import DemoResult

__all__ = ["demo_figure"]


def demo_figure(result: DemoResult, path: str | Path) -> Path:
    """Draw ``result`` (:func:`~edge_rnn.demo.run_demo`) to ``path``: accuracy by lag, horizons, gradient flow,
    gates and fp32/int8 memory curves of each trained model."""
    from edge_rnn.diagnostics._plot_compare import plot_comparison

    t = result.config.train
    return plot_comparison(
        {r.arch: r.diagnosis for r in result.results}, path,
        accuracy={name: (acc.lags, acc.accuracy) for r in result.results
                  for name, acc in ((r.arch, r.accuracy), (f"{r.arch} int8", r.int8_accuracy))},
        chance=t.task.chance,
        title=(f"Delayed recall, {t.task.symbols} symbols: vanilla RNN, LSTM and GRU of {t.hidden} units, trained "
               f"{t.steps} steps (seed {t.seed}), diagnosed"))
