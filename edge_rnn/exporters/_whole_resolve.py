"""A whole model's streaming interface, worked out from the module, an example input and the options.

Names, batch and time axes of the inputs and outputs, the states lifted out of
recurrent submodules and context buffers, and the states the model declares
itself; and the model as one call of the graph (:func:`reference`), in any
dtype, for the parity check.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from edge_rnn.contract import Contract, StateSpec, TensorSpec, axes_problem
from edge_rnn.errors import EdgeRnnError, NotStreamableError, ShapeError, UnsupportedError, message_line
from edge_rnn.exporters._checkpoint import weights_digest
from edge_rnn.exporters._lift import LiftedState, Lifter
from edge_rnn.exporters.options import StreamingIO

__all__ = ["Resolved", "resolve", "reference", "examples_of", "Top"]

Arrays = dict[str, np.ndarray]


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    raise UnsupportedError(f"expected the model to return tensors or tuples of tensors, got {type(out).__name__}")


class Top(torch.nn.Module):
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


def _axes(tensors: Sequence[tuple[str, torch.Tensor]], given: Mapping[str, tuple[int, int | None]], what: str,
          default: tuple[int, int | None] = (0, 1)) -> list[TensorSpec]:
    """Batch and time axes per named tensor: as given, else ``default`` (time only for rank >= 3, or an integer
    tensor of rank 2: token ids ``(batch, time)``)."""
    names = [n for n, _ in tensors]
    given = dict(given)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UnsupportedError(f"{what}_axes {unknown}: expected names among {list(names)}")
    out = []
    for name, t in tensors:
        try:
            timed = t.dim() >= 3 or (t.dim() == 2 and not t.is_floating_point())  # (batch, time) token ids
            b, tm = given.get(name, (default[0], default[1] if timed else None))
        except (TypeError, ValueError):
            raise ShapeError(
                f"{what}_axes for {name!r}: expected (batch_axis, time_axis), got {given[name]!r}") from None
        problem = axes_problem(t.dim(), b, tm)
        if problem:
            raise ShapeError(f"{what}_axes for {name!r} of shape {tuple(t.shape)}: {problem}")
        out.append(TensorSpec(name, b, tm))
    return out


@dataclass
class Resolved:
    """A whole model's streaming interface, worked out from the module, its example and the options."""

    lifter: Lifter
    contract: Contract
    in_names: list[str]
    out_names: list[str]
    lifted: list[LiftedState]
    explicit: dict[str, str]
    examples: tuple[torch.Tensor, ...]
    feeds0: Arrays  # the examples as numpy by input name: floats as float32, integers as they are


def _dtype_name(t: torch.Tensor) -> str:
    """The graph's element type for a tensor of the model: float32 for any float (the graph is float32)."""
    return "float32" if t.is_floating_point() else str(t.dtype).removeprefix("torch.")


def _numpy_example(t: torch.Tensor) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a.astype(np.float32) if t.is_floating_point() else a


def _as_torch(a: Any, dtype: torch.dtype) -> torch.Tensor:
    """A feed as a torch tensor: floats in ``dtype`` (the reference's precision), integers and bools as they are."""
    t = torch.from_numpy(np.asarray(a))
    return t.to(dtype) if t.is_floating_point() else t


