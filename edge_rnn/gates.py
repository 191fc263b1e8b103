"""Gate order: PyTorch's stacked gate blocks in ONNX's order, and back.

PyTorch stacks an LSTM's gates as ``i, f, g, o`` and a GRU's as ``r, z, n``
along the first axis of ``weight_ih``, ``weight_hh`` and the biases. The ONNX
``LSTM`` operator wants ``i, o, f, c`` (``c`` is PyTorch's candidate ``g``)
and ``GRU`` wants ``z, r, h`` (``h`` is ``n``; PyTorch's placement of
``b_hn`` inside ``r * (...)`` is ONNX's ``linear_before_reset=1``). A vanilla
RNN has one block and nothing to reorder.

This is the only place that knows either order: weights and biases alike go
through :func:`to_onnx_gate_order`, and the decomposed graph names PyTorch's
blocks through :func:`gate_blocks` and :data:`TORCH_GATES`.
"""

from __future__ import annotations

import numpy as np

from edge_rnn.errors import ShapeError

__all__ = ["TORCH_GATES", "ONNX_GATES", "to_onnx_gate_order", "from_onnx_gate_order", "gate_blocks", "join_gates"]

TORCH_GATES: dict[str, tuple[str, ...]] = {"rnn": ("a",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}
ONNX_GATES: dict[str, tuple[str, ...]] = {"rnn": ("a",), "lstm": ("i", "o", "f", "g"), "gru": ("z", "r", "n")}


def _permute(kind: str, w: np.ndarray, src: tuple[str, ...], dst: tuple[str, ...]) -> np.ndarray:
    n = len(src)
    if w.shape[0] % n:
        raise ShapeError(f"{kind}: expected a first axis divisible by {n} gates, got shape {w.shape}")
    blocks = dict(zip(src, np.split(w, n, axis=0)))
    return np.concatenate([blocks[g] for g in dst], axis=0)


def to_onnx_gate_order(kind: str, w: np.ndarray) -> np.ndarray:
    """Reorder the gate blocks of ``w`` (gates stacked on axis 0) from PyTorch's order to ONNX's.

    >>> to_onnx_gate_order("lstm", np.arange(4)).tolist()   # i f g o -> i o f g
    [0, 3, 1, 2]
    """
    return _permute(kind, w, TORCH_GATES[kind], ONNX_GATES[kind])


def from_onnx_gate_order(kind: str, w: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_onnx_gate_order`."""
    return _permute(kind, w, ONNX_GATES[kind], TORCH_GATES[kind])


def gate_blocks(kind: str, w: np.ndarray) -> dict[str, np.ndarray]:
    """The gate blocks of ``w`` (PyTorch's order, stacked on axis 0) by gate name: ``{"i": ..., "f": ...}``."""
    gates = TORCH_GATES[kind]
    if w.shape[0] % len(gates):
        raise ShapeError(f"{kind}: expected a first axis divisible by {len(gates)} gates, got shape {w.shape}")
    return dict(zip(gates, np.split(w, len(gates), axis=0)))


def join_gates(kind: str, blocks: dict[str, np.ndarray]) -> np.ndarray:
    """The inverse of :func:`gate_blocks`: blocks by name, stacked in PyTorch's order."""
    return np.concatenate([blocks[g] for g in TORCH_GATES[kind]], axis=0)

