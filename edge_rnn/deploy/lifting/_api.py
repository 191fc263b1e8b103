"""``edge_rnn.lift``: a recurrent ONNX file from elsewhere made streamable, proved, and written. onnx and
onnxruntime only, no torch.

The graph surgery is :mod:`edge_rnn.deploy.lifting._surgery` (a state input and output
pair per recurrent node, ``layout=1`` rewritten, batch and time made dynamic,
the contract written); the proof is :mod:`edge_rnn.deploy.lifting._proof`
(chunked streaming of the lifted file against one pass of the original, by the
project's parity verdict). A file is written only when the proof passes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.deploy._decompose import all_graphs, check_recurrent_nodes
from edge_rnn.deploy._tools import read_model
from edge_rnn.deploy.lifting._proof import PROOF_CASES, Proof, pinned_batch, prove
from edge_rnn.deploy.lifting._surgery import Lifted, LiftedState, lift_model, reference_model
from edge_rnn.deploy.lifting._zeros import drop_zero_states
from edge_rnn.errors import EdgeRnnError, ModelFormatError, ParityError, UnsupportedError, described
from edge_rnn.harness import Cases

__all__ = ["lift", "LiftResult", "lift_hint"]


@dataclass
class LiftResult:
    """What :func:`lift` wrote: the file, its contract, each lifted state, the rewrites, and the proof."""

    path: Path
    contract: Contract
    states: list[LiftedState]
    notes: list[str]
    proof: Proof


def _read(path: Path) -> onnx.ModelProto:
    """The model at ``path``, checked as onnx checks a model (its declared shapes against its weights included):
    what the surgery and the proof then meet is a valid graph, and an invalid one is one error, not a traceback."""
    if not path.is_file():
        raise EdgeRnnError(f"model {path}: no such file")
    model = read_model(path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError, InferenceError, ...
        raise ModelFormatError(f"{path}: not a valid ONNX model ({described(e)})") from None
    check_recurrent_nodes(model)
    bad = next((t for t in (t for g in all_graphs(model.graph) for t in g.initializer) if not _sized(t)), None)
    if bad is not None:
        raise ModelFormatError(f"{path}: initializer {bad.name!r}: expected {_nbytes(bad)} bytes for its shape "
                               f"{list(bad.dims)}, got {len(bad.raw_data)}")
    return model


def _nbytes(t: onnx.TensorProto) -> int | None:
    try:
        item = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(t.dims, dtype=np.int64)) * item


def _sized(t: onnx.TensorProto) -> bool:
    """Whether a tensor stored as raw bytes (external data read in) has as many as its shape asks for."""
    want = _nbytes(t)
    odd = {getattr(onnx.TensorProto, n, -1) for n in ("INT4", "UINT4", "FLOAT4E2M1", "STRING")}  # packed, or not raw
    return not t.HasField("raw_data") or t.data_type in odd or want is None or len(t.raw_data) == want


def _with_initial(lifted: Lifted) -> Lifted:
    """The lifted model's contract with each state's own initial value (a constant in the file) recorded in it."""
    initial = {s.input: s.initial for s in lifted.states if s.initial is not None}
    if not initial:
        return lifted
    states = tuple(dataclasses.replace(s, initial=tuple(float(v) for v in np.ravel(initial[s.input])))
                   if s.input in initial else s for s in lifted.contract.states)
    contract = dataclasses.replace(lifted.contract, states=states)
    onnx.helper.set_model_props(lifted.model, {**{p.key: p.value for p in lifted.model.metadata_props},
                                               **contract.to_metadata()})
    return dataclasses.replace(lifted, contract=contract)


def _recorded(original: onnx.ModelProto, lifted: Lifted) -> Lifted:
    """A state the file already took as a graph input (a lifted file lifted again) keeps the initial value its
    contract recorded: a new stream must not start from zeros where it started from the file's constant."""
    meta = {p.key: p.value for p in original.metadata_props}
    if METADATA_KEY not in meta:
        return lifted
    rows = {s.input: s.initial_row() for s in Contract.from_metadata(meta).states}
    states = [dataclasses.replace(s, initial=rows[s.input]) if s.initial is None and rows.get(s.input) is not None
              else s for s in lifted.states]
    return dataclasses.replace(lifted, states=states)


def lift(model: str | Path, output: str | Path, *, axes: dict[str, tuple[int, int]] | None = None,
         cases: Cases = PROOF_CASES, seed: int = 0) -> LiftResult:
    """Lift the recurrent ONNX file ``model`` to a streaming one at ``output``, proved before it is written.

    Each ``RNN``/``GRU``/``LSTM`` node without an initial state, or with a constant one, gets a state input and
    output pair named after it (``<node>.h0`` -> ``<node>.hn``; ``.c0``/``.cn`` for an LSTM), the batch and time
    axes become dynamic, and the ``edge_rnn`` contract is written. ``axes`` gives an input's ``(batch_axis,
    time_axis)`` where the graph does not say. Raises UnsupportedError, naming the node, for what cannot stream
    (a bidirectional or reverse node, an operator that looks ahead in time or pools over it), and ParityError,
    with the table, where chunked streaming of the lifted file differs from one pass of the original.
    """
    src, dst = Path(model), Path(output)
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise UnsupportedError(f"{dst}: the output would overwrite the model it is lifted from; write it elsewhere")
    original = _read(src)
    cleaned, zero_notes = drop_zero_states(original)
    lifted = _with_initial(_recorded(original, lift_model(cleaned, axes=axes)))
    lifted = dataclasses.replace(lifted, notes=[*zero_notes, *lifted.notes])
    proof = prove(lifted.model, reference_model(cleaned, lifted), {s.input: s.initial for s in lifted.states},
                  cases=cases, seed=seed, batch=pinned_batch(cleaned, lifted.contract))
    if not proof.ok:
        rows = proof.report.failures
        raise ParityError(f"{src}: not streamable as lifted: chunked calls of the lifted graph differ from one pass "
                          f"of the original in {len(rows)} comparison(s); nothing written\n{proof.table()}",
                          [(r.case, r.tensor, r.err_onnx, r.bound) for r in rows], rows=rows)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(lifted.model, str(dst))
    except OSError as e:
        raise EdgeRnnError(f"{dst}: cannot write the lifted model ({e.strerror or e})") from None
    return LiftResult(dst, lifted.contract, list(lifted.states), list(lifted.notes), proof)


def lift_hint(path: Path) -> str:
    """One line for ``edge-rnn inspect`` on a file without a contract: whether ``edge-rnn lift`` can make it
    streamable, and if not, why (the surgery's refusal; the proof is not run here)."""
    try:
        lift_model(drop_zero_states(_read(path))[0])
    except EdgeRnnError as e:
        return f"lift:      edge-rnn lift cannot make it streamable: {e}"
    return f"lift:      edge-rnn lift {path} -o streaming.onnx can make it streamable (then proved chunk by chunk)"
