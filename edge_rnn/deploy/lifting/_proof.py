"""The proof that a lifted file streams: chunked calls of it, states carried, equal one pass of the original file.

The judge is the original file run over each whole sequence by
``onnx.reference.ReferenceEvaluator``, its ``RNN``/``GRU``/``LSTM`` nodes
computed by the project's own float64 reference of the operators
(:mod:`edge_rnn.harness._onnx_recurrent`; the evaluator's own ignores ``clip``
and lacks activations), every input in float64. The rounding noise that the
parity verdict weighs the lifted file's error against is the original file
run in float32: by onnxruntime where onnxruntime can run it, else (``layout=1``,
which onnxruntime refuses) by the same evaluator in float32. A lifted file
passes when, on every case, each output and final state is within
``max(atol, k x noise)`` of the float64 one pass (:mod:`edge_rnn.harness`).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops import op_loop

from edge_rnn.deploy._decompose import all_graphs
from edge_rnn.errors import message_line
from edge_rnn.harness import TOLERANCE, Cases, ParityReport, Tolerance, compare_streaming
from edge_rnn.harness._onnx_recurrent import RecurrentAttrs, run_recurrent

__all__ = ["Proof", "prove", "original_runner", "pinned_batch", "PROOF_CASES"]

Arrays = dict[str, np.ndarray]
# The cases a lift is proved on: whole sequences of 1, 7 and 23 steps in random chunks of 1..8, a 41-step one in
# chunks, and a 600-step stream in chunks of 1..64, batch 2 (the evaluator steps the original in Python, so a
# 10,000-step stream would take minutes on a large model).
PROOF_CASES = Cases(batch=2, seq_lens=(1, 7, 23), chunked_len=41, long_steps=600, chunk_max=8, long_chunk_max=64)


def _recurrent_op(kind: str, dtype: type) -> type[OpRun]:
    """An evaluator op computing ``kind`` with the project's reference in ``dtype``."""

    def _run(self: OpRun, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, **_):
        node = self.onnx_node
        attrs = RecurrentAttrs.from_attributes(kind, {a.name: onnx.helper.get_attribute_value(a)
                                                      for a in node.attribute})
        extra = {"initial_c": initial_c, "P": P} if kind == "LSTM" else {}
        out = run_recurrent(attrs, X, W, R, B, sequence_lens, initial_h, dtype=dtype, **extra)
        return tuple(out[:len(node.output)])

    return type(kind, (OpRun,), {"op_domain": "", "_run": _run})


def _double(t: onnx.TensorProto) -> None:
    if t.data_type == onnx.TensorProto.FLOAT:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))


