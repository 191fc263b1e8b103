"""Export a whole model: torch.onnx for the non-recurrent parts, edge-rnn's graphs for the recurrent ones."""

from __future__ import annotations

import copy
import inspect
import io
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edge_rnn import __version__
from edge_rnn._inspect import operator_counts
from edge_rnn.contract import Contract, StateSpec, TensorSpec
from edge_rnn.errors import ModelFormatError, NotStreamableError, ShapeError, UnsupportedError
from edge_rnn.exporters._export import ExportReport, check_and_write
from edge_rnn.exporters._graph import GraphBuilder
from edge_rnn.exporters._layers import emit_module
from edge_rnn.exporters._lift import _REGISTRY, LiftedState, Lifter
from edge_rnn.exporters._spec import layer_weights
from edge_rnn.exporters.parity import check_against_torch, input_source, tolerance_for
from edge_rnn.harness import (
    Cases,
    InputLayout,
    ParityReport,
    chunk_sizes,
    open_sessions,
    raise_failures,
    read_contract,
    stream_chunks,
)

__all__ = ["export_model", "verify_model", "OPTION_KEYS"]

OPSET = 17
Arrays = dict[str, np.ndarray]


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    raise UnsupportedError(f"expected the model to return tensors or tuples of tensors, got {type(out).__name__}")


class _Top(torch.nn.Module):
    """model(*inputs) with the lifted states as extra inputs and outputs, for tracing."""

    def __init__(self, lifter: Lifter, n_inputs: int, lifted: list[LiftedState]):
        super().__init__()
        self.lifter, self.n_inputs, self.lifted = lifter, n_inputs, lifted
        self.inner = lifter.model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = args[: self.n_inputs]
        states = {s.input: t for s, t in zip(self.lifted, args[self.n_inputs :])}
        out, new = self.lifter.run(inputs, states)
        return (*_flatten(out), *(new[s.output] for s in self.lifted))


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


def _axes(names: Sequence[str], tensors: Sequence[torch.Tensor], given: Mapping[str, tuple[int, int | None]] | None,
          what: str, default: tuple[int, int | None] = (0, 1)) -> list[TensorSpec]:
    """Batch and time axes per tensor: as given, else ``default`` (time only for rank >= 3)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UnsupportedError(f"{what}_axes {unknown}: expected names among {list(names)}")
    out = []
    for name, t in zip(names, tensors):
        try:
            b, tm = given.get(name, (default[0], default[1] if t.dim() >= 3 else None))
        except (TypeError, ValueError):
            raise ShapeError(
                f"{what}_axes for {name!r}: expected (batch_axis, time_axis), got {given[name]!r}") from None
        if b == tm:
            raise ShapeError(f"{what}_axes for {name!r}: expected different batch and time axes, got {(b, tm)}")
        for axis in (b, tm):
            if axis is not None and not 0 <= axis < t.dim():
                raise ShapeError(f"{what}_axes for {name!r}: expected axes < {t.dim()} (shape {tuple(t.shape)}), "
                                 f"got {(b, tm)}")
        out.append(TensorSpec(name, b, tm))
    return out


OPTION_KEYS = ("input_names", "output_names", "input_axes", "output_axes", "states", "state_batch_axes",
               "streaming", "atol")


@dataclass
class _Resolved:
    """A whole model's streaming interface, worked out from the module, its example and the options."""

    lifter: Lifter
    contract: Contract
    in_names: list[str]
    out_names: list[str]
    lifted: list[LiftedState]
    explicit: dict[str, str]
    examples: tuple[torch.Tensor, ...]
    feeds0: Arrays  # the examples as float32 numpy, by input name


def _examples(example_input: Any) -> tuple[torch.Tensor, ...]:
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not examples or not all(isinstance(t, torch.Tensor) for t in examples):
        raise ShapeError(f"example_input: expected a tensor or a tuple of tensors, got {example_input!r}")
    return examples


