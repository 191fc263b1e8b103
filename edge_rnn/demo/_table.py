"""The demo's printed tables: accuracy by lag (fp32 and int8), then each model's horizons and memory curves."""

from __future__ import annotations

import math

import numpy as np

from edge_rnn.demo._file_model import CHUNK
from edge_rnn.demo._run import ArchResult, DemoResult

__all__ = ["demo_table"]


def _g(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "inf"


def _horizons(r: ArchResult) -> str:
    """p10/p50/p90 of the keep gate's horizons over units ("-": a vanilla RNN has no keep gate)."""
    return "/".join(map(_g, r.diagnosis.horizons[0].quantiles())) if r.diagnosis.horizons else "-"


def _at(curve, lag: int) -> str:
    rel = curve.relative()
    return f"{rel[lag]:.3f}" if lag < len(rel) else "-"


def _memory_row(r: ArchResult) -> str:
    """PyTorch's curve (the export's is the same: its largest difference is in the notes) beside the int8 one's."""
    torch_curve, _, int8_curve = r.diagnosis.memory
    last = int(torch_curve.lags[-1])
    reach = [f"{m.horizon():g}" if math.isfinite(m.horizon()) else f">{last}" for m in (torch_curve, int8_curve)]
    mid = min(50, last)
    return (f"{r.arch:<5} {_horizons(r):>18}  {' / '.join(reach):>12}  "
            f"{_at(torch_curve, mid) + ' / ' + _at(int8_curve, mid):>15}  "
            f"{_at(torch_curve, last) + ' / ' + _at(int8_curve, last):>15}  {r.int8_max_abs:9.2g}"
            + ("" if r.int8_ok else " (over)"))


def demo_table(result: DemoResult) -> list[str]:
    """Accuracy by lag, horizons, memory curves and training of each architecture, as lines to print."""
    c = result.config
    t = c.train
    lags = c.eval_lags
    rows = [f"{'model':<10} " + " ".join(f"{'lag ' + str(k):>7}" for k in lags) + f"  {'train s':>7}"]
    for r in result.results:
        for name, acc, secs in ((r.arch, r.accuracy, f"{r.trained.seconds:7.1f}"), (f"{r.arch} int8", r.int8_accuracy,
                                                                                    "")):
            rows.append(f"{name:<10} " + " ".join(f"{a:7.3f}" for a in acc.accuracy) + f"  {secs:>7}")
    last = c.max_lag
    mid = min(50, last)
    rows += ["", f"{'arch':<5} {'horizon p10/p50/p90':>18}  {'1/e: fp32 / int8':>12}  "
             f"{f'at {mid}: fp32 / int8':>15}  {f'at {last}: fp32 / int8':>15}  {'int8 err':>9}"]
    rows += [_memory_row(r) for r in result.results]
    export_gap = max(float(np.max(np.abs(r.diagnosis.memory[1].relative() - r.diagnosis.memory[0].relative())))
                     for r in result.results)
    rows += [
        "",
        f"accuracy: share of {c.eval_n} fresh sequences per lag answered right (chance {t.task.chance:.3f}); int8: "
        f"the same sequences streamed through the int8 variant by the runtime, {CHUNK} steps per call, read by the "
        "same head",
        f"task: delayed recall of 1 of {t.task.symbols} symbols; each model hidden {t.hidden}, {t.steps} steps of "
        f"batch {t.batch}, Adam lr {t.lr:g}, clip {t.clip:g}, lags {t.min_lag}..{t.max_lag} "
        f"{'by curriculum' if t.curriculum else 'from the first step (no curriculum)'}, seed {t.seed}",
        "training: " + "; ".join(f"{r.arch} kept step {r.trained.best_step} (validation {r.trained.best_score:.2f}, "
                                 f"last {r.trained.final_score:.2f}, curriculum up to lag {r.trained.top})"
                                 for r in result.results),
        "horizon: steps until the keep gate's running product (LSTM f, GRU z) falls below 1/e, per unit, over task "
        f"input at lag {c.diag_lag}; inf: beyond the data",
        f"memory curve: a perturbed input step's effect on the layer's output, relative to the step itself; 1/e: the "
        f"first lag below 1/e (>{last}: not within {last}); the export's curve equals PyTorch's within "
        f"{export_gap:.1g}",
        f"int8 err: the int8 variant's largest output error against fp32 over {c.check_steps:,} steps of task input "
        "('over': beyond the bound edge-rnn optimize keeps a variant by)",
        f"machine: {result.machine}; torch {result.torch}, one training thread",
    ]
    return rows
