"""How far a variant drifts from the float32 model over a long stream, torch-free.

Both models stream the same input, in the same random chunks, each carrying
its own state (the variant's error feeds back into its state, as on a device).
Per output and state: the largest and the mean absolute difference, and the
growth of the error along the stream (the mean error of the last 1,000 steps
over that of the first 1,000): recurrent error that builds up shows there
first. An output that looks like a classifier (a Sigmoid or Softmax produces
it, or a decision threshold is given) also gets its decision agreement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_rnn._numbers import is_int, is_number
from edge_rnn._progress import Progress, Ticker
from edge_rnn._variant_kinds import kind_of
from edge_rnn.errors import UnsupportedError
from edge_rnn.harness import TOLERANCE, InputLayout, Tolerance, chunk_sizes, data_inputs, load_data, random_inputs
from edge_rnn.runtime import StreamingModel
from edge_rnn.runtime._manifest import Bound, ErrorFigures
from edge_rnn.runtime._verdicts import TensorResults

__all__ = ["VariantError", "TensorError", "measure_against", "precision_of", "GROWTH_FLAG"]

# operators only a quantised graph has: one of them makes a graph int8
INT8_OPS = {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
             "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}

_FLOAT16 = 10  # onnx.TensorProto.FLOAT16
GROWTH_FLAG = 2.0  # error in the last 1,000 steps over the first 1,000 above this: flagged as growing
_WINDOW = 1_000


@dataclass(frozen=True)
class TensorError:
    """One output's or state's difference from the float32 model along the stream."""

    name: str
    kind: str  # "output" | "state"
    max_abs: float
    mean_abs: float
    first_mean: float  # mean error over the first 1,000 steps, as a fraction of its bound
    last_mean: float  # ... and over the last 1,000
    agreement: float | None = None  # decisions that match the float32 model's (classifier outputs only)
    worst_fraction: float = 0.0  # max |var - ref| / (atol + rtol * |ref|) over the elements: <= 1 passes

    @property
    def growth(self) -> float:
        """last / first window; 1.0 when both are 0 (no error at all)."""
        if self.first_mean == 0:
            return 1.0 if self.last_mean == 0 else float("inf")
        return self.last_mean / self.first_mean

    @property
    def grows(self) -> bool:
        """The error, relative to its bound, doubled along the stream, and is not negligible (1% of the bound)."""
        return self.growth > GROWTH_FLAG and self.last_mean > 1e-2

    @property
    def ok(self) -> bool:
        return self.worst_fraction <= 1.0 and not self.grows


@dataclass
class VariantError(TensorResults):
    """A variant against its float32 model over one long stream: ``ok``, ``max_abs`` and ``worst`` over its
    tensors (:class:`~edge_rnn.runtime._verdicts.TensorResults`), and whether any error ``grows``."""

    steps: int
    chunks: int
    inputs: str  # "random" | "data"
    tolerance: Tolerance
    tensors: list[TensorError] = field(default_factory=list)

    @property
    def grows(self) -> bool:
        return any(t.grows for t in self.tensors)

    def figures(self) -> ErrorFigures:
        """What a bundle's manifest records of it."""
        return ErrorFigures(self.max_abs, self.grows, self.ok, self.steps, self.chunks, self.inputs,
                            Bound(self.tolerance.atol, self.tolerance.rtol), {
                                t.name: {"kind": t.kind, "max_abs": t.max_abs, "mean_abs": t.mean_abs,
                                         "growth": t.growth, "grows": t.grows,
                                         **({"agreement": t.agreement} if t.agreement is not None else {})}
                                for t in self.tensors})

    def to_dict(self) -> dict[str, Any]:
        return self.figures().to_json()

    def table(self) -> str:
        w = max([14, *(len(t.name) for t in self.tensors if len(t.name) <= 40)])
        rows = [f"{'tensor':<{w}} {'max abs':>9} {'mean abs':>9} {'growth':>7} {'agree':>7} {'of bound':>8}  verdict"]
        for t in self.tensors:
            agree = "" if t.agreement is None else f"{t.agreement:.2%}"
            verdict = "GROWS" if t.grows else "ok" if t.ok else "FAIL"
            rows.append(f"{t.name:<{w}} {t.max_abs:9.2e} {t.mean_abs:9.2e} {t.growth:7.2f} {agree:>7} "
                        f"{t.worst_fraction:8.3f}  {verdict}")
        return "\n".join(rows)


