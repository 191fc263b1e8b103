"""``edge_rnn.export``: the front door, sending a module down the bare-layer path or the whole-model path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edge_rnn.errors import UnsupportedError
from edge_rnn.exporters._export import export_layer
from edge_rnn.exporters._spec import is_recurrent_module
from edge_rnn.exporters._whole import OPTION_KEYS, export_model
from edge_rnn.exporters._write import ExportReport

__all__ = ["export"]


def export(
    module: torch.nn.Module,
    path: str | Path,
    *,
    example_input: torch.Tensor | None = None,
    decomposed: bool = False,
    check: bool = True,
    verify_parity: bool = True,
    long_steps: int = 10_000,
    seed: int = 0,
    raise_on_failure: bool = True,
    extra_source: Mapping[str, Any] | None = None,
    whole_model_options: Mapping[str, Any] | None = None,
    data: Any = None,
) -> ExportReport:
    """Export a recurrent layer or cell, or a whole model using them, to a streaming ONNX file, and verify it.

    A whole model (anything that is not a bare RNN/LSTM/GRU layer or cell)
    needs ``example_input`` and takes ``whole_model_options``
    (``docs/whole-models.md``); for a bare layer those options are an error.

    The graph takes ``x`` and the recurrent state (``h0``, and ``c0`` for an
    LSTM, shaped ``(num_layers * num_directions, batch, hidden)`` as in torch)
    and returns ``y`` and the next state (``hn``, ``cn``); batch and time axes
    are dynamic, and the ``edge_rnn`` metadata says which input feeds which
    output. ``decomposed=True`` writes the form without recurrent operators.
    ``extra_source`` adds entries to the contract's ``source`` (the CLI
    records the weights' seed there).
    Unless ``verify_parity=False``, :func:`edge_rnn.verify` runs on the result
    and raises :class:`~edge_rnn.errors.ParityError` if it differs; ``data``
    (real sequences, see :func:`edge_rnn.verify`) replaces its random inputs.

    Example::

        >>> import torch, edge_rnn
        >>> lstm = torch.nn.LSTM(80, 256, num_layers=2)
        >>> report = edge_rnn.export(lstm, "lstm.onnx")          # doctest: +SKIP
        >>> report.parity.max_abs_error < 1e-5                   # doctest: +SKIP
        True
    """
    path = Path(path)
    if is_recurrent_module(module):
        if whole_model_options:
            raise UnsupportedError(
                f"whole_model_options {sorted(whole_model_options)}: they apply to whole models, and "
                f"{type(module).__name__} is a bare recurrent layer (its names, axes and states are fixed)")
        return export_layer(module, path, example_input=example_input, decomposed=decomposed, check=check,
                            verify_parity=verify_parity, long_steps=long_steps, seed=seed,
                            raise_on_failure=raise_on_failure, extra_source=extra_source, data=data)
    # a whole model, its state lifted
    if example_input is None:
        raise UnsupportedError(
            f"{type(module).__name__} is not a bare RNN/LSTM/GRU layer or cell: exporting it as a whole model "
            "needs example_input"
        )
    unknown = sorted(set(whole_model_options or {}) - set(OPTION_KEYS))
    if unknown:
        raise UnsupportedError(
            f"whole_model_options {unknown}: expected keys among {sorted(OPTION_KEYS)}")
    return export_model(module, path, example_input=example_input, decomposed=decomposed,
                        verify_parity=verify_parity, seed=seed, long_steps=long_steps,
                        raise_on_failure=raise_on_failure, data=data, check=check,
                        extra_source=extra_source, **(whole_model_options or {}))
