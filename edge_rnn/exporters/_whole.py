"""Export a whole model: torch.onnx for the non-recurrent parts, edge-rnn's graphs for the recurrent ones."""

from __future__ import annotations

import dataclasses
import io
import time
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edge_rnn._inspect import operator_counts
from edge_rnn._version import __version__
from edge_rnn.contract import Contract
from edge_rnn.errors import NotStreamableError, ShapeError
from edge_rnn.exporters._lift import _REGISTRY, Lifter
from edge_rnn.exporters._references import input_source, tolerance_for
from edge_rnn.exporters._spec import layer_weights
from edge_rnn.exporters._whole_resolve import Arrays, Resolved, Top, examples_of, reference, resolve
from edge_rnn.exporters._whole_verify import layouts, verify_resolved
from edge_rnn.exporters._write import ExportReport, check_and_write, failed_parity, staged
from edge_rnn.exporters.options import ExportOptions, StreamingIO
from edge_rnn.graphs import OPSET, GraphBuilder, emit_module
from edge_rnn.harness import InputLayout, chunk_sizes, random_inputs, stream_chunks

__all__ = ["export_model"]


def _splice(model: onnx.ModelProto, lifter: Lifter, decomposed: bool) -> None:
    """Replace every edge_rnn::Recurrent placeholder with edge-rnn's own recurrent graph."""
    g = model.graph
    nodes = list(g.node)
    del g.node[:]
    calls: dict[int, int] = {}
    for node in nodes:
        if node.domain != "edge_rnn":
            g.node.append(node)
            continue
        key = next(a.i for a in node.attribute if a.name == "key")
        _, spec, module = _REGISTRY[key]
        calls[key] = calls.get(key, 0) + 1  # a module called twice is spliced twice, under two prefixes
        suffix = "" if calls[key] == 1 else f"#{calls[key]}"
        b = GraphBuilder("splice", prefix=f"{lifter.paths[key]}{suffix}/")
        lstm = spec.kind == "lstm"
        emit_module(b, spec, partial(layer_weights, module, spec), node.input[0], node.input[1],
                    node.input[2] if lstm else None, decomposed=decomposed,
                    outputs=(node.output[0], node.output[1], node.output[2]))
        if not lstm:
            b.op1("Identity", [node.output[1]], output=node.output[2])
        g.node.extend(b.nodes)
        g.initializer.extend(b.initializers)
    keep = [o for o in model.opset_import if o.domain != "edge_rnn"]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _trace(r: Resolved, path: Path, decomposed: bool, check: bool = True) -> tuple[onnx.ModelProto, bytes]:
    """torch.onnx for the non-recurrent parts, edge-rnn's graphs spliced in for the recurrent ones; written."""
    contract = r.contract
    buf = io.BytesIO()
    dyn: dict[str, dict[int, str]] = {}
    for t in (*contract.inputs, *contract.outputs):
        dyn[t.name] = {t.batch_axis: "batch", **({t.time_axis: "time"} if t.time_axis is not None else {})}
    for s in contract.states:
        dyn[s.input] = {s.batch_axis: "batch"}
        dyn[s.output] = {s.batch_axis: "batch"}
    top = Top(r.lifter, len(r.examples), r.lifted).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            top, (*r.examples, *(torch.zeros(s.shape) for s in r.lifted)), buf, dynamo=False, opset_version=OPSET,
            input_names=r.in_names + [s.input for s in r.lifted],
            output_names=r.out_names + [s.output for s in r.lifted], dynamic_axes=dyn, do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    _splice(proto, r.lifter, decomposed)
    for vi in proto.graph.output:  # the tracer leaves symbolic names where a state's size is fixed
        spec = next((s for s in contract.states if s.output == vi.name), None)
        if spec is not None:
            vi.CopyFrom(onnx.helper.make_tensor_value_info(
                vi.name, vi.type.tensor_type.elem_type, ["batch" if d is None else d for d in spec.shape]))
    proto.producer_name, proto.producer_version = "edge-rnn", __version__
    onnx.helper.set_model_props(proto, contract.to_metadata())
    return proto, check_and_write(proto, path, check=check)