def _node_to_float64(n: onnx.NodeProto) -> None:
    """A node's float32 constants (Constant, ConstantOfShape's value) and Casts to float32, in float64."""
    for a in n.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            _double(a.t)
        elif n.op_type == "Cast" and a.name == "to" and a.i == onnx.TensorProto.FLOAT:
            a.i = onnx.TensorProto.DOUBLE
        elif n.op_type == "Constant" and a.name == "value_float":
            a.CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(np.asarray(a.f, np.float64))))
        elif n.op_type == "Constant" and a.name == "value_floats":
            a.CopyFrom(onnx.helper.make_attribute("value", numpy_helper.from_array(np.asarray(a.floats, np.float64))))


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` computing in float64 wherever it computed in float32: its float32 initializers, constants, Casts
    and declared types promoted (the evaluator's MatMul refuses float64 against float32)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for g in all_graphs(out.graph):
        for t in g.initializer:
            _double(t)
        for n in g.node:
            _node_to_float64(n)
        for v in (*g.input, *g.output, *g.value_info):
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                v.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return out


class _Loop(op_loop.Loop):
    """The evaluator's ``Loop``, its scan outputs stacked on a new leading axis as the specification (and
    onnxruntime) has them: onnx 1.23's ``np.vstack`` joins a step's ``(batch, hidden)`` into ``(T * batch,
    hidden)`` instead of ``(T, batch, hidden)``."""

    op_domain = ""

    def __init__(self, onnx_node: onnx.NodeProto, run_params: dict) -> None:
        super().__init__(onnx_node, run_params)
        body = self._run_body  # set per node by the evaluator from the body attribute

        def stacked(*args, **kwargs):
            outs = list(body(*args, **kwargs))
            for k in range(len(outs) - self.K, len(outs)):
                if np.ndim(outs[k]) >= 2:
                    outs[k] = np.expand_dims(outs[k], 0)  # vstack of (1, ...) pieces is the stack
            return outs

        self._run_body = stacked


def _evaluator(model: onnx.ModelProto, dtype: type) -> Callable[[Arrays], Arrays]:
    ops = [_recurrent_op(k, dtype) for k in ("RNN", "GRU", "LSTM")] + [type("Loop", (_Loop,), {})]
    ev = ReferenceEvaluator(as_float64(model) if dtype == np.float64 else model, new_ops=ops)
    names = [o.name for o in model.graph.output]
    inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}

    def run(feeds: Arrays) -> Arrays:
        given = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in feeds.items() if k in inputs}
        return dict(zip(names, ev.run(None, given)))

    return run


def _onnxruntime(model: onnx.ModelProto) -> tuple[Callable[[Arrays], Arrays] | None, str]:
    """onnxruntime running ``model`` (float32), or None and why it cannot."""
    import onnxruntime as ort

    from edge_rnn.runtime._session import new_session_options

    try:
        sess = ort.InferenceSession(model.SerializeToString(), new_session_options("disabled"),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... for what it refuses
        return None, _ort_reason(e)
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}

    def run(feeds: Arrays) -> Arrays:
        return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in inputs})))

    return run, "onnxruntime"


def _ort_reason(e: BaseException) -> str:
    """onnxruntime's refusal in a line a reader can use: its error-code prefix and C++ source place left out."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", message_line(e))
    text = re.sub(r"/onnxruntime_src/\S+ [^)]*\) ", "", text)
    return text if len(text) <= 200 else text[:197] + "..."


def original_runner(reference: onnx.ModelProto) -> tuple[Callable[[Arrays], Arrays], Callable[[Arrays], Arrays], str]:
    """The float64 judge of ``reference`` (the original file, its final states exposed), its float32 noise, and
    where the noise comes from."""
    noise, where = _onnxruntime(reference)
    if noise is None:
        return _evaluator(reference, np.float64), _evaluator(reference, np.float32), (
            f"the reference evaluator in float32 (onnxruntime cannot run the original: {where})")
    return _evaluator(reference, np.float64), noise, "onnxruntime float32"


@dataclass
class Proof:
    """The verdict on a lifted file, and where its noise came from."""

    report: ParityReport
    noise: str

    @property
    def ok(self) -> bool:
        return self.report.ok

    def table(self) -> str:
        return self.report.table() + f"\nnoise (err_torch column): the original file run by {self.noise}"


def _initial_states(contract, initial: Mapping[str, np.ndarray | None]) -> Callable[[np.random.Generator, int], Arrays]:
    """A new stream's states for ``batch`` streams: the file's own initial state, or zeros (the original's only)."""

    def make(_rng: np.random.Generator, batch: int) -> Arrays:
        out = {}
        for s in contract.states:
            row = initial.get(s.input)
            row = np.zeros(tuple(d for d in s.shape if d is not None), s.dtype) if row is None else row
            out[s.input] = np.repeat(np.expand_dims(row, s.batch_axis), batch, axis=s.batch_axis).astype(s.dtype)
        return out

    return make


def pinned_batch(original: onnx.ModelProto, contract) -> int | None:
    """The batch the original file was made for, where it pins one: its inputs' batch size, or that of a constant
    initial state of a recurrent node (which runs at that batch only); None where the batch is free."""
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in original.graph.input}
    sizes = [dims[t.name][t.batch_axis] for t in contract.inputs if t.batch_axis < len(dims.get(t.name, ()))]
    sizes += [shape[0 if layout else 1] for shape, layout in _constant_states(original, set(dims))]
    return next((int(b) for b in sizes if b > 0), None)


def _constant_states(original: onnx.ModelProto, inputs: set[str]) -> list[tuple[tuple[int, ...], int]]:
    """(shape, layout) of each constant initial state of a top-level recurrent node."""
    consts = {t.name: tuple(t.dims) for t in original.graph.initializer if t.name not in inputs}
    out = []
    for n in original.graph.node:
        if n.op_type in ("RNN", "GRU", "LSTM"):
            layout = next((a.i for a in n.attribute if a.name == "layout"), 0)
            out += [(consts[i], layout) for i in list(n.input)[5:7] if len(consts.get(i, ())) == 3]
    return out


def _in_groups(run: Callable[[Arrays], Arrays], contract, size: int | None) -> Callable[[Arrays], Arrays]:
    """``run`` called on ``size`` streams (batch rows) at a time, the results joined along their batch axes: the
    original file runs at the batch it pins, if it pins one (None: all the streams in one call)."""
    # a state the file already took as a graph input (a lifted file lifted again) is fed to its one pass as well
    axes = {**{t.name: t.batch_axis for t in contract.inputs}, **{s.input: s.batch_axis for s in contract.states}}
    contract_inputs = {t.name for t in contract.inputs}
    out_axes = {**{t.name: t.batch_axis for t in contract.outputs}, **{s.output: s.batch_axis for s in contract.states}}

    def call(feeds: Arrays) -> Arrays:
        data = {k: v for k, v in feeds.items() if k in axes}
        batch = next(v.shape[axes[k]] for k, v in data.items() if k in contract_inputs)
        step = size or batch
        parts = [run({k: np.take(v, range(b, b + step), axis=axes[k]) for k, v in data.items()})
                 for b in range(0, batch, step)]
        return {k: np.concatenate([r[k] for r in parts], axis=out_axes[k]) for k in out_axes}

    return call


def prove(lifted: onnx.ModelProto, reference: onnx.ModelProto, initial: Mapping[str, np.ndarray | None], *,
          cases: Cases = PROOF_CASES, seed: int = 0, tolerance: Tolerance = TOLERANCE["float32"],
          batch: int | None = None) -> Proof:
    """``lifted`` (with its contract) streamed in random chunks against one pass of ``reference`` over each case.

    ``batch``: the batch the original pins (:func:`pinned_batch`): the cases take that many streams, and the
    original runs on them together. ``tolerance`` other than float32's (an int8 form of the lifted file): judged
    element-wise against the float64 one pass, ``|got - want| <= atol + rtol * |want|``, the noise unused."""
    from edge_rnn.deploy._fidelity import input_source
    from edge_rnn.runtime import StreamingModel

    if batch is not None:
        cases = dataclasses.replace(cases, batch=batch, long_batch=batch)
    judge, noise, where = original_runner(reference)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lifted.onnx"
        onnx.save(lifted, path)
        model = StreamingModel.load(path)
        c = model.contract
        report = compare_streaming(path, c, _in_groups(judge, c, batch), input_source(model, None),
                                   _initial_states(c, initial), cases=cases, seed=seed, tolerance=tolerance,
                                   noise=_in_groups(noise, c, batch) if tolerance == TOLERANCE["float32"] else None,
                                   reference_label="the original file, one pass, float64 reference",
                                   noise_label="the original file, one pass, float32")
    return Proof(report, where)
