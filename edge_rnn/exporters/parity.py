"""``verify``: does the ONNX model compute what the PyTorch module computes?

Three kinds of case, each run in onnxruntime with graph optimisations disabled
and at the default level, on fresh random inputs whose batch size and
sequence lengths differ from the export's, from a non-zero initial state:

* ``full``: one call over a whole sequence against one PyTorch call;
* ``chunked``: the same sequence streamed in random chunk sizes, each call's
  output states fed to the next call's inputs, against one PyTorch call;
* ``long``: a stream of ``long_steps`` (10,000 by default) steps in random
  chunks, to show errors do not drift.

For cells (one step per call) the PyTorch reference loops the cell over the
sequence. Every output and every final state is compared; the maximum absolute
error and the relative error (max absolute error over the reference's largest
magnitude) are reported, and every case beyond tolerance is collected and
raised at once in one :class:`~edge_rnn.errors.ParityError`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, ParityError
from edge_rnn.exporters._spec import RecurrentSpec, spec_from_module

__all__ = ["verify", "ParityReport", "ParityRow", "TOLERANCE", "OPT_LEVELS", "stream_chunks", "compare_streaming"]

# Maximum absolute error allowed, per dtype of the exported graph.
TOLERANCE = {"float32": 1e-5}
OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ParityRow:
    case: str
    opt_level: str
    tensor: str
    max_abs: float
    max_rel: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.max_abs <= self.tolerance)


@dataclass
class ParityReport:
    """Every comparison :func:`verify` made."""

    rows: list[ParityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failures(self) -> list[ParityRow]:
        return [r for r in self.rows if not r.ok]

    @property
    def max_abs_error(self) -> float:
        return max((r.max_abs for r in self.rows), default=0.0)

    def worst(self) -> dict[tuple[str, str], ParityRow]:
        """The worst row per (case kind, tensor)."""
        out: dict[tuple[str, str], ParityRow] = {}
        for r in self.rows:
            key = (r.case.split()[0], r.tensor)
            if key not in out or r.max_abs > out[key].max_abs:
                out[key] = r
        return out

    def table(self) -> str:
        """A short table: worst error per case kind and tensor."""
        lines = [f"{'case':<8} {'tensor':<14} {'max abs':>10} {'max rel':>10} {'tol':>8}  "]
        for (kind, tensor), r in sorted(self.worst().items()):
            lines.append(
                f"{kind:<8} {tensor:<14} {r.max_abs:>10.2e} {r.max_rel:>10.2e} {r.tolerance:>8.0e}  "
                f"{'ok' if r.ok else 'FAIL'}"
            )
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _sessions(path: Path, opt_levels: tuple[str, ...]) -> dict[str, ort.InferenceSession]:
    out = {}
    for name in opt_levels:
        so = ort.SessionOptions()
        so.graph_optimization_level = OPT_LEVELS[name]
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        out[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return out


def _torch_step_fn(module: torch.nn.Module, spec: RecurrentSpec) -> Callable[[Arrays], Arrays]:
    """PyTorch's answer to one call of the ONNX graph (same feeds, same outputs)."""
    dtype = next(module.parameters()).dtype
    lstm = spec.kind == "lstm"

    def run(feeds: Arrays) -> Arrays:
        t = {k: torch.from_numpy(v).to(dtype) for k, v in feeds.items()}
        hx = (t["h0"], t["c0"]) if lstm else t["h0"]
        with torch.no_grad(), warnings.catch_warnings():
            # torch's notice that oneDNN lacks proj_size says nothing about parity
            warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
            if spec.cell:
                res = module(t["x"], hx)
                h, c = res if lstm else (res, None)
                out = {"y": h, "hn": h}
            else:
                y, state = module(t["x"], hx)
                h, c = state if lstm else (state, None)
                out = {"y": y, "hn": h}
            if lstm:
                out["cn"] = c
        return {k: v.double().numpy() for k, v in out.items()}

    return run


def _chunks(rng: np.random.Generator, total: int, max_chunk: int) -> list[int]:
    sizes = []
    while total > 0:
        n = int(min(total, rng.integers(1, max_chunk + 1)))
        sizes.append(n)
        total -= n
    return sizes


