"""What the runtime needs to know about a model's tensors: the contract, or a guess for third-party models.

A :class:`Port` is one data input or output with its batch and time axes;
state pairs are :class:`~edge_rnn.contract.StateSpec`. For a model edge-rnn
exported, both come from the ``edge_rnn`` contract. For any other stateful
model they come from ``state_map`` or from :func:`detect_state_pairs`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_rnn.contract import MAX_ENTRIES, Contract, StateSpec, TensorSpec, axes_problem, check_state_bytes
from edge_rnn.errors import ModelFormatError, UnsupportedError
from edge_rnn.runtime._session import ForeignModel

__all__ = ["Port", "ModelIO", "resolve_io", "detect_state_pairs", "numpy_dtype", "check_contract_fits"]

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

# (input pattern, output template): h0 -> hn, X_in -> X_out, past_X -> present_X, state -> stateN
_PAIR_RULES: Sequence[tuple[str, str]] = (
    (r"^(.*)0$", r"\1n"),
    (r"^(.*)_in$", r"\1_out"),
    (r"^past_(.*)$", r"present_\1"),
    (r"^past(\W.*)$", r"present\1"),
    (r"^(.*)$", r"\1N"),
    (r"^(.*)$", r"\1_out"),
)


def numpy_dtype(ort_type: str) -> np.dtype:
    try:
        return np.dtype(_ORT_TYPES[ort_type])
    except KeyError:
        raise ModelFormatError(f"expected a tensor type in {sorted(_ORT_TYPES)}, got {ort_type!r}") from None


@dataclass(frozen=True)
class Port:
    """A data input or output: ``shape`` is the model's, ``None`` where a dimension is dynamic."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    batch_axis: int
    time_axis: int | None
    values: tuple[int, int] | None = None  # an integer input's inclusive range (token ids: the embedding's rows)

    @property
    def stream_shape(self) -> tuple[int | None, ...]:
        """The shape one stream passes: the model's without the batch axis."""
        return tuple(d for i, d in enumerate(self.shape) if i != self.batch_axis)

    @property
    def stream_time_axis(self) -> int | None:
        if self.time_axis is None:
            return None
        return self.time_axis - (self.time_axis > self.batch_axis)

    def describe(self) -> str:
        dims = []
        for i, d in enumerate(self.stream_shape):
            dims.append("time" if i == self.stream_time_axis else "any" if d is None else str(d))
        within = f" in [{self.values[0]}, {self.values[1]}]" if self.values is not None else ""
        return f"({', '.join(dims)}{',' if len(dims) == 1 else ''}) {self.dtype}{within}"


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    states: tuple[StateSpec, ...]
    constants: Mapping[str, np.ndarray]
    streamable: bool = True
    contract: Contract | None = None  # the edge_rnn contract the ports come from; None for a model read without one


def _dims(shape: Sequence) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def _candidates(inputs: Mapping[str, tuple], outputs: Mapping[str, tuple]) -> dict[str, list[str]]:
    """Per input, the outputs a naming rule pairs it with (same rank, another name), in rule order."""
    found: dict[str, list[str]] = {}
    for name, shape in inputs.items():
        cands: list[str] = []
        for pattern, template in _PAIR_RULES:
            out = re.sub(pattern, template, name) if re.match(pattern, name) else None
            if out in outputs and out != name and len(outputs[out]) == len(shape) and out not in cands:
                cands.append(out)
        if cands:
            found[name] = cands
    return found


def _ambiguous(found: dict[str, list[str]]) -> dict[str, list[str]]:
    """The inputs with several candidate outputs, and the outputs claimed by several inputs."""
    ambiguous = {k: v for k, v in found.items() if len(v) > 1}
    taken: dict[str, list[str]] = {}
    for k, v in found.items():
        for o in v:
            taken.setdefault(o, []).append(k)
    ambiguous.update({f"(output) {o}": ins for o, ins in taken.items() if len(ins) > 1})
    return ambiguous


