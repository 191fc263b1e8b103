"""Argument and tensor checks shared by the reference cells and layers.

Every message reads "<Module>: expected X, got Y" and names the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from edge_rnn._numbers import is_int
from edge_rnn.errors import ShapeError, UnsupportedError

NONLINEARITIES = ("tanh", "relu")


def reset_uniform(module: torch.nn.Module, hidden_size: int) -> None:
    """Draw every parameter of ``module`` from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``, like torch.nn."""
    bound = 1.0 / math.sqrt(hidden_size)
    for weight in module.parameters():
        torch.nn.init.uniform_(weight, -bound, bound)


def check_size(owner: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) ``>= minimum``."""
    if not is_int(value, least=minimum):
        raise UnsupportedError(f"{owner}: expected {name} to be an int >= {minimum}, got {value!r}")
    return value


def check_flag(owner: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool``."""
    if not isinstance(value, bool):
        raise UnsupportedError(f"{owner}: expected {name} to be a bool, got {value!r}")
    return value


def check_nonlinearity(owner: str, value: Any) -> str:
    """Return ``value`` if it is one of :data:`NONLINEARITIES`."""
    if value not in NONLINEARITIES:
        raise UnsupportedError(f"{owner}: expected nonlinearity 'tanh' or 'relu', got {value!r}")
    return value


def check_input(owner: str, input: Any, *, ranks: tuple[int, int], size: int, dtype: torch.dtype) -> None:
    """Check an input tensor: rank ``ranks[0]`` (unbatched) or ``ranks[1]`` (batched), last axis ``size``."""
    if not isinstance(input, Tensor):
        raise ShapeError(f"{owner}: expected input to be a Tensor, got {type(input).__name__}")
    if input.dim() not in ranks:
        raise ShapeError(
            f"{owner}: expected input to be {ranks[0]}D (unbatched) or {ranks[1]}D (batched), got {input.dim()}D"
        )
    if input.size(-1) != size:
        raise ShapeError(f"{owner}: expected input of size {size}, got {input.size(-1)}")
    if input.dtype != dtype:
        raise ShapeError(f"{owner}: expected input of dtype {dtype} (the parameters'), got {input.dtype}")


def check_state(owner: str, name: str, state: Any, *, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Check a recurrent state tensor against its exact expected ``shape`` and ``dtype``."""
    if not isinstance(state, Tensor):
        raise ShapeError(f"{owner}: expected {name} to be a Tensor, got {type(state).__name__}")
    if tuple(state.shape) != shape:
        raise ShapeError(f"{owner}: expected {name} of shape {shape}, got {tuple(state.shape)}")
    if state.dtype != dtype:
        raise ShapeError(f"{owner}: expected {name} of dtype {dtype} (the input's), got {state.dtype}")


def split_pair(owner: str, hx: Any) -> tuple[Any, Any]:
    """An LSTM's ``hx`` as ``(h_0, c_0)``: it must be a tuple or list of two."""
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise ShapeError(f"{owner}: expected hx to be a pair (h_0, c_0), got {type(hx).__name__}")
    return hx[0], hx[1]


def states_with_batch(
    owner: str,
    states: Iterable[tuple[str, int, Any]],
    *,
    like: Tensor,
    batch: int,
    leading: tuple[int, ...] = (),
    batched: bool,
) -> tuple[Tensor, ...]:
    """Each ``(name, size, state)`` checked and given a batch axis; zeros (like ``like``) where ``state`` is None.

    A state is ``(*leading, batch, size)`` when the input is batched and
    ``(*leading, size)`` when it is not; either way it comes back with the batch
    axis, at index ``len(leading)``. A cell has no leading axes; a layer's is
    ``num_layers * num_directions``.
    """
    out = []
    for name, size, state in states:
        if state is None:
            out.append(like.new_zeros(*leading, batch, size))
            continue
        shape = (*leading, batch, size) if batched else (*leading, size)
        check_state(owner, name, state, shape=shape, dtype=like.dtype)
        out.append(state if batched else state.unsqueeze(len(leading)))
    return tuple(out)
