"""StreamingModel: one loaded ONNX model shared by many streams."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_rnn.contract import Contract, StateSpec
from edge_rnn.errors import (
    ArgumentError,
    InferenceError,
    ModelFormatError,
    NonFiniteError,
    ShapeError,
    StreamError,
    UnsupportedError,
    message_line,
)
from edge_rnn.runtime._batching import BatchStepping
from edge_rnn.runtime._bundle import by_speed, check_max_error, hash_file, number, pick_variant, read_manifest
from edge_rnn.runtime._external import check_external_data, operator_types
from edge_rnn.runtime._layout import from_front, to_front
from edge_rnn.runtime._ports import ModelIO, Port, resolve_io
from edge_rnn.runtime._selftest import SelfTest, estimate_error, golden_of, raise_if_failed
from edge_rnn.runtime._selftest import self_test as run_self_test
from edge_rnn.runtime._session import (
    _EP_FAIL,
    OPT_LEVELS,
    ForeignModel,
    SessionConfig,
    check_providers,
    describe_session,
)
from edge_rnn.runtime._session import session_options as make_session_options
from edge_rnn.runtime._slab import StateSlab
from edge_rnn.runtime._snapshot import decode_snapshot
from edge_rnn.runtime._stream import Stream, state_from_user

__all__ = ["StreamingModel", "OPT_LEVELS"]

Arrays = dict[str, np.ndarray]


def _grouped(session: SessionConfig | None, foreign: ForeignModel | None,
             flat: dict[str, Any]) -> tuple[SessionConfig, ForeignModel]:
    """load's flat keywords, each put in its group; a group given whole and in part is refused."""
    groups = {"session": (SessionConfig, session), "foreign": (ForeignModel, foreign)}
    out = {}
    for name, (cls, given) in groups.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        mine = {k: flat.pop(k) for k in list(flat) if k in keys}
        if given is not None and mine:
            raise UnsupportedError(f"give {name}={cls.__name__}(...) or its fields {sorted(mine)} as keywords, "
                                   "not both")
        out[name] = given if given is not None else cls(**mine)
    if flat:
        raise ArgumentError(f"load() got unexpected keyword arguments {sorted(flat)}")
    return out["session"], out["foreign"]


def _checked_array(p: Port, a: Any, rank: int, fixed: list[tuple[int, int]]) -> np.ndarray:
    """One input of one stream's chunk as an array of the port's dtype, rank and fixed sizes, not empty."""
    if type(a) is not np.ndarray:
        a = _from_values(p, a)
    shape = a.shape
    if a.dtype != p.dtype or len(shape) != rank or any(shape[i] != d for i, d in fixed):
        t = p.stream_time_axis
        steps = None if t is None else p.stream_shape[t]
        if steps is not None and a.dtype == p.dtype and len(shape) == rank and shape[t] != steps and all(
                shape[i] == d for i, d in fixed if i != t):
            raise ShapeError(f"{p.name}: expected exactly {steps} time step(s) per call (this model has a fixed chunk, "
                             f"a static form for NPUs), got {shape[t]}")
        hint = f" (cast it: .astype(np.{p.dtype}))" if a.dtype != p.dtype and a.dtype.kind == p.dtype.kind else ""
        raise ShapeError(f"{p.name}: expected shape {p.describe()}, got {shape} {a.dtype}{hint}")
    if a.size == 0:
        raise ShapeError(f"{p.name}: expected at least one time step, got an empty chunk of shape {shape}")
    return a


