"""Everything ``edge-rnn diagnose`` reports, in one call: a PyTorch model, or an ONNX file alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from edge_rnn._progress import Progress, Ticker
from edge_rnn.diagnostics._gates import gate_stats, gate_trace, horizons, recurrent_layers
from edge_rnn.diagnostics._gradient import _captured_call, baselines, gradient_flow
from edge_rnn.diagnostics._memory import finite_input, memory_curve, peak
from edge_rnn.diagnostics._memory_torch import batch_of_one, default_axes, memory_curve_torch
from edge_rnn.diagnostics._types import Diagnosis, GateHistogram
from edge_rnn.errors import NonFiniteError, ShapeError

__all__ = ["diagnose"]

def _layer_input(module: torch.nn.Module, layer: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``module`` runs on ``inputs``, as (time, batch, features)."""
    x = inputs if layer is module else _captured_call(module, layer, inputs)[0]
    if x.dim() == 2:  # unbatched (time, features)
        return x[:, None]
    return x.transpose(0, 1) if getattr(layer, "batch_first", False) else x


def diagnose(module: torch.nn.Module, x: np.ndarray, *, batch_axis: int | None = None, time_axis: int | None = None,
             max_lag: int = 50, starts: int = 8, compare: Sequence[Any] = (), ids: tuple[int, int] | None = None,
             seed: int = 0, source: str = "model", progress: Progress | None = None,
             what: str | None = None) -> Diagnosis:
    """Gates, horizons, gradient flow (with baselines) and memory curves of ``module`` on ``x``.

    ``x`` is one sequence, ``(time, *frame)``; the module takes it with its batch axis at ``batch_axis`` and
    time at ``time_axis`` (a ``torch.nn.LSTM``: 1 and 0; ``batch_first``: 0 and 1; by default, its first recurrent
    layer's layout, the module itself when it is one; axes under which that layer does not run over every step of
    ``x`` are refused with :class:`~edge_rnn.errors.ShapeError`). ``compare``: ONNX files
    (or loaded ``StreamingModel`` objects) whose empirical memory curves are drawn beside the module's (its export,
    a bundle's int8 variant, ...). Refused with :class:`~edge_rnn.errors.NonFiniteError`: NaN or Inf in ``x`` or
    in the weights (before any work), and any figure that comes out NaN (the model overflowed on ``x``).
    ``progress`` (:mod:`edge_rnn._progress`) counts the stages: the gate trace, the model's gradient flow, each
    baseline's, and each memory curve. ``what`` names ``x`` in a refusal (``--input x.npy``).
    """
    x = finite_input(x)
    if x.ndim < 1 or len(x) <= max_lag + 1:
        raise ShapeError(f"diagnose: expected a sequence of more than max_lag + 1 = {max_lag + 1} steps, time "
                         f"first, got shape {x.shape}")
    module = module.eval()
    _finite_parameters(module)
    batch_axis, time_axis = default_axes(module, batch_axis, time_axis)
    inputs = batch_of_one(x, batch_axis, time_axis)
    d = Diagnosis(source=source)
    ticker = Ticker(progress, 6 + len(compare), "gate trace")
    trace = gate_trace(module, inputs)
    _check_steps(trace, len(x), batch_axis, time_axis)
    d.stats = gate_stats(trace)
    d.horizons = horizons(trace)
    d.histograms = [GateHistogram.of(layer, kind, gate, values) for layer, (kind, gates) in trace.items()
                    for gate, values in gates.items()]
    name, layer = recurrent_layers(module)[0]
    lag = min(max_lag, len(x) - 1)
    ticker.advance(1, "gradient flow")
    d.gradient = [gradient_flow(module, inputs, max_lag=lag, label=f"this model ({name or type(layer).__name__})")]
    ticker.advance(1)
    layer_x = _layer_input(module, layer, inputs)
    d.gradient += baselines(layer.input_size, layer.hidden_size, layer.num_layers, layer_x, seed=seed, max_lag=lag,
                            progress=ticker.part(3))
    ticker.advance(3, "memory curve")
    d.memory = [memory_curve_torch(module, x, batch_axis=batch_axis, time_axis=time_axis, max_lag=max_lag,
                                   starts=starts, seed=seed, ids=ids, label="PyTorch model")]
    for path in compare:
        ticker.advance(1, "compared memory curves")
        d.memory.append(memory_curve(path, x, max_lag=max_lag, starts=starts, seed=seed, what=what))
    ticker.advance(1)
    _refuse_nonfinite(d, x)
    return d


def _check_steps(trace: dict, steps: int, batch_axis: int, time_axis: int) -> None:
    """Refused before any figure: a layer that ran over one step of ``x``'s many was given ``x`` in the wrong
    layout (a batch-first layer fed time-major input reads one step of a batch of ``steps``). Fewer steps than
    ``x`` holds, but more than one, can be the model's own (a strided front end), and are diagnosed."""
    for layer, (_, gates) in trace.items():
        got = next(iter(gates.values())).shape[0]
        if got < 2:
            raise ShapeError(f"diagnose: expected {layer} to run over x's {steps} steps with batch_axis={batch_axis} "
                             f"and time_axis={time_axis}, got {got}: give the axes of the module's input layout")


def _finite_parameters(module: torch.nn.Module) -> None:
    """Refused before any work: a model whose weights hold NaN or Inf has nothing finite to diagnose."""
    bad = [name for name, p in module.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteError(f"diagnose: expected finite weights, got NaN or Inf in {', '.join(bad[:5])}"
                             + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))


def _refuse_nonfinite(d: Diagnosis, x: np.ndarray) -> None:
    """No figure of NaN is printed as if it were one: the input and weights were checked finite, so the model
    overflowed on this input; say so, and which figures."""
    bad = d.nonfinite()
    if bad:
        raise NonFiniteError(f"diagnose: expected finite figures, got NaN or Inf in {', '.join(bad)}: the model "
                             f"overflows on this finite input (values up to {peak(x):.3g}); give input of the "
                             "scale it was trained on")