def _graph(data: bytes) -> Any:
    """An ONNX file's GraphProto (ModelProto field 7), read with the wire-format reader: no onnx needed."""
    from edge_rnn._inspect._onnx import _Message

    return _Message(data, (0, len(data))).child(7)


def _strings(message: Any, field: int) -> list[str]:
    return [message.data[a:b].decode("utf-8", "replace") for a, b in message.spans.get(field, [])]


def has_float16_weights(data: bytes) -> bool:
    """Whether an ONNX file (its bytes) keeps an initializer in float16: GraphProto.initializer 5, data_type 2."""
    return any(t.number(2) == _FLOAT16 for t in _graph(data).children(5))


def precision_of(path: str | Path, model: StreamingModel) -> str:
    """The tolerance row a variant is judged by: a reduced precision its contract names (its variant's row of the
    variant table), else what its operators show (a float32 form, the static one included, may have been
    quantised by other tools)."""
    from edge_rnn.runtime._external import operator_types

    contract = model.contract
    kind = kind_of(contract.source.get("variant")) if contract is not None else None
    if kind is not None and kind.precision != "float32":
        return kind.precision
    data = Path(path).read_bytes()
    ops = operator_types(data)
    if ops is None:  # an .ort file: its contract said what it is
        return "float32"
    if {op.rsplit(".", 1)[-1] for op in ops} & INT8_OPS:
        return "int8"
    if has_float16_weights(data):
        return "float16"
    return "float32"


def input_source(model: StreamingModel, data: Any, what: str = "data") -> Any:
    """Inputs for ``model``'s data inputs: ``data`` (an array, sequences, or a .npy/.npz path), else random."""
    layouts = [InputLayout(p.name, tuple(1 if d is None else d for d in p.shape), p.batch_axis, p.time_axis,
                           str(p.dtype), p.values) for p in model.inputs]
    if isinstance(data, (str, Path)):
        data = load_data(data)
    return random_inputs(layouts) if data is None else data_inputs(layouts, data, what)