def _from_values(p: Port, a: Any) -> np.ndarray:
    """Nested lists (or scalars, tuples, array-likes) as an array of the port's dtype; never a silent rounding."""
    try:
        if p.dtype.kind == "f":
            with np.errstate(over="raise"):  # 1e300 in a list is finite, just beyond float32: say so
                return np.asarray(a, dtype=p.dtype)
        raw = np.asarray(a)  # integers stay integers: 1.5 for a token id is refused, not rounded to 1
        if raw.dtype.kind not in ("b" if p.dtype.kind == "b" else "iu") and raw.size:
            first = raw.reshape(-1)[:1].tolist()[0]
            raise ShapeError(f"{p.name}: expected {p.dtype} values, got {raw.dtype} ({first!r}, ...)")
        if raw.size and raw.dtype.kind in "iu":
            info = np.iinfo(p.dtype)
            if raw.min() < info.min or raw.max() > info.max:
                raise ShapeError(f"{p.name}: expected values within {p.dtype}'s range, got {raw.min()}..{raw.max()}")
        return raw.astype(p.dtype)
    except ShapeError:
        raise
    except FloatingPointError:
        raise ShapeError(f"{p.name}: expected values within {p.dtype}'s range, got a finite value beyond it "
                         "(it would become Inf)") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise ShapeError(f"{p.name}: expected an array of shape {p.describe()}, got {type(a).__name__} "
                         f"that numpy cannot convert ({e})") from None


def _fingerprint(data: bytes, weight_files: list[Path]) -> str:
    """What identifies a model for its snapshots: the file's bytes and those of its external weight files."""
    digest = hashlib.sha256(data)
    for file in weight_files:
        hash_file(digest, file)
    return digest.hexdigest()[:32]


def _rows_coupled(data: bytes, picked: Any) -> bool:
    """Whether one stream's values can change another's output when they share a call: a dynamic
    quantisation operator (DynamicQuantizeLinear, DynamicQuantizeLSTM, ...: an int8 variant) scales a whole
    call's activations at once, so a neighbour's large input coarsens everyone's. An ORT-format file's
    operators are known only from a bundle's manifest; unknown counts as coupled (never silently wrong)."""
    ops = operator_types(data)
    if ops is None and picked is not None:
        ops = picked.operators
    if ops is None:
        return data[4:8] == b"ORTM"
    return any(op.rsplit(".", 1)[-1].startswith("DynamicQuantize") for op in ops)  # manifest: domain.op_type


def _is_int8_variant(picked: Any) -> bool:
    """Whether a bundle's variant is an int8 one, by its contract (what the self-test's advice depends on)."""
    return picked.contract.source.get("variant") in ("int8", "static-int8")