def _resolve(lifter: Lifter, examples: tuple[torch.Tensor, ...], *, input_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None,
             input_axes: Mapping[str, tuple[int, int | None]] | None = None,
             output_axes: Mapping[str, tuple[int, int | None]] | None = None, states: Mapping[str, str] | None = None,
             state_batch_axes: Mapping[str, int] | None = None, streaming: bool = True, decomposed: bool = False
             ) -> _Resolved:
    model = lifter.model
    bidir = [p for p, s in lifter.recurrent.items() if s.bidirectional]
    if bidir and streaming:
        raise NotStreamableError(
            f"not streamable: {', '.join(bidir)} is bidirectional and reads the whole sequence backwards; "
            "export it with streaming=False to run one whole sequence per call"
        )
    out, lifted = lifter.discover(*examples)
    flat = _flatten(out)
    in_names = list(input_names or _param_names(model, len(examples)))
    out_names = list(output_names or (["y"] if len(flat) == 1 else [f"y{i}" for i in range(len(flat))]))
    if len(in_names) != len(examples) or len(out_names) != len(flat):
        raise ShapeError(f"expected {len(examples)} input names and {len(flat)} output names, got "
                         f"{in_names} and {out_names}")
    explicit = dict(states or {})
    bad = {k: v for k, v in explicit.items() if k not in in_names or v not in out_names}
    if bad:
        raise UnsupportedError(f"states {bad}: expected input -> output names among {in_names} -> {out_names}")
    if not lifted and not explicit:
        raise UnsupportedError(
            f"{type(model).__name__}: found no recurrent layer, cell or ContextBuffer called without a state, "
            "and no states= declared: nothing to stream"
        )
    data_in = [(n, t) for n, t in zip(in_names, examples) if n not in explicit]
    data_out = [(n, t) for n, t in zip(out_names, flat) if n not in explicit.values()]
    in_specs = _axes([n for n, _ in data_in], [t for _, t in data_in], input_axes, "input")
    batch = int(data_in[0][1].shape[in_specs[0].batch_axis]) if data_in else 1
    explicit_specs = _explicit_specs(explicit, in_names, examples, batch, state_batch_axes)
    probed = _probe_output_axes(lifter, in_names, examples, in_specs, explicit_specs, out_names,
                                [n for n, _ in data_out], output_axes)
    contract = Contract(
        inputs=tuple(in_specs),
        outputs=tuple(_axes([n for n, _ in data_out], [t for _, t in data_out], {**probed, **(output_axes or {})},
                            "output")),
        states=tuple(explicit_specs)
        + tuple(StateSpec(s.input, s.output, _none_at(s.shape, s.batch_axis), s.batch_axis) for s in lifted),
        source={"kind": "module", "module": f"{type(model).__module__}.{type(model).__qualname__}",
                "lifted": sorted({s.path for s in lifted}), "recurrent": sorted(lifter.recurrent),
                "graph_form": "decomposed" if decomposed else "native"},
        streamable=streaming,
    )
    feeds0 = {n: t.detach().numpy().astype(np.float32) for n, t in zip(in_names, examples)}
    return _Resolved(lifter, contract, in_names, out_names, lifted, explicit, examples, feeds0)


def _reference(lifter: Lifter, r: _Resolved, dtype: torch.dtype) -> Callable[[Arrays], Arrays]:
    """The model through ``lifter`` as one call of the ONNX graph (same feeds, same outputs), in ``dtype``."""
    # eval, and kept so: the TorchScript exporter restores the wrapper's mode after tracing
    top = _Top(lifter, len(r.in_names), r.lifted).eval()
    names = r.out_names + [s.output for s in r.lifted]

    def run(feeds: Arrays) -> Arrays:
        ins = tuple(torch.from_numpy(np.asarray(feeds[n])).to(dtype) for n in r.in_names)
        sts = [torch.from_numpy(np.asarray(feeds[s.input])).to(dtype) for s in r.lifted]
        with torch.no_grad():
            res = top(*ins, *sts)
        return {n: t.numpy() for n, t in zip(names, res)}

    return run


def _trace(r: _Resolved, path: Path, decomposed: bool) -> tuple[onnx.ModelProto, bytes]:
    """torch.onnx for the non-recurrent parts, edge-rnn's graphs spliced in for the recurrent ones; written."""
    contract = r.contract
    buf = io.BytesIO()
    dyn: dict[str, dict[int, str]] = {}
    for t in (*contract.inputs, *contract.outputs):
        dyn[t.name] = {t.batch_axis: "batch", **({t.time_axis: "time"} if t.time_axis is not None else {})}
    for s in contract.states:
        dyn[s.input] = {s.batch_axis: "batch"}
        dyn[s.output] = {s.batch_axis: "batch"}
    top = _Top(r.lifter, len(r.examples), r.lifted).eval()
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
    return proto, check_and_write(proto, path)