def _producers(path: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{tensor: (op type of its producer, that node's first input)} and the graph's outputs, for .onnx and .ort."""
    data = path.read_bytes()
    if data[4:8] == b"ORTM":
        return _ort_producers(data)
    g = _graph(data)  # NodeProto: input 1, output 2, op_type 4; GraphProto: node 1, output 12 (ValueInfo name 1)
    producers = {}
    for n in g.children(1):
        inputs = _strings(n, 1)
        for o in _strings(n, 2):
            producers[o] = (n.text(4), inputs[0] if inputs else "")
    return producers, [vi.text(1) for vi in g.children(12)]


def _ort_producers(data: bytes) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """:func:`_producers` of an ORT-format file, read with onnxruntime's flatbuffer schema."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    g = fbs.InferenceSession.InferenceSession.GetRootAs(data, 0).Model().Graph()
    producers = {}
    for i in range(g.NodesLength()):
        n = g.Nodes(i)
        first = n.Inputs(0).decode() if n.InputsLength() else ""
        op = n.OpType().decode()
        for k in range(n.AttributesLength()):  # FusedGemm/FusedConv carry the activation they absorbed
            a = n.Attributes(k)
            if a.Name() == b"activation" and a.S():
                op = a.S().decode()
        for k in range(n.OutputsLength()):
            producers[n.Outputs(k).decode()] = (op, first)
    return producers, [g.Outputs(i).decode() for i in range(g.OutputsLength())]


def _classifier_outputs(path: Path, threshold: float | None) -> dict[str, str]:
    """Outputs produced by a Sigmoid or Softmax (through shape-only ops), as {name: "sigmoid" | "softmax"}.

    With a ``threshold``, every output is taken as a score against it.
    """
    producers, outputs = _producers(path)
    if threshold is not None:
        return {name: "sigmoid" for name in outputs}
    passthrough = {"Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Slice", "Concat", "Cast"}
    found = {}
    for out in outputs:
        name = out
        for _ in range(16):
            op, first = producers.get(name, ("", ""))
            if op in ("Sigmoid", "Softmax", "LogSoftmax"):
                found[out] = "sigmoid" if op == "Sigmoid" else "softmax"
                break
            if op not in passthrough or not first:
                break
            name = first
    return found


def _check_request(steps: Any, max_chunk: Any, seed: Any, threshold: Any) -> None:
    for name, value, least in (("steps", steps, 2 * _WINDOW), ("max_chunk", max_chunk, 1), ("seed", seed, 0)):
        if not is_int(value, least):
            extra = f" (two windows of {_WINDOW})" if name == "steps" else ""
            raise UnsupportedError(f"{name}: expected an int >= {least}{extra}, got {value!r}")
    if threshold is not None and not (is_number(threshold) and math.isfinite(threshold)):
        raise UnsupportedError(f"threshold: expected a finite number, got {threshold!r}")


def _same_interface(var: StreamingModel, ref: StreamingModel, variant: Any, reference: Any) -> None:
    """Same names, dtypes and sizes (a fixed chunk and a fixed batch of 1 aside): else the comparison is meaningless."""
    def shape(p: Any) -> list:
        return [None if i in (p.batch_axis, p.time_axis) else d for i, d in enumerate(p.shape)]

    def of(m: StreamingModel) -> tuple:
        return ([(p.name, str(p.dtype), shape(p)) for p in m.inputs], [(p.name, str(p.dtype), shape(p))
                                                                       for p in m.outputs],
                [(s.input, s.dtype, [d for i, d in enumerate(s.shape) if i != s.batch_axis]) for s in m.states])

    if of(var) != of(ref):
        raise UnsupportedError(f"{variant}: expected the inputs, outputs and states of {reference} {of(ref)}, "
                               f"got {of(var)}")


def measure_against(variant: str | Path, reference: str | Path, *, steps: int = 10_000, data: Any = None,
                    seed: int = 0, max_chunk: int = 32, threshold: float | None = None,
                    tolerance: Tolerance | None = None, progress: Progress | None = None) -> VariantError:
    """Stream ``steps`` steps through the variant and the float32 ``reference``; see the module docstring.

    ``data``: an array, sequences or a .npy/.npz path, as ``verify`` takes it.
    ``tolerance`` defaults to the tolerance table's row for the variant's
    precision (:func:`precision_of`). A model that is not streamable (a
    bidirectional layer) is measured over one whole sequence of ``steps``.
    ``progress`` (:mod:`edge_rnn._progress`) counts the steps both models have streamed.
    """
    _check_request(steps, max_chunk, seed, threshold)
    var, ref = StreamingModel.load(variant), StreamingModel.load(reference)
    tolerance = tolerance or TOLERANCE[precision_of(variant, var)]
    _same_interface(var, ref, variant, reference)
    source = input_source(ref, data)
    rng = np.random.default_rng(seed)
    timed = any(p.time_axis is not None for p in ref.inputs)
    sizes = _call_sizes(var, ref, (variant, reference), steps, rng, max_chunk)
    steps = sum(sizes)  # whole fixed chunks only
    whole = source(rng, 1, steps, not timed)
    outs, states = _stream_both(ref, var, whole, sizes, timed, Ticker(progress, steps, "measuring"))
    classifier = _classifier_outputs(Path(reference), threshold)
    ports = {p.name: p for p in ref.outputs}
    ends = np.cumsum(sizes)  # the step at which each chunk ended
    tensors = [_output_error(name, ports[name], a, b, tolerance, classifier.get(name), threshold, ends)
               for name, (a, b) in outs.items()]
    output_of = {s.input: s.output for s in ref.states}  # a state's row is named by its output, as export's are
    tensors += [_error(output_of[name], "state", np.stack(a), np.stack(b), tolerance, None, None, ends)
                for name, (a, b) in states.items()]
    return VariantError(steps=steps, chunks=len(sizes), inputs="random" if data is None else "data",
                        tolerance=tolerance, tensors=tensors)


def _call_sizes(var: StreamingModel, ref: StreamingModel, names: tuple[Any, Any], steps: int,
                rng: np.random.Generator, max_chunk: int) -> list[int]:
    """The steps of each call both models are stepped with: a static form's fixed chunk (as many whole ones as
    fit in ``steps``), one whole sequence for a model that is not streamable, else random chunks."""
    fixed = {p.shape[p.time_axis] for m in (var, ref) for p in m.inputs if p.time_axis is not None} - {None}
    if len(fixed) > 1:
        raise UnsupportedError(f"{names[0]} and {names[1]} take different fixed chunks {sorted(fixed)}")
    if fixed:  # a static form: every call takes exactly that many steps
        k = fixed.pop()
        return [k] * (steps // k)
    if not (ref.streamable and var.streamable):
        return [steps]  # one whole sequence per call: measured over one long sequence
    timed = any(p.time_axis is not None for p in ref.inputs)
    return chunk_sizes(rng, steps, max_chunk) if timed else [1] * steps


def _output_error(name: str, port: Any, a: list[np.ndarray], b: list[np.ndarray], tolerance: Tolerance,
                  decision: str | None, threshold: float | None, ends: np.ndarray) -> TensorError:
    """An output's error, its chunks joined along its time axis (stacked by call without one)."""
    axis = port.stream_time_axis
    ya = np.concatenate(a, axis=axis) if axis is not None else np.stack(a)
    yb = np.concatenate(b, axis=axis) if axis is not None else np.stack(b)
    return _error(name, "output", np.moveaxis(ya, axis or 0, 0), np.moveaxis(yb, axis or 0, 0), tolerance, decision,
                  threshold, None if axis is not None else ends)


def _stream_both(ref: StreamingModel, var: StreamingModel, whole: dict, sizes: list[int], timed: bool,
                 ticker: Ticker) -> tuple[dict, dict]:
    """Both models over the same chunks, each carrying its own state; every chunk's outputs and states."""
    outs: dict[str, tuple[list, list]] = {p.name: ([], []) for p in ref.outputs}
    states: dict[str, tuple[list, list]] = {s.input: ([], []) for s in ref.states}
    s_ref, s_var = ref.open_stream(), var.open_stream()
    start = 0
    for n in sizes:
        chunk = {p.name: piece(p, whole[p.name], start, n, timed) for p in ref.inputs}
        y_ref, y_var = ref.step(s_ref, chunk), var.step(s_var, chunk)
        for name, (a, b) in outs.items():
            a.append(y_ref[name])
            b.append(y_var[name])
        for name, (a, b) in states.items():
            a.append(s_ref.state[name])
            b.append(s_var.state[name])
        start += n
        ticker.advance(n)
    return outs, states


def piece(p: Any, a: np.ndarray, start: int, n: int, timed: bool) -> np.ndarray:
    """Steps ``start .. start + n`` of one stream's input (batch of 1), without the batch axis, as step takes it."""
    if not timed:
        a = a[start]  # a leading axis of calls
    elif p.time_axis is not None:
        a = a[(slice(None),) * p.time_axis + (slice(start, start + n),)]
    return a[(slice(None),) * p.batch_axis + (0,)]


def _error(name: str, kind: str, ref: np.ndarray, var: np.ndarray, tolerance: Tolerance, decision: str | None,
           threshold: float | None, at: np.ndarray | None = None) -> TensorError:
    """Errors of a (time, ...) trajectory; ``at`` gives the step of each row where rows are not one step each."""
    ref64 = ref.astype(np.float64)
    diff = np.abs(var.astype(np.float64) - ref64).reshape(len(ref), -1)
    # the error as a fraction of its bound: a state that grows (a cell state integrating to thousands) carries a
    # larger absolute error that is still the same fraction, and is not drift
    relative = diff / (tolerance.atol + tolerance.rtol * np.abs(ref64).reshape(len(ref), -1))
    worst = float(np.max(relative))
    per_row = relative.mean(axis=1)
    steps = np.arange(1, len(ref) + 1) if at is None else at
    first, last = per_row[steps <= _WINDOW], per_row[steps > steps[-1] - _WINDOW]
    first = first if first.size else per_row[:1]  # chunks longer than a window: the nearest row stands for it
    agreement = None
    if decision == "sigmoid":
        t = 0.5 if threshold is None else threshold
        agreement = float(np.mean((ref > t) == (var > t)))
    elif decision == "softmax":
        agreement = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(var, axis=-1)))
    return TensorError(name, kind, float(diff.max()), float(diff.mean()), float(first.mean()), float(last.mean()),
                       agreement, worst)