class _EmbeddingInputs:
    """Which inputs index an ``nn.Embedding`` directly, and its number of rows: their range of valid values.

    ONNX's Gather reads a negative index from the end of the table where PyTorch raises, and fails on one past
    it only at run time, so the range goes into the contract and the runtime checks it before each call.
    """

    def __init__(self, model: torch.nn.Module):
        self.model, self.calls, self.handles = model, [], []

    def __enter__(self) -> _EmbeddingInputs:
        for m in self.model.modules():
            if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                self.handles.append(m.register_forward_pre_hook(self._seen))
        return self

    def _seen(self, module: torch.nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            self.calls.append((args[0], module.num_embeddings))

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def range_of(self, t: torch.Tensor) -> tuple[int, int] | None:
        if t.is_floating_point() or t.dtype == torch.bool:
            return None
        rows = [n for idx, n in self.calls if idx is t or (idx.dtype == t.dtype and idx.shape == t.shape
                                                            and idx.data_ptr() == t.data_ptr())]
        return (0, min(rows) - 1) if rows else None


def examples_of(example_input: Any) -> tuple[torch.Tensor, ...]:
    examples = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not examples or not all(isinstance(t, torch.Tensor) for t in examples):
        raise ShapeError(f"example_input: expected a tensor or a tuple of tensors, got {example_input!r}")
    return examples


def resolve(lifter: Lifter, examples: tuple[torch.Tensor, ...], io: StreamingIO, *, decomposed: bool = False
            ) -> Resolved:
    """The streaming interface of ``lifter``'s model: what ``io`` says, the rest found by running it on ``examples``.

    Inputs and outputs named by ``io`` (else by ``forward``'s parameters and ``y``/``y0``...), their axes as
    given or probed, the states the model declares (``io.states``) and those lifted from its recurrent
    submodules and context buffers. ``decomposed`` is recorded in the contract's ``source``.
    """
    _refuse_bidirectional(lifter, io.streaming)
    out, lifted, seen = _discover(lifter, examples)
    flat = _flatten(out)
    in_names, out_names = _names(io, lifter.model, len(examples), len(flat))
    explicit = _declared_states(io.states, in_names, out_names)
    data_in = [(n, t) for n, t in zip(in_names, examples) if n not in explicit]
    data_out = [(n, t) for n, t in zip(out_names, flat) if n not in explicit.values()]
    in_specs = [dataclasses.replace(spec, dtype=_dtype_name(t), values=seen.range_of(t))
                for spec, (_, t) in zip(_axes(data_in, io.input_axes, "input"), data_in)]
    _refuse_loops_over_time(lifter, in_specs, dict(data_in))
    if not lifted and not explicit:
        raise UnsupportedError(
            f"{type(lifter.model).__name__}: found no recurrent layer, cell or ContextBuffer called without a state, "
            "and no states= declared: nothing to stream"
        )
    batch = int(data_in[0][1].shape[in_specs[0].batch_axis]) if data_in else 1
    explicit_specs = _explicit_specs(explicit, in_names, examples, batch, io.state_batch_axes)
    probed = _probe_output_axes(lifter, in_names, examples, in_specs, explicit_specs, out_names,
                                [n for n, _ in data_out], io.output_axes)
    out_specs = [dataclasses.replace(spec, dtype=_dtype_name(t))
                 for spec, (_, t) in zip(_axes(data_out, {**probed, **io.output_axes}, "output"), data_out)]
    contract = Contract(
        inputs=tuple(in_specs),
        outputs=tuple(out_specs),
        states=(*explicit_specs, *_lifted_specs(lifted)),
        source=_source(lifter, lifted, decomposed),
        streamable=io.streaming,
    )
    feeds0 = {n: _numpy_example(t) for n, t in zip(in_names, examples)}
    return Resolved(lifter, contract, in_names, out_names, lifted, explicit, examples, feeds0)


def _refuse_bidirectional(lifter: Lifter, streaming: bool) -> None:
    """A bidirectional layer reads the sequence backwards: it streams only with streaming=False."""
    bidir = [p for p, s in lifter.recurrent.items() if s.bidirectional]
    if bidir and streaming:
        raise NotStreamableError(
            f"not streamable: {', '.join(bidir)} is bidirectional and reads the whole sequence backwards; "
            "export it with streaming=False to run one whole sequence per call"
        )


def _discover(lifter: Lifter, examples: tuple[torch.Tensor, ...]
              ) -> tuple[Any, list[LiftedState], _EmbeddingInputs]:
    """One forward on the examples: its output, the states found to lift, and which inputs index an embedding."""
    try:
        with _EmbeddingInputs(lifter.model) as seen:
            out, lifted = lifter.discover(*examples)
    except EdgeRnnError:
        raise
    except Exception as e:  # noqa: BLE001 - the model's own error on the example: one line, not a traceback
        shapes = [tuple(t.shape) for t in examples]
        raise ShapeError(f"the model fails on example_input of shape(s) {shapes}: {type(e).__name__}: "
                         f"{message_line(e, last=True)}") from None
    return out, lifted, seen


def _names(io: StreamingIO, model: torch.nn.Module, n_in: int, n_out: int) -> tuple[list[str], list[str]]:
    """Input and output names: as given, else ``forward``'s parameters and ``y`` (or ``y0``, ``y1``...)."""
    in_names = list(io.input_names or _param_names(model, n_in))
    out_names = list(io.output_names or (["y"] if n_out == 1 else [f"y{i}" for i in range(n_out)]))
    if len(in_names) != n_in or len(out_names) != n_out:
        raise ShapeError(f"expected {n_in} input names and {n_out} output names, got {in_names} and {out_names}")
    return in_names, out_names


def _declared_states(states: Mapping[str, str], in_names: list[str], out_names: list[str]) -> dict[str, str]:
    """The states the model declares (input name -> output name), each between names it has."""
    explicit = dict(states)
    bad = {k: v for k, v in explicit.items() if k not in in_names or v not in out_names}
    if bad:
        raise UnsupportedError(f"states {bad}: expected input -> output names among {in_names} -> {out_names}")
    return explicit


def _lifted_specs(lifted: list[LiftedState]) -> list[StateSpec]:
    """The lifted states as contract states: their example shape, with None at the batch axis."""
    return [StateSpec(s.input, s.output, _none_at(s.shape, s.batch_axis), s.batch_axis) for s in lifted]


def _source(lifter: Lifter, lifted: list[LiftedState], decomposed: bool) -> dict[str, Any]:
    """The contract's ``source`` for a whole model: its class, what was lifted, and the graph form."""
    model = lifter.model
    return {"kind": "module", "module": f"{type(model).__module__}.{type(model).__qualname__}",
            "lifted": sorted({s.path for s in lifted}), "recurrent": sorted(lifter.recurrent),
            "graph_form": "decomposed" if decomposed else "native", "weights": weights_digest(model)}


def reference(lifter: Lifter, r: Resolved, dtype: torch.dtype) -> Callable[[Arrays], Arrays]:
    """The model through ``lifter`` as one call of the ONNX graph (same feeds, same outputs), in ``dtype``."""
    # eval, and kept so: the TorchScript exporter restores the wrapper's mode after tracing
    top = Top(lifter, len(r.in_names), r.lifted).eval()
    names = r.out_names + [s.output for s in r.lifted]

    def run(feeds: Arrays) -> Arrays:
        ins = tuple(_as_torch(feeds[n], dtype) for n in r.in_names)
        sts = [_as_torch(feeds[s.input], dtype) for s in r.lifted]
        with torch.no_grad():
            res = top(*ins, *sts)
        return {n: t.numpy() for n, t in zip(names, res)}

    return run


def _refuse_loops_over_time(lifter: Lifter, in_specs: list[TensorSpec], examples: Mapping[str, torch.Tensor]) -> None:
    """A cell called once per time step of the example is a Python loop over time: the trace would unroll it."""
    steps = {int(examples[t.name].shape[t.time_axis]) for t in in_specs if t.time_axis is not None}
    for path, n in lifter.calls_per_forward.items():
        spec = lifter.recurrent[path]
        if spec.cell and n > 1 and n in steps:
            layer = spec.kind.upper()
            cell = f"{layer}Cell"
            raise UnsupportedError(
                f"{path}: a {cell} called {n} times in one forward, once per time step of the example: a Python "
                f"loop over time. The traced graph would repeat it exactly {n} times, whatever the chunk's length. "
                f"Replace the loop with nn.{layer}({spec.input_size}, {spec.hidden_size}, batch_first=...), the same "
                f"recurrence over a time axis (give it the cell's weights: weight_ih_l0 = cell.weight_ih, ...), or "
                "call the cell once per forward on one step (batch, features): edge-rnn lifts its state and the "
                "runtime steps it")


def _probe_output_axes(lifter: Lifter, in_names: list[str], examples: tuple[torch.Tensor, ...],
                       in_specs: list[TensorSpec], explicit: list[StateSpec], out_names: list[str],
                       data_out: list[str], given: Mapping[str, Any]) -> dict[str, tuple[int, int | None]]:
    """Each output's batch and time axes, found by running the model again with one more stream and more frames.

    The axis that grows with the batch is the batch axis; the one that grows
    with the frames is the time axis (none: one value per call).
    """
    todo = [n for n in data_out if n not in given]
    if not todo:
        return {}
    axes_of = {t.name: (t.batch_axis, t.time_axis) for t in in_specs}
    axes_of.update({s.input: (s.batch_axis, None) for s in explicit})
    grown = partial(_grown_output_shapes, lifter, list(zip(in_names, examples)), axes_of, out_names)
    base, more_b = grown(0, 0), grown(1, 0)
    more_t = grown(0, 3) if any(t.time_axis is not None for t in in_specs) else base
    return {n: _axes_that_grew(n, base[n], more_b[n], more_t[n]) for n in todo}


def _grown_output_shapes(lifter: Lifter, inputs: list[tuple[str, torch.Tensor]],
                         axes_of: Mapping[str, tuple[int, int | None]], out_names: list[str], batch_extra: int,
                         time_extra: int) -> dict[str, tuple[int, ...]]:
    """The outputs' shapes for zeros shaped as the examples, grown along their declared batch and time axes."""
    ins = []
    for name, t in inputs:
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
            f"the model fails when the inputs grow along their declared axes {dict(axes_of)} ({type(e).__name__}: "
            f"{e}); check input_axes"
        ) from None
    return {n: tuple(t.shape) for n, t in zip(out_names, _flatten(out))}


