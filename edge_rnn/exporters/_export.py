"""``export``: a torch RNN/LSTM/GRU layer or cell -> a streaming ONNX file."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import helper

from edge_rnn import __version__
from edge_rnn._inspect import operator_counts
from edge_rnn.contract import Contract, TensorSpec
from edge_rnn.errors import EdgeRnnError, ModelFormatError, ShapeError, UnsupportedError
from edge_rnn.exporters._graph import GraphBuilder
from edge_rnn.exporters._layers import emit_module, native_possible
from edge_rnn.exporters._spec import RecurrentSpec, layer_weights, spec_from_module
from edge_rnn.exporters.parity import ParityReport, input_source, layer_layouts, verify

__all__ = ["export", "build_model", "ExportReport", "OPSET", "IR_VERSION"]

OPSET = 17
# IR 8 goes with opset 17 and loads in onnxruntime >= 1.13, mobile builds included.
IR_VERSION = 8


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote and how well it matches PyTorch."""

    path: Path
    contract: Contract
    graph_form: str  # "native" | "decomposed" (always for proj_size, which the LSTM operator cannot express)
    opset: int
    export_seconds: float  # graph construction, check and save; verification not included
    size_bytes: int
    operators: dict[str, int] = field(default_factory=dict)
    parity: ParityReport | None = None


def _contract(spec: RecurrentSpec, extra_source: Mapping[str, Any] | None = None) -> Contract:
    io_batch, io_time = spec.io_axes
    return Contract(
        inputs=(TensorSpec("x", io_batch, io_time),),
        outputs=(TensorSpec("y", io_batch, io_time),),
        states=spec.state_specs(),
        source={**spec.to_source(), **(extra_source or {})},
        streamable=not spec.bidirectional,
    )


def _graph_form(spec: RecurrentSpec, decomposed: bool) -> str:
    return "native" if native_possible(spec) and not decomposed else "decomposed"


def build_model(
    module: torch.nn.Module, *, decomposed: bool = False, extra_source: Mapping[str, Any] | None = None
) -> tuple[onnx.ModelProto, RecurrentSpec]:
    """The streaming ONNX model of ``module`` (not checked, not saved)."""
    spec = spec_from_module(module)
    contract = _contract(spec, extra_source)

    def weights(layer: int, reverse: bool) -> dict:
        return layer_weights(module, spec, layer, reverse)

    g = GraphBuilder(f"edge_rnn_{spec.kind}")
    b_dim = "batch"
    io_batch, io_time = spec.io_axes
    io = [b_dim] if io_time is None else [b_dim, "time"] if io_batch == 0 else ["time", b_dim]
    x = g.add_input("x", io + [spec.input_size])
    dims = {s.input: [b_dim if d is None else d for d in s.shape] for s in contract.states}
    h0 = g.add_input("h0", dims["h0"])
    c0 = g.add_input("c0", dims["c0"]) if spec.kind == "lstm" else None
    emit_module(g, spec, weights, x, h0, c0, decomposed=decomposed, outputs=("y", "hn", "cn"))
    g.add_output("y", io + [spec.num_directions * spec.hidden_out])
    for s in contract.states:
        g.add_output(s.output, dims[s.input])

    model = helper.make_model(
        g.graph(),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-rnn",
        producer_version=__version__,
        doc_string=f"{spec.module} exported by edge-rnn ({_graph_form(spec, decomposed)} graph form)",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, contract.to_metadata())
    return model, spec


def check_and_write(model: onnx.ModelProto, path: Path, *, check: bool = True) -> bytes:
    """Serialise once, run the full ONNX check on those bytes, write them; returns them."""
    data = model.SerializeToString()
    if check:
        try:
            onnx.checker.check_model(data, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ModelFormatError(f"edge-rnn wrote an invalid ONNX graph (a bug, please report it): {e}") from e
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as e:
        raise EdgeRnnError(f"{path}: cannot write the model ({e.strerror or e})") from None
    return data


def _check_example(spec: RecurrentSpec, example_input: torch.Tensor | None) -> None:
    if example_input is None:
        return
    shape = tuple(example_input.shape)
    want = 2 if spec.cell else 3
    if len(shape) not in (want - 1, want) or shape[-1] != spec.input_size:
        layout = "batch, " if spec.cell else "batch, time, " if spec.batch_first else "time, batch, "
        raise ShapeError(f"example_input: expected shape ({layout}{spec.input_size}), got {shape}")


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
    """Export a recurrent layer or cell to a streaming ONNX file and check it against PyTorch.

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
    try:
        spec_from_module(module)
    except UnsupportedError:  # not a bare recurrent layer: a whole model, its state lifted
        from edge_rnn.exporters._whole import OPTION_KEYS, export_model

        if example_input is None:
            raise UnsupportedError(
                f"{type(module).__name__} is not a bare RNN/LSTM/GRU layer or cell: exporting it as a whole model "
                "needs example_input"
            ) from None
        unknown = sorted(set(whole_model_options or {}) - set(OPTION_KEYS))
        if unknown:
            raise UnsupportedError(
                f"whole_model_options {unknown}: expected keys among {sorted(OPTION_KEYS)}") from None
        return export_model(module, path, example_input=example_input, decomposed=decomposed,
                            verify_parity=verify_parity, seed=seed, long_steps=long_steps,
                            raise_on_failure=raise_on_failure, data=data, **(whole_model_options or {}))
    if module.training:
        warnings.warn(
            f"{type(module).__name__} is in training mode; exporting and verifying its eval-mode behaviour "
            "(no dropout). Call module.eval() to silence this.",
            stacklevel=2,
        )
        module = copy.deepcopy(module).eval()
    t0 = time.perf_counter()
    model, spec = build_model(module, decomposed=decomposed, extra_source=extra_source)
    _check_example(spec, example_input)
    contract = Contract.from_metadata({p.key: p.value for p in model.metadata_props})
    if verify_parity and data is not None:  # bad data is refused before anything is written
        input_source(layer_layouts(contract, spec), data)
    written = check_and_write(model, path, check=check)
    seconds = time.perf_counter() - t0
    parity = None
    if verify_parity:
        parity = verify(module, path, long_steps=long_steps, seed=seed, example_input=example_input, data=data,
                        raise_on_failure=raise_on_failure)
    return ExportReport(
        path=path,
        contract=contract,
        graph_form=_graph_form(spec, decomposed),
        opset=OPSET,
        export_seconds=seconds,
        size_bytes=len(written),
        operators=dict(operator_counts(model.graph)),
        parity=parity,
    )
