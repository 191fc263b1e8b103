"""Gradient flow through time: how strongly the last hidden state depends on each earlier input (torch).

The textbook picture: in a vanilla tanh RNN, ``dh_T/dx_t`` is a product of T - t factors
``diag(tanh') W_hh``, so its norm shrinks like ``||W_hh||**(T - t)`` when the recurrent
weights are small; an LSTM's cell path multiplies by the forget gate instead, and keeps
the gradient alive while ``f`` stays near 1.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from edge_rnn._numbers import is_int
from edge_rnn._progress import Progress
from edge_rnn.diagnostics._gates import recurrent_layers
from edge_rnn.diagnostics._types import GradientFlow
from edge_rnn.errors import ShapeError, UnsupportedError

__all__ = ["gradient_flow", "baselines", "layer_gradient_norms"]

_REPLICAS = 256  # rows of the Jacobian computed in one batched backward pass (times the batch size, bounded)


def _captured_call(module: torch.nn.Module, layer: torch.nn.Module, x: Any) -> tuple[torch.Tensor, Any]:
    """The input (and ``hx``, if any) ``layer`` receives on its first call while ``module`` runs on ``x``."""
    seen: list[tuple[tuple, dict]] = []

    def keep(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args, kwargs))

    handle = layer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            module(x)
    finally:
        handle.remove()
    if not seen:
        raise ShapeError(f"{type(module).__name__}: expected its recurrent layer {type(layer).__name__} to be "
                         "called while the model runs on x, got no call")
    args, kwargs = seen[0]
    seq = args[0] if args else kwargs.get("input")
    if not isinstance(seq, torch.Tensor):
        raise UnsupportedError(f"{type(layer).__name__}: expected a padded Tensor input to the layer, got "
                               f"{type(seq).__name__}")
    return seq, args[1] if len(args) > 1 else kwargs.get("hx")


def _to_double(hx: Any) -> Any:
    if hx is None:
        return None
    if isinstance(hx, torch.Tensor):
        return hx.detach().double()
    return tuple(_to_double(h) for h in hx)


def _repeat_batch(hx: Any, n: int, batched: bool) -> Any:
    """``hx`` (``(L*D, B, H)``, or ``(L*D, H)`` unbatched) for ``n`` copies of the batch, copy-major."""
    if hx is None:
        return None
    if isinstance(hx, torch.Tensor):
        return hx.repeat(1, n, 1) if batched else hx.unsqueeze(1).repeat(1, n, 1)
    return tuple(_repeat_batch(h, n, batched) for h in hx)


def layer_gradient_norms(layer: torch.nn.Module, x: torch.Tensor, hx: Any = None) -> np.ndarray:
    """``norms[t]``: the Frobenius norm of ``dh_T/dx_t`` for t = 0..T-1, the mean over the batch's sequences.

    ``layer`` is an RNN/LSTM/GRU layer (torch.nn or reference), run alone in float64 (a copy, in eval mode);
    ``x`` is its input in its own layout (``batch_first`` or not, or unbatched ``(T, I)``) and ``hx`` its
    initial state as it takes it. ``h_T`` is the last layer's output at the last step, the forward direction's
    part for a bidirectional layer. Exact: one backward pass per row of ``dh_T/dx_t`` (unit of ``h_T``),
    batched by running the layer on copies of the batch, copy ``j`` seeded with unit ``j``.
    """
    layer = copy.deepcopy(layer).double().eval()
    batched = x.dim() == 3
    seq = x.detach().double()
    seq = (seq.transpose(0, 1) if layer.batch_first else seq) if batched else seq.unsqueeze(1)  # (T, B, I)
    steps, batch = seq.shape[:2]
    hx = _to_double(hx)
    width = getattr(layer, "proj_size", 0) or layer.hidden_size
    squares = torch.zeros(steps, batch, dtype=torch.float64)
    per_pass = max(1, _REPLICAS // batch)
    for first in range(0, width, per_pass):
        n = min(per_pass, width - first)
        inputs = seq.repeat(1, n, 1).requires_grad_(True)  # (T, n*B, I), copy-major
        out, _ = layer(inputs.transpose(0, 1) if layer.batch_first else inputs, _repeat_batch(hx, n, batched))
        last = (out[:, -1] if layer.batch_first else out[-1])[:, :width].reshape(n, batch, width)
        seeds = torch.zeros_like(last)
        seeds[torch.arange(n), :, first + torch.arange(n)] = 1.0
        (grad,) = torch.autograd.grad(last, inputs, seeds)
        squares += grad.reshape(steps, n, batch, -1).pow(2).sum(dim=(1, 3))
    return squares.sqrt().mean(dim=1).numpy()


def _lags(steps: int, max_lag: int | None) -> int:
    if max_lag is None:
        return steps - 1
    if not is_int(max_lag, 0, steps - 1):
        raise ShapeError(f"gradient flow: expected max_lag an int in 0..{steps - 1} (the input has {steps} steps), "
                         f"got {max_lag!r}")
    return max_lag


def gradient_flow(module: torch.nn.Module, x: torch.Tensor, *, max_lag: int | None = None,
                  label: str = "model") -> GradientFlow:
    """``norms[k]`` = ``||dh_T / dx_{T-1-k}||_F`` for k = 0..max_lag (default: every step), mean over sequences.

    For the first recurrent layer of ``module`` (the module itself, or its first RNN/LSTM/GRU submodule in
    ``named_modules`` order): ``x_t`` is the layer's own input at step t, as captured while ``module`` runs on
    ``x`` (``x`` in the module's layout), and ``h_T`` its last layer's hidden output at the last step (see
    :func:`layer_gradient_norms`). Computed in float64 on a copy of the layer.

        >>> import torch
        >>> flow = gradient_flow(torch.nn.GRU(4, 8), torch.randn(30, 2, 4), max_lag=20)
        >>> flow.lags.shape, flow.norms.shape
        ((21,), (21,))
    """
    _, layer = recurrent_layers(module)[0]
    if layer is module:
        seq, hx = x, None
    else:
        seq, hx = _captured_call(module, layer, x)
    norms = layer_gradient_norms(layer, seq, hx)[::-1]  # index k: lag k
    lag = _lags(len(norms), max_lag)
    return GradientFlow(label, np.arange(lag + 1), norms[: lag + 1].copy())


def baselines(input_size: int, hidden_size: int, num_layers: int, x: torch.Tensor, *, seed: int = 0,
              max_lag: int | None = None, progress: Progress | None = None) -> list[GradientFlow]:
    """The :func:`gradient_flow` of a vanilla tanh RNN, an LSTM and a GRU of the given sizes, with PyTorch's
    default initialisation under ``torch.manual_seed(seed)`` (each built after a fresh seed; the caller's RNG
    state is left as it was), on the same layer input ``x`` ``(T, B, input_size)``. Labels "rnn baseline",
    "lstm baseline", "gru baseline". ``progress`` (:mod:`edge_rnn._progress`): one unit per baseline."""
    if x.dim() != 3 or x.size(-1) != input_size:
        raise ShapeError(f"baselines: expected x of shape (T, B, {input_size}), got {tuple(x.shape)}")
    out: list[GradientFlow] = []
    kinds = (("rnn", torch.nn.RNN), ("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU))
    for kind, cls in kinds:
        if progress is not None:
            progress(f"{kind} baseline", len(out), len(kinds))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer = cls(input_size, hidden_size, num_layers)
        out.append(gradient_flow(layer, x, max_lag=max_lag, label=f"{kind} baseline"))
    if progress is not None:
        progress("gru baseline", len(out), len(kinds))
    return out