class StreamingModel(BatchStepping):
    """A stateful ONNX model, loaded once and shared; each :class:`Stream` owns its state.

    Everything a stream passes or gets back is without the batch axis: a chunk
    of an LSTM exported with ``(time, batch, 80)`` input is ``(time, 80)``.

    Example::

        >>> model = StreamingModel.load("lstm.onnx")                 # doctest: +SKIP
        >>> stream = model.open_stream()                             # doctest: +SKIP
        >>> y = model.step(stream, chunk)["y"]   # chunk: (time, 80) float32   # doctest: +SKIP
        >>> outs = model.step_batch([(s1, c1), (s2, c2)])            # one onnxruntime call  # doctest: +SKIP
    """

    def __init__(self, session: ort.InferenceSession, io: ModelIO, fingerprint: str, *,
                 allow_nonfinite: bool = False, source: str = "<bytes>", rows_coupled: bool = False):
        self._session = session
        self._io = io
        self.fingerprint = fingerprint
        self.allow_nonfinite = allow_nonfinite
        self.source = source
        self.variant: str | None = None  # the bundle variant it was loaded as, if any
        self.self_test: SelfTest | None = None  # its golden replay on this CPU, when loaded with self_test=True
        self._out_names = [p.name for p in io.outputs] + [s.output for s in io.states]
        self._n_out = len(io.outputs)
        # Every feed is validated here already, so the binding's run skips the public wrapper's second
        # check of names and ownership (~5 us a call); any error goes through the public run, which
        # reports it or falls back to another execution provider as onnxruntime does.
        # Decided once here: whether the binding exists. It is looked up on each call, since onnxruntime
        # replaces it when it falls back to another execution provider.
        self._fast = callable(getattr(getattr(session, "_sess", None), "run", None))
        self._out_port_names = [p.name for p in io.outputs]
        self._out_drop = [(p.name, (slice(None),) * p.batch_axis + (0,)) for p in io.outputs]
        self._single_input = io.inputs[0].name if len(io.inputs) == 1 else None
        self._input_names = {p.name for p in io.inputs}
        self._ranges = {p.name: p.values for p in io.inputs if p.values is not None}
        self._valid_layouts: dict[tuple, int] = {}  # (shape, dtype) of chunks that passed _prepare -> steps
        # a third-party model may fix its batch size at 1, and a dynamic int8 variant quantises each call's
        # activations with one scale over the whole call (rows_coupled): then streams cannot share a call
        self._batchable = all(p.shape[p.batch_axis] is None for p in (*io.inputs, *io.outputs)) and not rows_coupled
        self.rows_coupled = rows_coupled
        # per input: (port, per-stream shape, per-stream time axis); hot-path look-ups precomputed
        self._in_checks = [
            (p, len(p.stream_shape), [(i, d) for i, d in enumerate(p.stream_shape) if d is not None],
             p.stream_time_axis)
            for p in io.inputs
        ]
        # index tuples that add (x[add]) or drop (y[drop]) the batch axis as views, without copies
        self._add_batch = {p.name: (slice(None),) * p.batch_axis + (None,) for p in io.inputs}
        self._in_batch_axis = {p.name: p.batch_axis for p in io.inputs}
        # transposes that take chunks stacked batch first to the model's layout (None: already it)
        self._in_from_batch_first = {p.name: from_front(len(p.shape), p.batch_axis) for p in io.inputs}
        # transposes that bring the batch axis first, to split a batch into per-stream views (None: first already)
        self._out_batch_first = [to_front(len(p.shape), p.batch_axis) for p in io.outputs]
        self._slab = StateSlab(io.states)  # every open stream's state, one row each

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | bytes,
        *,
        session: SessionConfig | None = None,
        foreign: ForeignModel | None = None,
        contract: Contract | None = None,
        allow_nonfinite: bool = False,
        variant: str | None = None,
        max_error: float | None = None,
        form: str = "onnx",
        self_test: bool = False,
        **flat: Any,
    ) -> StreamingModel:
        """Load an ONNX or ORT-format model (a path or its bytes), or a variant of a bundle (a folder).

        A bundle folder (``edge-rnn package``) holds variants and a
        ``manifest.json``: ``variant="int8"`` picks one by name,
        ``max_error=1e-3`` the fastest whose measured error is within it (and
        does not grow), neither the ``fp32`` one; ``form="ort"`` its ORT-format
        file. The file's SHA-256 must match the manifest, and so must the
        contract in the file. ``model.variant`` says which.

        ``self_test=True`` (a bundle only) replays the variant's golden stream
        on this CPU before it is handed back, and raises
        :class:`~edge_rnn.errors.SelfTestError` when it is over its bound,
        naming the variant, this CPU's int8-relevant features, the error here
        against the bound and the packaging host's figure; ``model.self_test``
        holds the result. With ``max_error=`` it picks by what this CPU
        measured: the fastest variant that passes here and whose long-stream
        error, projected to this CPU (the manifest's figure scaled by the
        golden error here over the packaging host's), is within ``max_error``.

        A model edge-rnn exported describes its states in its ``edge_rnn``
        metadata. The options come in two groups, each a frozen dataclass:

        - ``session`` (:class:`SessionConfig`): ``providers``, ``threads``
          (intra-op; None: onnxruntime's default), ``optimization`` (graph
          level, ``"default"``: all) or your own ``session_options``, used as
          given and never changed;
        - ``foreign`` (:class:`ForeignModel`): how to read a model edge-rnn
          did not write: ``state_map``, ``batch_axis``, ``time_axis``,
          ``state_batch_axis``, ``constants``.

        Each of those fields may also be given as a keyword of its own
        (``load(path, threads=1)``), but not both ways. ``contract`` describes
        the states when the file carries none (a bundle's manifest holds it);
        it takes the place of the metadata and is checked against the graph.
        """
        session, foreign = _grouped(session, foreign, flat)
        picked = None
        if not isinstance(self_test, bool):
            raise UnsupportedError(f"self_test: expected True or False, got {self_test!r}")
        if not isinstance(model, (bytes, bytearray)) and Path(model).is_dir():
            if contract is not None:
                raise UnsupportedError("contract=: a bundle's manifest already holds each variant's contract")
            if self_test and max_error is not None and variant is None:
                return cls._tested_within(Path(model), max_error, form, session=session, foreign=foreign,
                                          allow_nonfinite=allow_nonfinite)
            picked = pick_variant(Path(model), variant, max_error, form)
            model = picked.path
        elif variant is not None or max_error is not None or form != "onnx" or self_test:
            raise UnsupportedError(f"variant=, max_error=, form= and self_test= pick from a bundle folder; "
                                   f"{model!r:.80} is a model file")
        path = None
        if isinstance(model, (bytes, bytearray)):
            data, source = bytes(model), "<bytes>"
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelFormatError(f"{path}: no such file")
            data, source = path.read_bytes(), str(path)
        # External weight files are read from the model's folder only: onnxruntime gets the path, not the bytes.
        external = check_external_data(data, path)
        providers = check_providers(session.providers)
        so = make_session_options(session.session_options, session.threads, session.optimization)
        try:
            ort_session = ort.InferenceSession(str(path) if external else data, so,
                                               providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = message_line(e) or type(e).__name__
            raise ModelFormatError(f"{source}: onnxruntime could not load it: {first}") from None
        if contract is not None and foreign.state_map is not None:
            raise UnsupportedError("give contract= or state_map=, not both: the contract already says which input "
                                   "feeds which output")
        ins, outs, metadata = describe_session(ort_session, source)
        if picked is not None and Contract.from_metadata(metadata) != picked.contract:
            raise ModelFormatError(f"{source}: its edge_rnn contract differs from the one {picked.path.parent}/"
                                   "manifest.json gives for it; the manifest was edited or belongs to other files")
        metadata = metadata if contract is None else contract.to_metadata()
        io = resolve_io(ins, outs, metadata, state_map=foreign.state_map, batch_axis=foreign.batch_axis,
                        time_axis=foreign.time_axis, state_batch_axis=foreign.state_batch_axis,
                        constants=foreign.constants)
        fingerprint = _fingerprint(data, external)
        loaded = cls(ort_session, io, fingerprint, allow_nonfinite=allow_nonfinite, source=source,
                     rows_coupled=_rows_coupled(data, picked))
        loaded.variant = picked.name if picked is not None else None
        if self_test and picked is not None:
            result = run_self_test(loaded, picked.path.parent, picked.manifest, picked.name, form=form)
            raise_if_failed(result, int8=_is_int8_variant(picked))
            loaded.self_test = result
        return loaded

    @classmethod
    def _tested_within(cls, folder: Path, max_error: Any, form: str, **load: Any) -> StreamingModel:
        """The fastest variant that passes its self-test here and whose projected error is within max_error."""
        check_max_error(max_error)
        manifest = read_manifest(folder)
        golden = golden_of(folder, manifest)
        projected: dict[str, float] = {}
        for name in by_speed(manifest["variants"]):
            if number(manifest["variants"][name], "error", "max_abs") > max_error:
                projected[name] = number(manifest["variants"][name], "error", "max_abs")
                continue  # over it already where it was packaged
            m = cls.load(folder, variant=name, form=form, **load)
            result = run_self_test(m, folder, manifest, name, golden, form=form)
            projected[name] = estimate_error(result, manifest["variants"][name]) if result.ok else math.inf
            if projected[name] <= max_error:
                m.self_test = result
                return m
        shown = {k: (f"{v:.3g}" if math.isfinite(v) else "over its bound here") for k, v in projected.items()}
        raise UnsupportedError(f"max_error {max_error:g}: no variant is within it on this CPU; projected here "
                               f"{shown}")

    # --------------------------------------------------------------- properties
    @property
    def session(self) -> ort.InferenceSession:
        return self._session

    @property
    def inputs(self) -> tuple[Port, ...]:
        return self._io.inputs

    @property
    def outputs(self) -> tuple[Port, ...]:
        return self._io.outputs

    @property
    def states(self) -> tuple[StateSpec, ...]:
        return self._io.states

    @property
    def streamable(self) -> bool:
        return self._io.streamable

    @property
    def batches_streams(self) -> bool:
        """Whether ``step_batch`` puts different streams in one onnxruntime call. False for a model whose batch
        is fixed at 1, and for one whose streams would change each other's outputs in a shared call (a dynamic
        int8 variant: ``rows_coupled``): those are stepped one call per stream, each exactly as alone."""
        return self._batchable

    @property
    def contract(self) -> Contract | None:
        """The ``edge_rnn`` contract the model streams by: its file's, or the one given to :meth:`load` (a bundle's
        manifest); None for a model edge-rnn did not write, read through :class:`ForeignModel` options."""
        return self._io.contract

    @property
    def constants(self) -> Mapping[str, np.ndarray]:
        return self._io.constants

    def __repr__(self) -> str:
        return (f"<StreamingModel {self.source}: inputs {[p.name for p in self.inputs]}, "
                f"outputs {[p.name for p in self.outputs]}, states {[s.input for s in self.states]}>")

    # ------------------------------------------------------------------ streams
    def open_stream(self, initial_state: Mapping[str, np.ndarray] | None = None) -> Stream:
        """A new stream, from zeros (PyTorch's default) or from ``initial_state`` (per stream, no batch axis)."""
        state = None if initial_state is None else state_from_user(self.states, initial_state)
        return Stream(self, self.states, self._slab, state)

    def restore(self, snapshot: bytes) -> Stream:
        """A stream resumed from :meth:`Stream.snapshot`; refused if the snapshot is of another model."""
        state, steps = decode_snapshot(snapshot, self.fingerprint, self.states)
        return Stream(self, self.states, self._slab, state, steps=steps)

    # ------------------------------------------------------------------ stepping
    def _prepare(self, x: Any, *, check_finite: bool = True) -> tuple[Arrays, int]:
        """Validate one stream's chunk; returns the arrays (no batch axis) and the number of time steps."""
        if type(x) is np.ndarray or not isinstance(x, Mapping):
            if self._single_input is None:
                raise ShapeError(f"expected a dict with inputs {[p.name for p in self.inputs]}, got {type(x).__name__}")
            x = {self._single_input: x}
        elif x.keys() != self._input_names:
            raise ShapeError(f"expected inputs {sorted(self._input_names)}, got {sorted(x)}")
        out: Arrays = {}
        steps: int | None = None
        for p, rank, fixed, t in self._in_checks:
            a = _checked_array(p, x[p.name], rank, fixed)
            n = 1 if t is None else a.shape[t]
            if steps is not None and n != steps:
                raise ShapeError(f"{p.name}: expected {steps} time steps like the other inputs, got {n}")
            steps = n
            if check_finite:
                self._check_values(p.name, a)
            out[p.name] = a
        return out, steps or 1

    def check(self, stream: Stream, x: Any) -> int:
        """Validate one chunk for ``stream`` without stepping it; returns the chunk's number of time steps.

        Raises exactly what :meth:`step` would raise for this chunk and stream
        (shape, dtype, NaN/Inf, a closed stream or one of another model), so a
        server can refuse a bad chunk before it joins a batch.
        """
        if not isinstance(stream, Stream):
            raise StreamError(f"expected a Stream from this model's open_stream(), got {type(stream).__name__}")
        _, n = self._prepare(x)
        with stream.lock:
            stream.check_usable(self)
        return n

    def _check_values(self, name: str, a: np.ndarray) -> None:
        """NaN or Inf in a float input (unless allow_nonfinite), or an integer input outside its range: refused."""
        if a.dtype.kind == "f":
            self._check_finite(name, a)
        elif name in self._ranges:
            low, high = self._ranges[name]
            smallest, largest = int(a.min()), int(a.max())
            if smallest < low or largest > high:
                bad = smallest if smallest < low else largest
                raise ShapeError(f"{name}: expected values in [{low}, {high}] (the rows of the table it indexes), "
                                 f"got {bad}")

    def _values_ok(self, name: str, a: np.ndarray) -> bool:
        try:
            self._check_values(name, a)
        except (NonFiniteError, ShapeError):
            return False
        return True

    def _check_finite(self, name: str, a: np.ndarray) -> None:
        # One sum of squares finds any NaN or Inf (both propagate into it); only one that overflowed
        # from finite values needs the element-wise look. np.vdot is not a ufunc: no floating-point
        # warning to silence (np.errstate costs more than the dot on a small batch). One step of one
        # stream (up to 128 values) is summed in Python, ~4 us less on the demo LSTM's step.
        if self.allow_nonfinite:
            return
        flat = a.reshape(-1)
        total = sum(flat.tolist()) if flat.size <= 128 else float(np.vdot(flat, flat))
        if not math.isfinite(total) and not np.isfinite(a).all():
            raise NonFiniteError(
                f"{name}: expected finite values, got NaN or Inf (load with allow_nonfinite=True, or "
                "--allow-nonfinite on the command line, to let them in)"
            )

    def _run(self, feeds: Arrays) -> list[np.ndarray]:
        """One onnxruntime call. Any failure raises InferenceError, except an execution-provider failure, which
        goes to onnxruntime's own public run: it falls back to the next provider, as onnxruntime does."""
        feeds.update(self._io.constants)
        try:
            if self._fast:
                try:
                    return self._session._sess.run(self._out_names, feeds, None)
                except _EP_FAIL:
                    pass
            return self._session.run(self._out_names, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's Fail, InvalidArgument, RuntimeException, ...
            first = message_line(e)
            raise InferenceError(f"onnxruntime failed to run {self.source} ({type(e).__name__}: {first}); "
                                 "no stream in this call advanced") from e

    def step(self, stream: Stream, x: Any) -> Arrays:
        """Feed one chunk (array, or dict for several inputs; no batch axis) and advance the stream.

        Returns the outputs without the batch axis. On any error the stream's
        state is left exactly as it was.
        """
        if type(stream) is not Stream:
            raise StreamError(f"expected a Stream from this model's open_stream(), got {type(stream).__name__}")
        if type(x) is np.ndarray and self._single_input is not None and (x.shape, x.dtype) in self._valid_layouts:
            n = self._valid_layouts[x.shape, x.dtype]  # this layout passed every shape check before
            self._check_values(self._single_input, x)
            feeds = {self._single_input: x[self._add_batch[self._single_input]]}
        else:
            xs, n = self._prepare(x)
            feeds = {name: a[self._add_batch[name]] for name, a in xs.items()}
            if self._single_input is not None and len(self._valid_layouts) < 64:
                a = xs[self._single_input]
                self._valid_layouts[a.shape, a.dtype] = n
        with stream.lock:
            if not stream.usable_fast(self, self._io.streamable):
                stream.check_usable(self)  # raises the right error
            row = stream._row
            feeds.update(self._slab.feeds(row))
            res = self._run(feeds)
            states = res[self._n_out:]
            wrong = self._slab.mismatch(states, 1)
            if wrong:
                raise InferenceError(f"onnxruntime ran {self.source} but returned a {wrong}; the stream did not "
                                     "advance")
            self._slab.advance(row, states, n)
        return {name: res[i][drop] for i, (name, drop) in enumerate(self._out_drop)}