def detect_state_pairs(inputs: Mapping[str, tuple], outputs: Mapping[str, tuple]) -> dict[str, str]:
    """State input -> output pairs found by name (``h0``/``hn``, ``X_in``/``X_out``, ``past_X``/``present_X``,
    ``state``/``stateN``) where each is unambiguous and the shapes agree.

    ``inputs`` and ``outputs`` map names to shapes. Raises
    :class:`ModelFormatError` listing the candidates when a name matches
    several outputs or none is found.
    """
    found = _candidates(inputs, outputs)
    ambiguous = _ambiguous(found)
    if ambiguous:
        raise ModelFormatError(
            "could not tell the state pairs apart: candidates " + "; ".join(f"{k} -> {v}" for k, v in ambiguous.items())
            + ". Pass state_map={input: output, ...} (--state-map INPUT=OUTPUT on the command line)"
        )
    if not found:
        raise ModelFormatError(
            f"no edge_rnn contract and no state pairs detected among inputs {sorted(inputs)} and outputs "
            f"{sorted(outputs)}; pass state_map={{input: output, ...}} (--state-map INPUT=OUTPUT on the command line)"
        )
    return {k: v[0] for k, v in found.items()}


def _state_spec(name: str, out: str, shape: tuple, dtype: np.dtype, batch_axis: int | None) -> StateSpec:
    dims = _dims(shape)
    if batch_axis is None:
        dynamic = [i for i, d in enumerate(dims) if d is None]
        if len(dynamic) != 1:
            raise ModelFormatError(
                f"state {name!r} has shape {list(shape)}: expected exactly one dynamic (batch) dimension, "
                f"got {len(dynamic)}; pass state_batch_axis= (--state-batch-axis on the command line)"
            )
        batch_axis = dynamic[0]
    if not 0 <= batch_axis < len(dims):
        raise ModelFormatError(f"state {name!r}: expected state_batch_axis < {len(dims)}, got {batch_axis}")
    fixed = [d for i, d in enumerate(dims) if i != batch_axis]
    if any(d is None for d in fixed):
        raise ModelFormatError(
            f"state {name!r} has shape {list(shape)}: expected fixed sizes besides the batch axis {batch_axis}"
        )
    full = tuple(None if i == batch_axis else d for i, d in enumerate(dims))
    return StateSpec(name, out, full, batch_axis, dtype.name)


def _constants(inputs: Mapping[str, tuple[tuple, str]], constants: Mapping[str, object] | None) -> dict:
    """The constants fed on every call, each checked against its input's dtype and shape."""
    constants = dict(constants or {})
    unknown = sorted(set(constants) - set(inputs))
    if unknown:
        raise ModelFormatError(f"constants {unknown}: expected names of model inputs {sorted(inputs)}")
    consts = {}
    for k, v in constants.items():
        want = _dims(inputs[k][0])
        try:
            a = np.asarray(v, dtype=numpy_dtype(inputs[k][1]))
        except (ValueError, TypeError) as e:
            raise ModelFormatError(f"constant {k!r}: expected a {inputs[k][1]} value, got {v!r} ({e})") from None
        if a.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, a.shape)):
            raise ModelFormatError(f"constant {k!r}: expected shape {list(inputs[k][0])}, got {a.shape}")
        consts[k] = a
    return consts


def _mapped_states(inputs: Mapping[str, tuple[tuple, str]], outputs: Mapping[str, tuple[tuple, str]],
                   state_map: Mapping[str, str], state_batch_axis: int | None) -> tuple[StateSpec, ...]:
    """The states of a model edge-rnn did not write, from ``state_map``, each output shaped like its input."""
    bad = {k: v for k, v in state_map.items() if k not in inputs or v not in outputs}
    if bad:
        raise ModelFormatError(
            f"state_map {bad}: expected input -> output names; inputs {sorted(inputs)}, outputs {sorted(outputs)}"
        )
    states = tuple(
        _state_spec(i, o, inputs[i][0], numpy_dtype(inputs[i][1]), state_batch_axis) for i, o in state_map.items()
    )
    for s in states:
        out_dims = _dims(outputs[s.output][0])
        if len(out_dims) != len(s.shape) or any(
            a is not None and b is not None and a != b for a, b in zip(out_dims, s.shape)
        ):
            raise ModelFormatError(
                f"state {s.input!r} -> {s.output!r}: expected the output shape to match {list(s.shape)}, "
                f"got {list(outputs[s.output][0])}"
            )
    return states