def export_model(
    model: torch.nn.Module,
    path: str | Path,
    *,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    input_axes: Mapping[str, tuple[int, int | None]] | None = None,
    output_axes: Mapping[str, tuple[int, int | None]] | None = None,
    states: Mapping[str, str] | None = None,
    state_batch_axes: Mapping[str, int] | None = None,
    decomposed: bool = False,
    streaming: bool = True,
    verify_parity: bool = True,
    long_steps: int = 2_000,
    seed: int = 0,
    atol: float | None = None,
    raise_on_failure: bool = True,
    data: Any = None,
) -> ExportReport:
    """See :func:`edge_rnn.export`; this is its path for models that are more than one recurrent layer."""
    path = Path(path)
    examples = _examples(example_input)
    lifter = Lifter(model)
    try:
        r = _resolve(lifter, examples, input_names=input_names, output_names=output_names, input_axes=input_axes,
                     output_axes=output_axes, states=states, state_batch_axes=state_batch_axes, streaming=streaming,
                     decomposed=decomposed)
        if verify_parity and data is not None:  # bad data is refused before anything is written
            input_source(_layouts(r), data)
        if streaming:
            state_examples = {s.input: np.zeros(s.shape, np.float32) for s in r.lifted}
            _check_streamable(_reference(lifter, r, torch.float32), r.contract, r.feeds0, state_examples,
                              r.explicit, tolerance_for(atol).atol, seed)
        t0 = time.perf_counter()
        proto, data_bytes = _trace(r, path, decomposed)
        seconds = time.perf_counter() - t0
        parity = None
        if verify_parity:
            parity = _verify_resolved(model, r, path, data=data, long_steps=long_steps, seed=seed, atol=atol)
            if raise_on_failure:
                raise_failures(parity, path)
        return ExportReport(path=path, contract=r.contract, graph_form="decomposed" if decomposed else "native",
                            opset=OPSET, export_seconds=seconds, size_bytes=len(data_bytes),
                            operators=dict(operator_counts(proto.graph)), parity=parity)
    finally:
        lifter.close()


def _layouts(r: _Resolved) -> list[InputLayout]:
    return [InputLayout(t.name, r.feeds0[t.name].shape, t.batch_axis, t.time_axis) for t in r.contract.inputs]


def _verify_resolved(model: torch.nn.Module, r: _Resolved, path: Path, *, data: Any, long_steps: int, seed: int,
                     atol: float | None, opt_levels: tuple[str, ...] = ("disabled", "default")) -> ParityReport:
    """The written file against the model in float64 (the reference) and float32 (the noise)."""
    contract = r.contract
    first = contract.inputs[0]
    ex = r.feeds0[first.name]
    ex_t = ex.shape[first.time_axis] if first.time_axis is not None else 1
    streaming = contract.streamable
    cases = Cases(batch=int(ex.shape[first.batch_axis]) + 1,
                  seq_lens=tuple(t for t in (1, 7, 23) if t != ex_t) if contract.is_streaming else (1,),
                  chunked_len=41 if streaming else 0, long_steps=long_steps if streaming else 0)
    inputs = input_source(_layouts(r), data)
    with ExitStack() as stack:
        def ref64() -> Callable[[Arrays], Arrays]:
            twin = Lifter(copy.deepcopy(model).double())
            stack.callback(twin.close)
            return _reference(twin, r, torch.float64)

        report = check_against_torch(path, contract, _reference(r.lifter, r, torch.float32), ref64, inputs,
                                     cases=cases, seed=seed, tolerance=tolerance_for(atol), opt_levels=opt_levels)
    if data is not None:
        report.notes.append("inputs: the given data, repeated where shorter than a case")
    if not streaming:
        report.notes.append("exported with streaming=False: checked whole sequences per call only")
    return report