def export_model(model: torch.nn.Module, path: str | Path, *, example_input: torch.Tensor | Sequence[torch.Tensor],
                 io: StreamingIO, options: ExportOptions, data: Any = None) -> ExportReport:
    """See :func:`edge_rnn.export`; this is its path for models that are more than one recurrent layer."""
    path = Path(path)
    o = options
    examples = examples_of(example_input)
    with Lifter(model) as lifter:
        r = resolve(lifter, examples, io, decomposed=o.decomposed)
        if o.verify_parity and data is not None:  # bad data is refused before anything is written
            input_source(layouts(r), data)
        if io.streaming:
            state_examples = {s.input: np.zeros(s.shape, np.float32) for s in r.lifted}
            _check_streamable(reference(lifter, r, torch.float32), r.contract, layouts(r), r.feeds0, state_examples,
                              tolerance_for(o.atol).atol, o.seed)
        t0 = time.perf_counter()
        if o.extra_source:
            r.contract = dataclasses.replace(r.contract, source={**r.contract.source, **o.extra_source})
        parity = kept = None
        with staged(path) as tmp:
            proto, data_bytes = _trace(r, tmp, o.decomposed, o.check)
            seconds = time.perf_counter() - t0
            if o.verify_parity:
                parity = verify_resolved(model, r, tmp, data=data, checks=o.parity)
            kept = failed_parity(parity, tmp, path, keep_failed=o.keep_failed, raise_on_failure=o.raise_on_failure)
        return ExportReport(path=path, contract=r.contract, graph_form="decomposed" if o.decomposed else "native",
                            opset=OPSET, export_seconds=seconds, size_bytes=len(data_bytes),
                            operators=dict(operator_counts(proto.graph)), parity=parity,
                            written=parity is None or parity.ok, kept_at=kept)


def _check_streamable(reference: Any, contract: Contract, inputs: list[InputLayout], feeds: Arrays,
                      lifted_zeros: Arrays, tol: float, seed: int) -> None:
    """Chunked streaming in PyTorch itself must equal one pass, before anything is written."""
    if not contract.is_streaming:
        return
    rng = np.random.default_rng(seed + 17)
    t_ax = contract.inputs[0].time_axis
    steps = 37
    first = inputs[0]
    ins = random_inputs(inputs)(rng, first.shape[first.batch_axis], steps, False)
    states = dict(lifted_zeros)
    for s in contract.states:
        if s.input not in states:
            states[s.input] = feeds[s.input]
    try:
        whole = reference({**ins, **states})
    except Exception as e:  # noqa: BLE001 - the model's own error on a longer sequence
        raise ShapeError(
            f"the model fails on a whole sequence of {steps} frames along the declared time axes "
            f"({type(e).__name__}: {e}); check input_axes"
        ) from None
    sizes = [1] + chunk_sizes(rng, steps - 1, 6)  # a one-frame chunk first: the shortest a stream can send

    def model_call(feeds: Arrays) -> Arrays:
        try:
            return reference(feeds)
        except Exception as e:  # noqa: BLE001 - whatever the model raised, it cannot take this chunk
            n = feeds[contract.inputs[0].name].shape[t_ax] if t_ax is not None else 1
            raise NotStreamableError(
                f"not streamable: the model fails on a chunk of {n} frame(s) ({type(e).__name__}: {e}); "
                "something needs the whole sequence (normalisation or pooling over time?). Export with "
                "streaming=False to run one whole sequence per call."
            ) from None

    chunked = stream_chunks(model_call, contract, ins, states, sizes)
    bad = {n: float(np.max(np.abs(chunked[n] - whole[n]))) for n in whole if n in chunked}
    bad = {n: d for n, d in bad.items() if not d <= tol}  # NaN counts as a difference
    if bad:
        listed = ", ".join(f"{n} (max difference {d:.2e})" for n, d in bad.items())
        raise NotStreamableError(
            f"not streamable: feeding the sequence in chunks with the state carried changes {listed}. "
            "Something mixes information across time outside the recurrent layers: a convolution that looks "
            "ahead (give it a ContextBuffer and padding=0), normalisation or pooling over the time axis, or a "
            f"time axis other than {t_ax}. Export with streaming=False to run one whole sequence per call."
        )
