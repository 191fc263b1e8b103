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

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from edge_rnn.errors import described
from edge_rnn.harness import Cases, ParityReport, compare_streaming
from edge_rnn.harness._onnx_recurrent import RecurrentAttrs, run_recurrent

__all__ = ["Proof", "prove", "original_runner", "PROOF_CASES"]

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


def _evaluator(model: onnx.ModelProto, dtype: type) -> Callable[[Arrays], Arrays]:
    ops = [_recurrent_op(k, dtype) for k in ("RNN", "GRU", "LSTM")]
    ev = ReferenceEvaluator(model, new_ops=ops)
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
        return None, described(e)
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}

    def run(feeds: Arrays) -> Arrays:
        return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in inputs})))

    return run, "onnxruntime"


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


def prove(lifted: onnx.ModelProto, reference: onnx.ModelProto, initial: Mapping[str, np.ndarray | None], *,
          cases: Cases = PROOF_CASES, seed: int = 0) -> Proof:
    """``lifted`` (with its contract) streamed in random chunks against one pass of ``reference`` over each case."""
    from edge_rnn.deploy._fidelity import input_source
    from edge_rnn.runtime import StreamingModel

    judge, noise, where = original_runner(reference)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lifted.onnx"
        onnx.save(lifted, path)
        model = StreamingModel.load(path)
        report = compare_streaming(path, model.contract, judge, input_source(model, None),
                                   _initial_states(model.contract, initial), noise=noise, cases=cases, seed=seed,
                                   reference_label="the original file, one pass, float64 reference")
    return Proof(report, where)