def _check_named_axes(t: Any, shape: tuple) -> None:
    """Where the graph names its dynamic dimensions ("batch", "time", as edge-rnn's exports do), the contract's
    axes must point at them: swapped axes in a contract load otherwise, and stream the wrong way."""
    problem = axes_problem(len(shape), t.batch_axis, t.time_axis)
    if problem:
        raise ModelFormatError(f"edge_rnn contract: {t.name!r} of shape {list(shape)}: {problem}")
    named = {d: i for i, d in enumerate(shape) if isinstance(d, str)}
    for axis, name in ((t.batch_axis, "batch"), (t.time_axis, "time")):
        if axis is not None and name in named and named[name] != axis:
            raise ModelFormatError(
                f"edge_rnn contract: {t.name!r}: expected its {name} axis at {named[name]}, where the graph's "
                f"dimension {name!r} is (shape {list(shape)}), got {axis}")


def _missing_names(contract: Contract, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    named_in = [t.name for t in contract.inputs] + [s.input for s in contract.states]
    named_out = [t.name for t in contract.outputs] + [s.output for s in contract.states]
    missing = [n for n in named_in if n not in inputs] + [n for n in named_out if n not in outputs]
    if missing:
        raise ModelFormatError(f"edge_rnn contract names {missing}, which the graph does not have: expected names "
                               f"among inputs {sorted(inputs)} and outputs {sorted(outputs)}")


def _check_tensor_fits(t: TensorSpec, shape: tuple, ort_type: str, fixed_chunk: int | None) -> None:
    """One data input or output: the declared dtype, the axes the graph names, the fixed chunk."""
    if t.dtype is not None and numpy_dtype(ort_type) != np.dtype(t.dtype):
        raise ModelFormatError(f"edge_rnn contract: expected {t.name!r} to be {t.dtype} as the contract says, "
                               f"but the graph has {ort_type}")
    _check_named_axes(t, shape)
    if fixed_chunk is not None and t.time_axis is not None and shape[t.time_axis] != fixed_chunk:
        raise ModelFormatError(f"edge_rnn contract: fixed_chunk {fixed_chunk}, but {t.name!r} has "
                               f"{shape[t.time_axis]} steps along its time axis in the graph")


def _check_state_fits(s: StateSpec, name: str, shape: tuple, ort_type: str) -> None:
    """One side (``name``: the state's input or output) of a state pair: rank, fixed sizes, dtype, batch axis."""
    dims = _dims(shape)
    fits = len(dims) == len(s.shape) and all(a is None or b is None or a == b for a, b in zip(dims, s.shape))
    if not fits or numpy_dtype(ort_type) != np.dtype(s.dtype):
        raise ModelFormatError(
            f"edge_rnn contract: state {s.input!r} -> {s.output!r}: expected {name!r} of shape "
            f"{list(s.shape)} {s.dtype} as the contract says, but the graph has {list(shape)} {ort_type}")
    if "batch" in shape and shape.index("batch") != s.batch_axis:
        raise ModelFormatError(
            f"edge_rnn contract: state {s.input!r}: expected its batch axis at {shape.index('batch')}, "
            f"where the graph's dimension 'batch' is (shape {list(shape)}), got {s.batch_axis}")


def check_contract_fits(contract: Contract, inputs: Mapping[str, tuple[tuple, str]],
                         outputs: Mapping[str, tuple[tuple, str]]) -> None:
    """Every name the contract gives is in the graph, every tensor's declared dtype and every state's rank,
    fixed sizes and dtype match it."""
    _missing_names(contract, inputs, outputs)
    for t in contract.inputs:
        _check_tensor_fits(t, *inputs[t.name], contract.fixed_chunk)
    for t in contract.outputs:
        _check_tensor_fits(t, *outputs[t.name], contract.fixed_chunk)
    for s in contract.states:
        _check_state_fits(s, s.input, *inputs[s.input])
        _check_state_fits(s, s.output, *outputs[s.output])


def _refuse_foreign_options(foreign: ForeignModel) -> None:
    """A model with a contract takes no options for models without one: they would override the contract, or be
    ignored, and neither is what the caller expects."""
    given = [k for k, v in (("state_map", foreign.state_map), ("batch_axis", foreign.batch_axis or None),
                            ("time_axis", foreign.time_axis), ("state_batch_axis", foreign.state_batch_axis))
             if v is not None]
    if given:
        raise UnsupportedError(
            f"{', '.join(given)}: the model's edge_rnn contract already says its states and axes; these options "
            "are for models without one")


@dataclass(frozen=True)
class _Layout:
    """Where the ports' batch and time axes are, and what each state is: from the contract, or from the options
    and the graph for a model without one."""

    states: tuple[StateSpec, ...]
    axes: Mapping[str, tuple[int, int | None]]  # by name; a name not there takes the default below
    default: tuple[int, int | None]
    ranges: Mapping[str, tuple[int, int]]
    streamable: bool

    @classmethod
    def of(cls, contract: Contract | None, inputs: Shapes, outputs: Shapes, consts: Mapping[str, Any],
           foreign: ForeignModel) -> _Layout:
        default = (foreign.batch_axis, foreign.time_axis)
        if contract is not None:
            _refuse_foreign_options(foreign)
            check_contract_fits(contract, inputs, outputs)
            return cls(contract.states, {t.name: (t.batch_axis, t.time_axis) for t in (*contract.inputs,
                                                                                        *contract.outputs)},
                       default, {t.name: t.values for t in contract.inputs if t.values is not None},
                       contract.streamable)
        state_map = foreign.state_map
        if state_map is None:
            candidates = {k: v[0] for k, v in inputs.items() if k not in consts}
            state_map = detect_state_pairs(candidates, {k: v[0] for k, v in outputs.items()})
        return cls(_mapped_states(inputs, outputs, state_map, foreign.state_batch_axis), {}, default, {}, True)

    def port(self, name: str, shape: tuple, ort_type: str, is_input: bool) -> Port:
        b, t = self.axes.get(name, self.default)
        dims = _dims(shape)
        problem = axes_problem(len(dims), b, t)
        if problem:
            hint = (f"; if it takes the same value on every call, pass constants={{{name!r}: value}} (--constant "
                    f"{name}=VALUE on the command line)" if is_input and len(dims) <= b else "")
            raise ModelFormatError(f"{name!r} of shape {list(shape)}: {problem}{hint}")
        return Port(name, dims, numpy_dtype(ort_type), b, t, self.ranges.get(name))


Shapes = Mapping[str, tuple[tuple, str]]


def resolve_io(inputs: Shapes, outputs: Shapes, contract: Contract | None,
               foreign: ForeignModel | None = None) -> ModelIO:
    """Ports, states and constants of a model; ``inputs``/``outputs`` map names to (shape, ort type).

    With a ``contract`` (the file's, or one given in its place) every name, axis and state comes from it, checked
    against the graph; without one, from ``foreign`` (:class:`~edge_rnn.runtime.ForeignModel`) and the graph.
    """
    foreign = foreign or ForeignModel()
    for kind, group in (("inputs", inputs), ("outputs", outputs)):
        if len(group) > 2 * MAX_ENTRIES:  # a contract's data ports and states, at most
            raise ModelFormatError(f"expected a graph of at most {2 * MAX_ENTRIES:,} {kind}, got {len(group):,}")
    consts = _constants(inputs, foreign.constants)
    layout = _Layout.of(contract, inputs, outputs, consts, foreign)
    check_state_bytes(layout.states, "the model's states")
    state_in = {s.input for s in layout.states}
    state_out = {s.output for s in layout.states}
    data_in = tuple(layout.port(k, *v, True) for k, v in inputs.items() if k not in state_in and k not in consts)
    data_out = tuple(layout.port(k, *v, False) for k, v in outputs.items() if k not in state_out)
    if not data_in:
        raise ModelFormatError(f"expected at least one data input besides states and constants, got {sorted(inputs)}")
    return ModelIO(data_in, data_out, tuple(layout.states), consts, layout.streamable, contract)