def _axes_that_grew(name: str, base: tuple[int, ...], more_batch: tuple[int, ...], more_time: tuple[int, ...]
                    ) -> tuple[int, int | None]:
    """(batch axis, time axis) of one output: the one axis that grew with the batch, and the one (if any) with time."""
    b_axes = [i for i, (a, c) in enumerate(zip(base, more_batch)) if a != c]
    t_axes = [i for i, (a, c) in enumerate(zip(base, more_time)) if a != c]
    if len(b_axes) != 1 or len(t_axes) > 1:
        raise ShapeError(
            f"output {name!r} of shape {base}: cannot tell its batch and time axes (grows with the batch along "
            f"{b_axes}, with time along {t_axes}); pass output_axes={{{name!r}: (batch_axis, time_axis)}}"
        )
    return b_axes[0], t_axes[0] if t_axes else None


def _none_at(shape: tuple[int, ...], axis: int) -> tuple[int | None, ...]:
    return tuple(None if i == axis else d for i, d in enumerate(shape))


def _param_names(model: torch.nn.Module, n: int) -> list[str]:
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) >= n:
        return params[:n]
    return ["x"] if n == 1 else [f"x{i}" for i in range(n)]


def _explicit_specs(explicit: Mapping[str, str], in_names: list[str], examples: tuple[torch.Tensor, ...],
                    batch: int, batch_axes: Mapping[str, int]) -> list[StateSpec]:
    """The declared states as contract states: their batch axis as given, else the one axis of the example's batch
    size."""
    out = []
    for i, o in explicit.items():
        t = examples[in_names.index(i)]
        axis = batch_axes.get(i)
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
