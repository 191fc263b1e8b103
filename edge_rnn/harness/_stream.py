"""Run a model as a stream over given inputs in given chunks, and compare it with references.

Three kinds of case, each run in onnxruntime with graph optimisations disabled
and at the default level, from non-zero initial states:

* ``full``: one call over a whole sequence;
* ``chunked``: the same kind of sequence streamed in random chunk sizes, each
  call's output states fed to the next call's inputs;
* ``long``: a stream of ``long_steps`` steps in random chunks, to show errors
  do not drift.

For a model that takes one step per call, ``chunked`` and ``long`` count
calls. The references see each case as one pass over the whole sequence (or
step through the calls), carrying their states in their own precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_rnn._numbers import is_int
from edge_rnn._progress import Progress, Ticker
from edge_rnn.contract import Contract
from edge_rnn.errors import EdgeRnnError, ModelFormatError, UnsupportedError, message_line
from edge_rnn.harness._data import InputSource
from edge_rnn.harness._verdict import TOLERANCE, ParityReport, Tolerance, judge
from edge_rnn.runtime import OPT_LEVELS, check_contract_fits, check_external_data, describe_session
from edge_rnn.runtime._session import new_session_options

__all__ = ["OPT_LEVELS", "Cases", "open_sessions", "session_runner", "read_contract", "chunk_sizes",
           "stream_chunks", "stream_calls", "run_case", "compare_streaming"]

Arrays = dict[str, np.ndarray]
Call = Callable[[Arrays], Arrays]


@dataclass(frozen=True)
class Cases:
    """Which cases a parity check runs. A length of 0 skips that case."""

    batch: int = 3
    seq_lens: tuple[int, ...] = (1, 6, 19)
    chunked_len: int = 41
    long_steps: int = 10_000
    chunk_max: int = 8
    long_chunk_max: int = 64
    long_batch: int = 1

    def __post_init__(self) -> None:
        """Refused here, before onnxruntime sees them: a batch of 0 aborts the process inside its GRU kernel."""
        for name, least in (("batch", 1), ("chunked_len", 0), ("long_steps", 0), ("chunk_max", 1),
                            ("long_chunk_max", 1), ("long_batch", 1)):
            if not is_int(getattr(self, name), least):
                raise UnsupportedError(f"{name}: expected an int >= {least}, got {getattr(self, name)!r}")
        if not all(is_int(t, least=1) for t in self.seq_lens):
            raise UnsupportedError(f"seq_lens: expected ints >= 1, got {self.seq_lens!r}")


def open_sessions(path: str | Path, opt_levels: tuple[str, ...] = ("disabled", "default")
                  ) -> dict[str, ort.InferenceSession]:
    """One single-threaded CPU session per optimisation level."""
    unknown = [n for n in opt_levels if n not in OPT_LEVELS]
    if unknown or not opt_levels:
        raise UnsupportedError(f"opt_levels: expected one or more of {sorted(OPT_LEVELS)}, got {list(opt_levels)}")
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    check_external_data(path.read_bytes(), path)  # weight files from the model's own folder only
    out = {}
    for name in opt_levels:
        so = new_session_options(name, threads=1)  # onnxruntime's own logging off; its errors still raise
        try:
            out[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = message_line(e) or type(e).__name__
            raise ModelFormatError(f"{path}: onnxruntime could not load it: {first}") from None
    return out


def session_runner(sess: ort.InferenceSession) -> Call:
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds)))


def read_contract(path: str | Path, session: ort.InferenceSession | None = None) -> Contract:
    """The edge_rnn contract of an ONNX (or ORT-format) file, read through onnxruntime (``session``: one already
    open on that file), and checked against the graph."""
    sess = session if session is not None else open_sessions(path, ("disabled",))["disabled"]
    ins, outs, metadata = describe_session(sess, str(path))
    contract = Contract.from_metadata(metadata)
    if contract is None:
        raise ModelFormatError(f"{path}: no edge_rnn contract in its metadata (expected a model edge-rnn exported)")
    check_contract_fits(contract, ins, outs)
    return contract


def chunk_sizes(rng: np.random.Generator, total: int, max_chunk: int) -> list[int]:
    """Random chunk lengths in ``1..max_chunk`` that add up to ``total``."""
    sizes = []
    while total > 0:
        n = int(min(total, rng.integers(1, max_chunk + 1)))
        sizes.append(n)
        total -= n
    return sizes


def stream_chunks(call: Call, contract: Contract, inputs: Arrays, states: Arrays, sizes: list[int]) -> Arrays:
    """Feed ``inputs`` (whole sequences) in chunks of ``sizes`` along each input's time axis, carrying states.

    Outputs with a time axis are concatenated along it; the others, and the
    states, are the last call's. States are carried in whatever precision
    ``call`` returns them.
    """
    edges = np.cumsum([0] + list(sizes))
    outs: dict[str, list[np.ndarray]] = {t.name: [] for t in contract.outputs}
    cur = dict(states)
    last: Arrays = {}
    for a, b in zip(edges[:-1], edges[1:]):
        feeds = {t.name: (inputs[t.name] if t.time_axis is None
                          else np.take(inputs[t.name], np.arange(a, b), axis=t.time_axis)) for t in contract.inputs}
        last = call({**feeds, **cur})
        for t in contract.outputs:
            outs[t.name].append(last[t.name])
        cur = {s.input: last[s.output] for s in contract.states}
    res = {t.name: (np.concatenate(outs[t.name], axis=t.time_axis) if t.time_axis is not None else last[t.name])
           for t in contract.outputs}
    res.update({s.output: cur[s.input] for s in contract.states})
    return res


def stream_calls(call: Call, contract: Contract, calls: list[Arrays], states: Arrays) -> Arrays:
    """One call per item of ``calls``, carrying the states; outputs stacked on a new axis 0."""
    outs: dict[str, list[np.ndarray]] = {t.name: [] for t in contract.outputs}
    cur = dict(states)
    for feeds in calls:
        last = call({**feeds, **cur})
        for t in contract.outputs:
            outs[t.name].append(np.asarray(last[t.name]))
        cur = {s.input: last[s.output] for s in contract.states}
    res = {k: np.stack(v) for k, v in outs.items()}
    res.update({s.output: np.asarray(cur[s.input]) for s in contract.states})
    return res


def _case_list(contract: Contract, cases: Cases, rng: np.random.Generator) -> list[tuple[str, int, int, list[int]]]:
    """(name, batch, steps, chunk sizes) per case; for one-step-per-call models, sizes are all 1."""
    if not contract.is_streaming:
        calls = [("full calls=1", cases.batch, 1), (f"chunked calls={cases.chunked_len}", cases.batch,
                                                     cases.chunked_len),
                 (f"long calls={cases.long_steps}", cases.long_batch, cases.long_steps)]
        return [(name, b, n, [1] * n) for name, b, n in calls if n]
    out = [(f"full T={t}", cases.batch, t, [t]) for t in cases.seq_lens]
    if cases.chunked_len:
        out.append((f"chunked T={cases.chunked_len}", cases.batch, cases.chunked_len,
                    chunk_sizes(rng, cases.chunked_len, cases.chunk_max)))
    if cases.long_steps:
        out.append((f"long T={cases.long_steps}", cases.long_batch, cases.long_steps,
                    chunk_sizes(rng, cases.long_steps, cases.long_chunk_max)))
    return out


def run_case(call: Call, contract: Contract, inputs: Arrays, states: Arrays, sizes: list[int]) -> Arrays:
    """``call`` over one case: in chunks of ``sizes`` (one-step models: one call per leading index)."""
    if contract.is_streaming:
        return stream_chunks(call, contract, inputs, states, sizes)
    calls = [{k: v[i] for k, v in inputs.items()} for i in range(len(sizes))]
    return stream_calls(call, contract, calls, states)


def _run(side: str, case: str, call: Call, contract: Contract, feeds: Arrays, states: Arrays,
         sizes: list[int]) -> Arrays:
    """run_case, with whatever the side raises turned into an error that names the side and the case."""
    try:
        return run_case(call, contract, feeds, states, sizes)
    except _CallersError as e:  # the progress callback's own exception, not the side's: through as it was raised
        raise e.original from e.original.__cause__
    except EdgeRnnError:
        raise
    except Exception as e:  # noqa: BLE001 - PyTorch's or onnxruntime's own error types
        first = message_line(e)
        error = ModelFormatError if side.startswith("onnxruntime") else EdgeRnnError
        hint = "; does the module fit the file?" if side.startswith("PyTorch") else ""
        raise error(f"{side} fails on case {case!r} ({type(e).__name__}: {first}){hint}") from None


class _CallersError(Exception):
    """Carries what the caller's progress callback raised through :func:`_run`, which names a side and a case only
    for the side's own errors (onnxruntime's, PyTorch's)."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