def _compare(report: ParityReport, case: str, level: str, got: Arrays, want: Arrays, tol: float) -> None:
    for name, ref in want.items():
        diff = float(np.max(np.abs(got[name].astype(np.float64) - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        report.rows.append(ParityRow(case, level, name, diff, diff / scale if scale else diff, tol))


def verify(
    module: torch.nn.Module,
    path: str | Path,
    *,
    example_input: torch.Tensor | None = None,
    batch_size: int | None = None,
    seq_lens: tuple[int, ...] = (1, 6, 19),
    chunked_len: int = 41,
    long_steps: int = 10_000,
    opt_levels: tuple[str, ...] = ("disabled", "default"),
    seed: int = 0,
    atol: float | None = None,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Check the ONNX model at ``path`` against ``module``; see the module docstring for the cases.

    ``batch_size`` defaults to one more than the example's (3 without one).
    Raises :class:`~edge_rnn.errors.ParityError` listing every tensor beyond
    ``atol`` (``TOLERANCE["float32"]`` by default) unless ``raise_on_failure``
    is false.

    Example::

        >>> report = edge_rnn.verify(lstm, "lstm.onnx")     # doctest: +SKIP
        >>> print(report.table())                            # doctest: +SKIP
    """
    path = Path(path)
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:  # onnx raises DecodeError, OSError, ... for non-ONNX files
        raise ModelFormatError(f"{path}: expected an ONNX model, could not read it ({e})") from None
    contract = Contract.from_metadata(meta)
    if contract is None:
        raise ModelFormatError(f"{path}: expected an edge_rnn contract in the metadata, found none")
    if module.training:  # dropout would make PyTorch's side random
        module = copy.deepcopy(module).eval()
    spec = spec_from_module(module)
    tol = TOLERANCE["float32"] if atol is None else atol
    if batch_size is None:
        ex_batch = None
        if example_input is not None and example_input.dim() >= 2:
            ex_batch = example_input.shape[0 if (spec.cell or spec.batch_first) else 1]
        batch_size = 3 if ex_batch is None else ex_batch + 1
    x_spec = contract.inputs[0]

    def make_inputs(rng: np.random.Generator, batch: int, steps: int) -> tuple[Arrays, Arrays]:
        shape = [batch, spec.input_size]
        if x_spec.time_axis is not None:
            shape = [0, 0, spec.input_size]
            shape[x_spec.batch_axis], shape[x_spec.time_axis] = batch, steps
        states = {s.input: (0.5 * rng.standard_normal(s.concrete_shape(batch))).astype(np.float32)
                  for s in contract.states}
        return {x_spec.name: rng.standard_normal(shape).astype(np.float32)}, states

    if not contract.streamable:
        chunked_len = long_steps = 0
    report = compare_streaming(
        _torch_step_fn(module, spec), path, contract, make_inputs, batch_size=batch_size, seq_lens=seq_lens,
        chunked_len=chunked_len, long_steps=long_steps, seed=seed, atol=tol, opt_levels=opt_levels,
    )
    if not contract.streamable:
        report.notes.append(
            "not streamable (a bidirectional layer reads the whole sequence): checked full passes only; "
            "run it one whole sequence per call"
        )
    if raise_on_failure:
        raise_failures(report, path)
    return report


def stream_chunks(
    call: Callable[[Arrays], Arrays], contract: Contract, inputs: Arrays, states: Arrays, sizes: list[int]
) -> Arrays:
    """Feed ``inputs`` (whole sequences) in chunks of ``sizes`` along each input's time axis, carrying states.

    Outputs with a time axis are concatenated along it; the others, and the
    states, are the last call's.
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


def compare_streaming(
    reference: Callable[[Arrays], Arrays], path: Path, contract: Contract, make_inputs: Callable[..., Arrays], *,
    batch_size: int, seq_lens: tuple[int, ...], chunked_len: int, long_steps: int, seed: int, atol: float,
    opt_levels: tuple[str, ...] = ("disabled", "default"),
) -> ParityReport:
    """Whole sequences through ``reference`` against the ONNX model, whole and streamed in random chunks.

    ``make_inputs(rng, batch, steps)`` returns the data inputs and the initial states. For a
    model without a time axis (one step per call), ``chunked_len`` and ``long_steps`` count calls.
    """
    rng = np.random.default_rng(seed)
    sessions = _sessions(path, opt_levels)
    report = ParityReport()

    def runner(sess: ort.InferenceSession) -> Callable[[Arrays], Arrays]:
        names = [o.name for o in sess.get_outputs()]
        return lambda feeds: dict(zip(names, sess.run(names, feeds)))

    if not contract.is_streaming:  # one step per call: sequences of calls, the state carried on both sides
        calls = (("full calls=1", batch_size, 1), (f"chunked calls={chunked_len}", batch_size, chunked_len),
                 (f"long calls={long_steps}", 1, long_steps))
        for case, batch, n in calls:
            if not n:
                continue
            calls = [make_inputs(rng, batch, 1) for _ in range(n)]
            states = calls[0][1]
            want = stream_calls(reference, contract, [c[0] for c in calls], states)
            for level, sess in sessions.items():
                got = stream_calls(runner(sess), contract, [c[0] for c in calls], states)
                _compare(report, case, level, got, want, atol)
        return report
    cases = [(f"full T={t}", batch_size, t, [t]) for t in seq_lens]
    if chunked_len:
        cases.append((f"chunked T={chunked_len}", batch_size, chunked_len, _chunks(rng, chunked_len, 8)))
    if long_steps:
        cases.append((f"long T={long_steps}", 1, long_steps, _chunks(rng, long_steps, 64)))
    for case, batch, steps, sizes in cases:
        inputs, states = make_inputs(rng, batch, steps)
        want = reference({**inputs, **states})
        for level, sess in sessions.items():
            got = stream_chunks(runner(sess), contract, inputs, states, sizes)
            _compare(report, case, level, got, want, atol)
    return report


def stream_calls(call: Callable[[Arrays], Arrays], contract: Contract, calls: list[Arrays], states: Arrays) -> Arrays:
    """One call per item of ``calls``, carrying the states; outputs stacked on a new axis 0."""
    outs: dict[str, list[np.ndarray]] = {t.name: [] for t in contract.outputs}
    cur = dict(states)
    for feeds in calls:
        last = call({**feeds, **cur})
        for t in contract.outputs:
            outs[t.name].append(np.asarray(last[t.name], np.float64))
        cur = {s.input: np.asarray(last[s.output], np.float32) for s in contract.states}
    res = {k: np.stack(v) for k, v in outs.items()}
    res.update({s.output: cur[s.input] for s in contract.states})
    return res


def raise_failures(report: ParityReport, path: Path) -> None:
    if report.ok:
        return
    lines = [f"  {r.case} [{r.opt_level}] {r.tensor}: max abs error {r.max_abs:.3e} > {r.tolerance:.0e}"
             for r in report.failures]
    raise ParityError(
        f"{path}: ONNX and PyTorch differ in {len(lines)} comparison(s):\n" + "\n".join(lines),
        [(r.case, r.tensor, r.max_abs, r.tolerance) for r in report.failures],
    )