def verify_model(
    model: torch.nn.Module, path: str | Path, *, example_input: Any = None, data: Any = None,
    options: Mapping[str, Any] | None = None, long_steps: int = 10_000, seed: int = 0, atol: float | None = None,
    raise_on_failure: bool = True, opt_levels: tuple[str, ...] = ("disabled", "default"),
) -> ParityReport:
    """:func:`edge_rnn.verify` for a whole model: what export checked, again, on the file at ``path``.

    Names, axes and states default to those in the file's contract, so the
    options given to export are needed only where they cannot be read back.
    """
    path = Path(path)
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise UnsupportedError(f"whole_model_options {unknown}: expected keys among {sorted(OPTION_KEYS)}")
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    session = open_sessions(path, ("disabled",))["disabled"]
    contract = read_contract(path)
    if contract.source.get("kind") != "module":
        raise UnsupportedError(
            f"{path}: holds a bare {contract.source.get('module', 'recurrent layer')}, not a whole model; verify it "
            f"against that layer, not against {type(model).__name__}")
    derived, examples = _options_from_file(contract, session, example_input)
    atol = opts.pop("atol", None) if atol is None else atol
    lifter = Lifter(model)
    try:
        r = _resolve(lifter, examples, **_merge(derived, opts))
        _same_interface(r.contract, contract, path)
        report = _verify_resolved(model, r, path, data=data, long_steps=long_steps, seed=seed, atol=atol,
                                  opt_levels=opt_levels)
    finally:
        lifter.close()
    if raise_on_failure:
        raise_failures(report, path)
    return report


def _merge(derived: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The options read from the file, overridden by those given; file entries about names no longer there dropped."""
    out = {**derived, **given}
    ins, outs = set(out["input_names"]), set(out["output_names"])
    for key, names in (("input_axes", ins), ("output_axes", outs), ("state_batch_axes", ins)):
        if key not in given:
            out[key] = {k: v for k, v in out[key].items() if k in names}
    if "states" not in given:
        out["states"] = {k: v for k, v in out["states"].items() if k in ins and v in outs}
    return out


def _is_lifted(state: StateSpec, contract: Contract) -> bool:
    path, _, leaf = state.input.rpartition(".")
    return path in contract.source.get("lifted", []) and leaf in ("h0", "c0", "ctx0")


def _options_from_file(contract: Contract, session: Any, example_input: Any
                       ) -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
    """The whole-model options the file's contract implies, and example inputs (zeros) shaped from the graph."""
    lifted_in = {s.input for s in contract.states if _is_lifted(s, contract)}
    lifted_out = {s.output for s in contract.states if _is_lifted(s, contract)}
    explicit = [s for s in contract.states if s.input not in lifted_in]
    graph_inputs = [i for i in session.get_inputs() if i.name not in lifted_in]
    derived: dict[str, Any] = {
        "input_names": [i.name for i in graph_inputs],
        "output_names": [o.name for o in session.get_outputs() if o.name not in lifted_out],
        "input_axes": {t.name: (t.batch_axis, t.time_axis) for t in contract.inputs},
        "output_axes": {t.name: (t.batch_axis, t.time_axis) for t in contract.outputs},
        "states": {s.input: s.output for s in explicit},
        "state_batch_axes": {s.input: s.batch_axis for s in explicit},
        "streaming": contract.streamable,
    }
    if example_input is not None:
        return derived, _examples(example_input)
    axes = {t.name: t for t in contract.inputs}
    examples = []
    for i in graph_inputs:
        state = next((s for s in explicit if s.input == i.name), None)
        if state is not None:
            examples.append(torch.zeros(state.concrete_shape(1)))
            continue
        t = axes.get(i.name)
        shape = [d if isinstance(d, int) else 1 if t and k == t.batch_axis else 8 if t and k == t.time_axis else None
                 for k, d in enumerate(i.shape)]
        if t is None or None in shape:
            raise UnsupportedError(f"input {i.name!r} of shape {i.shape}: cannot build an example from the file; "
                                   "pass example_input as given to export")
        examples.append(torch.zeros(shape))
    return derived, tuple(examples)


def _same_interface(ours: Contract, theirs: Contract, path: Path) -> None:
    """The module, resolved with these options, must stream exactly as the file says."""
    for what in ("inputs", "outputs", "states", "streamable"):
        a, b = getattr(ours, what), getattr(theirs, what)
        if a != b:
            raise ModelFormatError(
                f"{path}: the module resolves to other {what} than the file's contract: expected {b}, got {a}; "
                "pass the whole_model_options given to export, or the module that was exported")


def _probe_output_axes(lifter: Lifter, in_names: list[str], examples: tuple[torch.Tensor, ...],
                       in_specs: list[TensorSpec], explicit: list[StateSpec], out_names: list[str],
                       data_out: list[str], given: Mapping[str, Any] | None) -> dict[str, tuple[int, int | None]]:
    """Each output's batch and time axes, found by running the model again with one more stream and more frames.

    The axis that grows with the batch is the batch axis; the one that grows
    with the frames is the time axis (none: one value per call).
    """
    todo = [n for n in data_out if n not in (given or {})]
    if not todo:
        return {}
    axes_of = {t.name: (t.batch_axis, t.time_axis) for t in in_specs}
    axes_of.update({s.input: (s.batch_axis, None) for s in explicit})

    def grown(batch_extra: int, time_extra: int) -> dict[str, tuple[int, ...]]:
        ins = []
        for name, t in zip(in_names, examples):
            b, tm = axes_of[name]
            shape = list(t.shape)
            shape[b] += batch_extra
            if tm is not None:
                shape[tm] += time_extra
            ins.append(torch.zeros(shape, dtype=t.dtype))
        try:
            out, _ = lifter.discover(*ins)
        except Exception as e:  # noqa: BLE001 - the model's own error, with the shapes that caused it
            raise ShapeError(
                f"the model fails when the inputs grow along their declared axes {axes_of} ({type(e).__name__}: "
                f"{e}); check input_axes"
            ) from None
        return {n: tuple(t.shape) for n, t in zip(out_names, _flatten(out))}

    base, more_b = grown(0, 0), grown(1, 0)
    more_t = grown(0, 3) if any(t.time_axis is not None for t in in_specs) else base
    found = {}
    for n in todo:
        b_axes = [i for i, (a, c) in enumerate(zip(base[n], more_b[n])) if a != c]
        t_axes = [i for i, (a, c) in enumerate(zip(base[n], more_t[n])) if a != c]
        if len(b_axes) != 1 or len(t_axes) > 1:
            raise ShapeError(
                f"output {n!r} of shape {base[n]}: cannot tell its batch and time axes (grows with the batch along "
                f"{b_axes}, with time along {t_axes}); pass output_axes={{{n!r}: (batch_axis, time_axis)}}"
            )
        found[n] = (b_axes[0], t_axes[0] if t_axes else None)
    return found


def _none_at(shape: tuple[int, ...], axis: int) -> tuple[int | None, ...]:
    return tuple(None if i == axis else d for i, d in enumerate(shape))


def _param_names(model: torch.nn.Module, n: int) -> list[str]:
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) >= n:
        return params[:n]
    return ["x"] if n == 1 else [f"x{i}" for i in range(n)]