def _counted(call: Call, sizes: list[int], ticker: Ticker | None) -> Call:
    """``call``, advancing ``ticker`` by each call's steps (``sizes``, in order) as it returns; itself without one."""
    if ticker is None:
        return call
    steps = iter(sizes)

    def counted(feeds: Arrays) -> Arrays:
        out = call(feeds)
        try:
            ticker.advance(next(steps, 0))
        except Exception as e:  # noqa: BLE001 - whatever the caller's callback raises, carried past _run's wrapping
            raise _CallersError(e) from None
        return out

    return counted


def compare_streaming(
    path: str | Path, contract: Contract, reference: Call, inputs: InputSource,
    states: Callable[[np.random.Generator, int], Arrays], *, noise: Call | None = None, cases: Cases = Cases(),
    seed: int = 0, tolerance: Tolerance = TOLERANCE["float32"], opt_levels: tuple[str, ...] = ("disabled", "default"),
    reference_label: str = "PyTorch float64", noise_label: str = "PyTorch float32", progress: Progress | None = None,
) -> ParityReport:
    """The ONNX model at ``path``, streamed, against ``reference`` run over each whole case.

    ``noise`` is the same computation in the candidate's precision (PyTorch
    fp32); with it, a tensor passes when ``err_onnx <= max(atol, k *
    err_torch)``. Without it, ``reference`` is taken as that fp32 result and
    the element-wise fallback bound applies. For a one-step-per-call model the
    references are stepped call by call, carrying their states.
    ``progress`` (:mod:`edge_rnn._progress`) counts the steps streamed, every case on every side (the
    references and each optimisation level), as each call returns.
    """
    rng = np.random.default_rng(seed)
    sessions = open_sessions(path, opt_levels)
    ins, outs, _ = describe_session(next(iter(sessions.values())), str(path))
    check_contract_fits(contract, ins, outs)  # the graph streams by the contract the comparison follows
    report = ParityReport(tolerance=tolerance, exact_reference=noise is not None, reference=reference_label)
    todo = _case_list(contract, cases, rng)
    if not todo:
        raise UnsupportedError(f"nothing to compare: every case is off ({cases}); a check without cases passes "
                               "nothing")
    sides = 1 + (noise is not None) + len(sessions)
    ticker = None if progress is None else Ticker(progress, sides * sum(t[2] for t in todo), "parity check")
    for case, batch, steps, sizes in todo:
        feeds = inputs(rng, batch, steps, not contract.is_streaming)
        init = states(rng, batch)
        ref_sizes = [steps] if contract.is_streaming else sizes  # references: one pass over the sequence
        want = _run(reference_label, case, _counted(reference, ref_sizes, ticker), contract, feeds, init, ref_sizes)
        fp32 = None if noise is None else _run(noise_label, case, _counted(noise, ref_sizes, ticker), contract, feeds,
                                               init, ref_sizes)
        for level, sess in sessions.items():
            got = _run(f"onnxruntime [{level}]", case, _counted(session_runner(sess), sizes, ticker), contract, feeds,
                       init, sizes)
            for name, ref in want.items():
                report.rows.append(judge(case, level, name, got[name], ref, None if fp32 is None else fp32[name],
                                         tolerance))
    return report
