"""``verify``: does the ONNX model compute what the PyTorch module computes?

The cases, the verdict and the tolerance table are torch-free and live in
:mod:`edge_rnn.harness`; the PyTorch references (fp32, and float64 as the
exact answer) in :mod:`edge_rnn.exporters._references`. ``docs/parity.md``
explains the verdict with the measurements behind it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edge_rnn._progress import Progress
from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, ShapeError, UnsupportedError
from edge_rnn.exporters._references import (
    check_against_torch,
    exportable,
    float32_module,
    input_source,
    layer_layouts,
    tolerance_for,
    torch_reference,
)
from edge_rnn.exporters._spec import RecurrentSpec, recurrent_spec
from edge_rnn.exporters._whole_verify import verify_model
from edge_rnn.exporters.options import ParityOptions, StreamingIO, io_from_legacy
from edge_rnn.harness import TOLERANCE, Cases, ParityReport, ParityRow, raise_failures, read_contract

__all__ = ["verify", "check_layer", "ParityReport", "ParityRow", "TOLERANCE"]


def verify(
    module: torch.nn.Module,
    path: str | Path,
    *,
    example_input: Any = None,
    io: StreamingIO | None = None,
    whole_model_options: Mapping[str, Any] | None = None,
    data: Any = None,
    batch_size: int | None = None,
    seq_lens: tuple[int, ...] | None = None,
    chunked_len: int | None = None,
    long_steps: int = 10_000,
    opt_levels: tuple[str, ...] = ("disabled", "default"),
    seed: int = 0,
    atol: float | None = None,
    raise_on_failure: bool = True,
    progress: Progress | None = None,
) -> ParityReport:
    """Check the ONNX model at ``path`` against ``module``: see :mod:`edge_rnn.harness` for the cases.

    Works for anything :func:`edge_rnn.export` accepted: a bare RNN/LSTM/GRU
    layer or cell, or a whole model (then ``example_input`` and ``io`` are
    the ones given to ``export``; without them the names, axes and states
    are read from the file's contract; ``whole_model_options`` is the
    deprecated dict form of ``io``).
    ``data`` replaces the random inputs with real sequences: one array
    ``(time, features)``, a list of them, or a ``.npy``/``.npz`` path; a
    sequence shorter than a case is repeated. ``batch_size`` defaults to one
    more than the example's (3 without one); ``seq_lens`` and ``chunked_len``
    to (1, 6, 19) and 41 for a bare layer, and for a whole model to lengths
    other than its example's (``docs/parity.md``); given, they are used for
    either. Raises
    :class:`~edge_rnn.errors.ParityError` listing every failing tensor unless
    ``raise_on_failure`` is false; ``atol`` replaces the fp32 floor of the
    tolerance table. ``progress(stage, done, total)`` (:mod:`edge_rnn._progress`)
    follows the streamed steps.

    Example::

        >>> report = edge_rnn.verify(lstm, "lstm.onnx")     # doctest: +SKIP
        >>> print(report.table())                            # doctest: +SKIP
    """
    path = Path(path)
    module, example_input, notes = exportable(module, example_input)  # as export checked it: float32, on the CPU
    spec = recurrent_spec(module)
    io, atol = io_from_legacy(io, whole_model_options, atol)
    checks = ParityOptions(batch_size=batch_size, seq_lens=seq_lens, chunked_len=chunked_len, long_steps=long_steps,
                           opt_levels=opt_levels, seed=seed, atol=atol, progress=progress)
    if spec is None:
        report = verify_model(module, path, example_input=example_input, io=io, data=data, checks=checks)
    else:
        report = _verify_layer_file(module, spec, path, example_input=example_input, io=io, data=data,
                                    checks=checks)
    if raise_on_failure:
        raise_failures(report, path)
    report.notes[:0] = notes
    return report


def _verify_layer_file(module: torch.nn.Module, spec: RecurrentSpec, path: Path, *, example_input: Any,
                       io: StreamingIO | None, data: Any, checks: ParityOptions) -> ParityReport:
    """:func:`verify` for a bare layer: the file must hold that layer, then :func:`check_layer` compares them."""
    if io is not None:
        raise UnsupportedError(f"io={io!r:.120}: it applies to whole models, and {type(module).__name__} is a bare "
                               "recurrent layer")
    contract = _read(path)
    _same_layer(spec, contract, path)
    return check_layer(module, spec, contract, path, example_input=example_input, data=data, checks=checks)


def check_layer(module: torch.nn.Module, spec: RecurrentSpec, contract: Contract, path: Path, *, example_input: Any,
                data: Any, checks: ParityOptions) -> ParityReport:
    """The bare layer's graph at ``path`` (written with ``contract``) against ``module``; the report, never raised.

    ``module`` is the float32 CPU module :func:`exportable` returned; ``spec`` is its spec.
    """
    if module.training:  # dropout would make PyTorch's side random
        module = copy.deepcopy(module).eval()
    batch_size = checks.batch_size
    if batch_size is None:
        batch_size = _example_batch(spec, example_input) + 1
    inputs = input_source(layer_layouts(contract, spec), data)
    report = check_against_torch(
        path, contract, torch_reference(float32_module(module), spec),
        lambda: torch_reference(copy.deepcopy(module).double(), spec),
        inputs, cases=_layer_cases(contract, checks, batch_size), seed=checks.seed,
        tolerance=tolerance_for(checks.atol), opt_levels=checks.opt_levels, progress=checks.progress,
    )
    if data is not None:
        report.notes.append("inputs: the given data, repeated where shorter than a case")
    if not contract.streamable:
        report.notes.append(
            "not streamable (a bidirectional layer reads the whole sequence): checked full passes only; "
            "run it one whole sequence per call"
        )
    return report


def _layer_cases(contract: Contract, checks: ParityOptions, batch_size: int) -> Cases:
    """The cases of a bare layer: full passes only where it is not streamable (a bidirectional layer)."""
    seq_lens = checks.seq_lens if checks.seq_lens is not None else (1, 6, 19)
    if not contract.streamable:
        return Cases(batch=batch_size, seq_lens=seq_lens, chunked_len=0, long_steps=0)
    return Cases(batch=batch_size, seq_lens=seq_lens,
                 chunked_len=checks.chunked_len if checks.chunked_len is not None else 41,
                 long_steps=checks.long_steps)


def _example_batch(spec: RecurrentSpec, example_input: Any) -> int:
    """The example's batch size (2 without a batched example: the cases then use 3)."""
    if example_input is None:
        return 2
    if not isinstance(example_input, torch.Tensor):
        raise ShapeError(f"example_input: expected a tensor for a bare {spec.kind} layer, got "
                         f"{type(example_input).__name__}")
    if example_input.dim() != (2 if spec.cell else 3):  # unbatched: no batch size to differ from
        return 2
    return int(example_input.shape[spec.io_axes[0]])


def _same_layer(spec: RecurrentSpec, contract: Contract, path: Path) -> None:
    """The module must be the kind of layer the file holds: a clear error, not PyTorch's or onnxruntime's."""
    if contract.source.get("kind") == "module":
        raise UnsupportedError(
            f"{path}: holds a whole model ({contract.source.get('module')}); verify it against that model, not "
            f"against a bare {spec.module.rsplit('.', 1)[-1]}")
    try:
        theirs = RecurrentSpec.from_source(contract.source)
    except (UnsupportedError, TypeError):
        return  # a contract without a readable source: the comparison itself will tell
    keys = ("kind", "cell", "input_size", "hidden_size", "num_layers", "bidirectional", "batch_first", "bias",
            "proj_size", "nonlinearity")
    diff = [f"{k} {getattr(theirs, k)!r} (module: {getattr(spec, k)!r})" for k in keys
            if getattr(theirs, k) != getattr(spec, k)]
    if diff:
        raise ModelFormatError(f"{path}: holds another layer than the module: expected " + ", ".join(diff))


def _read(path: Path) -> Contract:
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    return read_contract(path)