def _explicit_specs(explicit: Mapping[str, str], in_names: list[str], examples: tuple[torch.Tensor, ...],
                    batch: int, batch_axes: Mapping[str, int] | None) -> list[StateSpec]:
    out = []
    for i, o in explicit.items():
        t = examples[in_names.index(i)]
        axis = (batch_axes or {}).get(i)
        if axis is None:
            cands = [a for a, d in enumerate(t.shape) if d == batch]
            if len(cands) != 1:
                raise UnsupportedError(
                    f"state {i!r} of shape {tuple(t.shape)}: cannot tell its batch axis (size {batch}); "
                    f"pass state_batch_axes={{{i!r}: axis}}"
                )
            axis = cands[0]
        out.append(StateSpec(i, o, _none_at(tuple(t.shape), axis), axis))
    return out


def _check_streamable(reference: Any, contract: Contract, feeds: Arrays, lifted_zeros: Arrays,
                      explicit: Mapping[str, str], tol: float, seed: int) -> None:
    """Chunked streaming in PyTorch itself must equal one pass, before anything is written."""
    if not contract.is_streaming:
        return
    rng = np.random.default_rng(seed + 17)
    t_ax = contract.inputs[0].time_axis
    steps = 37
    ins = {}
    for t in contract.inputs:
        shape = list(feeds[t.name].shape)
        if t.time_axis is not None:
            shape[t.time_axis] = steps
        ins[t.name] = rng.standard_normal(shape).astype(np.float32)
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
