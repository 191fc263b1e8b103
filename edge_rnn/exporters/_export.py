"""Export a bare RNN/LSTM/GRU layer or cell: the graph built straight from its weights, no torch.onnx."""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import helper

from edge_rnn._inspect import operator_counts
from edge_rnn._version import __version__
from edge_rnn.contract import Contract, TensorSpec
from edge_rnn.errors import ShapeError
from edge_rnn.exporters._references import input_source, layer_layouts
from edge_rnn.exporters._spec import layer_weights, spec_from_module
from edge_rnn.exporters._write import ExportReport, check_and_write, failed_parity, staged
from edge_rnn.exporters.options import ExportOptions
from edge_rnn.exporters.parity import check_layer
from edge_rnn.graphs import IR_VERSION, OPSET, GraphBuilder, emit_module, native_possible
from edge_rnn.spec import RecurrentSpec

__all__ = ["export_layer", "build_model"]


def _contract(spec: RecurrentSpec, extra_source: Mapping[str, Any] | None = None) -> Contract:
    io_batch, io_time = spec.io_axes
    return Contract(
        inputs=(TensorSpec("x", io_batch, io_time, "float32"),),
        outputs=(TensorSpec("y", io_batch, io_time, "float32"),),
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
    return _graph(module, spec, _contract(spec, extra_source), decomposed), spec


def _graph(module: torch.nn.Module, spec: RecurrentSpec, contract: Contract, decomposed: bool) -> onnx.ModelProto:
    """The model of the layer ``spec`` describes, its weights from ``module``, ``contract`` in its metadata."""

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
    return model


def _check_example(spec: RecurrentSpec, example_input: torch.Tensor | None) -> None:
    if example_input is None:
        return
    shape = tuple(example_input.shape)
    want = 2 if spec.cell else 3
    if len(shape) not in (want - 1, want) or shape[-1] != spec.input_size:
        layout = "batch, " if spec.cell else "batch, time, " if spec.batch_first else "time, batch, "
        raise ShapeError(f"example_input: expected shape ({layout}{spec.input_size}), got {shape}")


def export_layer(module: torch.nn.Module, spec: RecurrentSpec, path: Path, *, example_input: torch.Tensor | None,
                 options: ExportOptions, data: Any) -> ExportReport:
    """:func:`edge_rnn.export` for a bare layer or cell (``spec``: :func:`recurrent_spec` of ``module``).

    The contract is built once: written into the model's metadata, checked against by the parity check
    and returned in the report.
    """
    if module.training:
        warnings.warn(
            f"{type(module).__name__} is in training mode; exporting and verifying its eval-mode behaviour "
            "(no dropout). Call module.eval() to silence this.",
            stacklevel=2,
        )
        module = copy.deepcopy(module).eval()
    t0 = time.perf_counter()
    o = options
    contract = _contract(spec, o.extra_source)
    model = _graph(module, spec, contract, o.decomposed)
    _check_example(spec, example_input)
    if o.verify_parity and data is not None:  # bad data is refused before anything is written
        input_source(layer_layouts(contract, spec), data)
    parity = kept = None
    with staged(path) as tmp:
        written = check_and_write(model, tmp, check=o.check)
        seconds = time.perf_counter() - t0
        if o.verify_parity:
            parity = check_layer(module, spec, contract, tmp, example_input=example_input, data=data,
                                 checks=o.parity)
        kept = failed_parity(parity, tmp, path, keep_failed=o.keep_failed, raise_on_failure=o.raise_on_failure)
    return ExportReport(
        path=path,
        contract=contract,
        graph_form=_graph_form(spec, o.decomposed),
        opset=OPSET,
        export_seconds=seconds,
        size_bytes=len(written),
        operators=dict(operator_counts(model.graph)),
        parity=parity,
        written=parity is None or parity.ok,
        kept_at=kept,
    )
