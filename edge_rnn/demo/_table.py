"""The demo's printed tables: accuracy by lag beside each model's memory horizons and memory curves."""

from __future__ import annotations

import math

from edge_rnn.demo._run import ArchResult, DemoResult

__all__ = ["demo_table"]


def _steps(v: float, beyond: int) -> str:
    return f"{v:g}" if math.isfinite(v) else f">{beyond}"


def _horizons(r: ArchResult) -> str:
    """p10/p50/p90 of the keep gate's horizons over units ("-": a vanilla RNN has no keep gate)."""
    if not r.diagnosis.horizons:
        return "-"
    h = r.diagnosis.horizons[0]
    return "/".join(f"{v:g}" if math.isfinite(v) else "inf" for v in h.quantiles())


def _curves(r: ArchResult) -> str:
    """The memory curves' 1/e points: PyTorch, its export, its int8 variant."""
    last = int(r.diagnosis.memory[0].lags[-1])
    return " / ".join(_steps(m.horizon(), last) for m in r.diagnosis.memory)


def demo_table(result: DemoResult) -> list[str]:
    """Accuracy by lag, horizons, memory curves and training of each architecture, as lines to print."""
    c = result.config
    lags = result.results[0].accuracy.lags if result.results else c.eval_lags
    head = (f"{'arch':<5} " + " ".join(f"{'lag ' + str(k):>7}" for k in lags)
            + f"  {'horizon p10/p50/p90':>19}  {'1/e: torch / onnx / int8':>24}  {'train s':>7}  {'int8 err':>8}")
    rows = [head]
    for r in result.results:
        rows.append(f"{r.arch:<5} " + " ".join(f"{a:7.3f}" for a in r.accuracy.accuracy)
                    + f"  {_horizons(r):>19}  {_curves(r):>24}  {r.trained.seconds:7.1f}  {r.int8_max_abs:8.2g}{'' if r.int8_ok else ' (over its bound)'}")
    t = c.train
    rows += [
        f"accuracy: share of {c.eval_n} fresh sequences per lag answered right (chance {t.task.chance:.3f}); "
        f"{t.task.symbols} symbols, hidden {t.hidden}, {t.steps} steps of batch {t.batch}, seed {t.seed}",
        "horizon: steps until the keep gate's running product (LSTM f, GRU z) falls below 1/e, per unit, over "
        f"task input at lag {c.diag_lag}; inf: beyond the data",
        f"1/e: the lag at which a perturbed input step's effect on the layer's output falls below 1/e of its first "
        f"value (>{c.max_lag}: not within the curve); int8 err: largest output error of the int8 variant",
        "training: " + "; ".join(f"{r.arch} kept step {r.trained.best_step} (validation {r.trained.best_score:.2f}, "
                                 f"last {r.trained.final_score:.2f}, curriculum up to lag {r.trained.top})"
                                 for r in result.results),
        f"machine: {result.machine}; torch {result.torch}, one training thread",
    ]
    return rows
