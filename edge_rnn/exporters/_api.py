"""``edge_rnn.export``: the front door, sending a module down the bare-layer path or the whole-model path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edge_rnn._progress import Progress
from edge_rnn.errors import UnsupportedError
from edge_rnn.exporters._export import export_layer
from edge_rnn.exporters._references import exportable
from edge_rnn.exporters._spec import recurrent_spec
from edge_rnn.exporters._whole import export_model
from edge_rnn.exporters._write import ExportReport
from edge_rnn.exporters.options import ExportOptions, StreamingIO, io_from_legacy

__all__ = ["export"]


def export(
    module: torch.nn.Module,
    path: str | Path,
    *,
    example_input: Any = None,
    io: StreamingIO | None = None,
    data: Any = None,
    decomposed: bool = False,
    check: bool = True,
    verify_parity: bool = True,
    long_steps: int = 10_000,
    seed: int = 0,
    atol: float | None = None,
    raise_on_failure: bool = True,
    keep_failed: bool = False,
    extra_source: Mapping[str, Any] | None = None,
    whole_model_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Export a recurrent layer or cell, or a whole model using them, to a streaming ONNX file, and verify it.

    A bare layer's graph takes ``x`` and the recurrent state (``h0``, and
    ``c0`` for an LSTM, shaped ``(num_layers * num_directions, batch,
    hidden)`` as in torch) and returns ``y`` and the next state (``hn``,
    ``cn``); batch and time axes are dynamic, and the ``edge_rnn`` metadata
    says which input feeds which output. A whole model (anything else) needs
    ``example_input``; ``io`` (:class:`~edge_rnn.exporters.StreamingIO`) says
    how its inputs, outputs and states stream (``docs/whole-models.md``) and
    is an error for a bare layer. ``whole_model_options``, the dict ``io``
    replaces, still works for one release with a ``DeprecationWarning``.

    ``decomposed=True`` writes the form without recurrent operators.
    ``extra_source`` adds entries to the contract's ``source`` (the CLI
    records the weights' seed there). Unless ``verify_parity=False``,
    :func:`edge_rnn.verify` runs on the result (``long_steps``, ``seed``,
    ``atol``, ``data``: see there) and raises
    :class:`~edge_rnn.errors.ParityError` if it differs, unless
    ``raise_on_failure=False``. A model that fails parity is never written to
    ``path``; ``keep_failed=True`` keeps it beside it as ``<name>.failed.onnx``
    (``report.kept_at``) for inspection. ``progress(stage, done, total)``
    (:mod:`edge_rnn._progress`) follows the parity check's streamed steps.

    Example::

        >>> import torch, edge_rnn
        >>> lstm = torch.nn.LSTM(80, 256, num_layers=2)
        >>> report = edge_rnn.export(lstm, "lstm.onnx")          # doctest: +SKIP
        >>> report.parity.ok                                     # doctest: +SKIP
        True
    """
    path = Path(path)
    io, atol = io_from_legacy(io, whole_model_options, atol)
    options = ExportOptions(decomposed=decomposed, check=check, verify_parity=verify_parity, long_steps=long_steps,
                            seed=seed, atol=atol, raise_on_failure=raise_on_failure, extra_source=extra_source or {},
                            keep_failed=keep_failed, progress=progress)
    module, example_input, notes = exportable(module, example_input)  # a float32 CPU copy where it is not
    spec = recurrent_spec(module)
    if spec is not None:
        if io is not None:
            raise UnsupportedError(
                f"io={io!r:.120}: it applies to whole models, and {type(module).__name__} is a bare recurrent layer "
                "(its names, axes and states are fixed)")
        report = export_layer(module, spec, path, example_input=example_input, options=options, data=data)
    elif example_input is None:
        raise UnsupportedError(
            f"{type(module).__name__} is not a bare RNN/LSTM/GRU layer or cell: exporting it as a whole model "
            "needs example_input")
    else:
        report = export_model(module, path, example_input=example_input, io=io or StreamingIO(), options=options,
                              data=data)
    report.notes.extend(notes)
    return report
