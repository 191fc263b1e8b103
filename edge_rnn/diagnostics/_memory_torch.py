"""The empirical memory curve of a PyTorch module, by the same procedure as the ONNX one (torch).

Each perturbed window is run as the whole prefix ``x[:t0 + max_lag + 1]`` from
the zero state, which is the state after ``x[:t0]`` followed by the window:
slower than restoring a state, and independent of any export, so it is what the
ONNX curve is checked against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edge_rnn.diagnostics._memory import curve_from
from edge_rnn.diagnostics._types import MemoryCurve
from edge_rnn.errors import ShapeError, UnsupportedError

__all__ = ["memory_curve_torch", "primary_output", "batch_of_one", "module_order", "default_axes"]


def primary_output(result: Any) -> torch.Tensor:
    """The first tensor of a module's result: ``y`` of ``(y, h_n)`` or ``(y, (h_n, c_n))``, or the tensor itself."""
    while isinstance(result, (tuple, list)):
        result = result[0]
    if not isinstance(result, torch.Tensor):
        raise UnsupportedError(f"expected the module to return a tensor or a tuple starting with one, got "
                               f"{type(result).__name__}")
    return result


def module_order(rank: int, batch_axis: int, time_axis: int) -> list[int]:
    """The permutation from (batch, time, rest...) to a module's order, with its batch and time axes there."""
    rest = iter(range(2, rank))
    return [0 if i == batch_axis else 1 if i == time_axis else next(rest) for i in range(rank)]


def default_axes(module: torch.nn.Module, batch_axis: int | None, time_axis: int | None) -> tuple[int, int]:
    """The batch and time axes of ``module``'s input: those given, else its first recurrent layer's layout
    (``batch_first``: 0 and 1; time-major, or no recurrent layer found: 1 and 0)."""
    if batch_axis is not None and time_axis is not None:
        return batch_axis, time_axis
    from edge_rnn.diagnostics._gates import recurrent_layers

    try:
        first = bool(getattr(recurrent_layers(module)[0][1], "batch_first", False))
    except UnsupportedError:
        first = False
    default = (0, 1) if first else (1, 0)
    return (default[0] if batch_axis is None else batch_axis), (default[1] if time_axis is None else time_axis)


def batch_of_one(seq: np.ndarray, batch_axis: int, time_axis: int) -> torch.Tensor:
    """One sequence ``(time, *frame)`` as the module takes it: a batch of one, axes where it wants them."""
    t = torch.from_numpy(np.ascontiguousarray(seq))[None]  # (1, time, *frame)
    return t.permute(module_order(t.dim(), batch_axis, time_axis))


def memory_curve_torch(module: torch.nn.Module, x: np.ndarray, *, batch_axis: int | None = None,
                       time_axis: int | None = None, max_lag: int = 50, starts: int = 8, scale: float = 0.5,
                       seed: int = 0, ids: tuple[int, int] | None = None, label: str = "pytorch") -> MemoryCurve:
    """The curve of ``module``'s primary output on ``x`` (one sequence, ``(time, *frame)``), which the module
    takes with a batch axis at ``batch_axis`` and time at ``time_axis`` (``torch.nn.LSTM``: 1 and 0; by default,
    its first recurrent layer's layout: :func:`default_axes`)."""
    module = module.eval()
    batch_axis, time_axis = default_axes(module, batch_axis, time_axis)

    def run(seq: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = primary_output(module(batch_of_one(seq, batch_axis, time_axis)))
        if y.dim() < 2:
            raise ShapeError(f"memory curve: expected an output per step (batch and time axes), got {tuple(y.shape)}")
        order = module_order(y.dim(), batch_axis, time_axis)  # the output keeps the input's batch and time axes
        back = sorted(range(len(order)), key=order.__getitem__)
        return y.permute(back)[0].double().numpy()

    def run_windows(x: np.ndarray, t0s: list[int], windows: list[np.ndarray]) -> list[np.ndarray]:
        return [run(np.concatenate([x[:t0], w]))[t0:] for t0, w in zip(t0s, windows)]

    return curve_from(run_windows, x, max_lag=max_lag, starts=starts, scale=scale, seed=seed, label=label,
                      ids=ids)
