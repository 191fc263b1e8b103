"""StreamingModel: one loaded ONNX model shared by many streams."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_rnn.contract import Contract, StateSpec
from edge_rnn.errors import EdgeRnnError, InferenceError, ModelFormatError, NonFiniteError, ShapeError, StreamError
from edge_rnn.runtime._ports import ModelIO, Port, resolve_io
from edge_rnn.runtime._snapshot import decode_snapshot, stream_shape
from edge_rnn.runtime._stream import Stream, state_from_user

__all__ = ["StreamingModel", "OPT_LEVELS"]

Arrays = dict[str, np.ndarray]
_EP_FAIL = getattr(getattr(ort.capi, "onnxruntime_pybind11_state", None), "EPFail", ())
# The one map of onnxruntime's optimisation levels by name (the parity harness uses it too).
OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _session_options(given: ort.SessionOptions | None, threads: int | None,
                     optimization: str | None) -> ort.SessionOptions:
    """The caller's options untouched (onnxruntime's cannot be copied), or new ones with threads and level set."""
    if given is not None:
        if threads is not None or optimization is not None:
            raise ValueError("session_options given: set threads and the optimisation level on it, not also as "
                             "threads= or optimization= (edge-rnn never changes the caller's SessionOptions)")
        return given
    optimization = "default" if optimization is None else optimization
    if optimization not in OPT_LEVELS:
        raise ValueError(f"optimization: expected one of {sorted(OPT_LEVELS)}, got {optimization!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[optimization]
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


def _checked_array(p: Port, a: Any, rank: int, fixed: list[tuple[int, int]]) -> np.ndarray:
    """One input of one stream's chunk as an array of the port's dtype, rank and fixed sizes, not empty."""
    if type(a) is not np.ndarray:
        try:
            a = np.asarray(a, dtype=p.dtype)
        except (ValueError, TypeError) as e:
            raise ShapeError(f"{p.name}: expected an array of shape {p.describe()}, got {type(a).__name__} "
                             f"that numpy cannot convert ({e})") from None
    shape = a.shape
    if a.dtype != p.dtype or len(shape) != rank or any(shape[i] != d for i, d in fixed):
        raise ShapeError(f"{p.name}: expected shape {p.describe()}, got {shape} {a.dtype}")
    if a.size == 0:
        raise ShapeError(f"{p.name}: expected at least one time step, got an empty chunk of shape {shape}")
    return a


def _batch_first(rank: int, axis: int) -> tuple[int, ...]:
    return (axis, *(i for i in range(rank) if i != axis))


class _StateBatch:
    """The state outputs of one step_batch call, with their batch axis, shared by its streams.

    When the next call steps the same streams in the same order, these arrays
    are fed as they are, instead of gathering each stream's state again; a
    stream's own view is cut from ``batch_first`` only when something asks.
    """

    __slots__ = ("arrays", "batch_first", "size")

    def __init__(self, arrays: Arrays, batch_first: Arrays, size: int):
        self.arrays = arrays
        self.batch_first = batch_first
        self.size = size


class StreamingModel:
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
                 allow_nonfinite: bool = False, source: str = "<bytes>"):
        self._session = session
        self._io = io
        self.fingerprint = fingerprint
        self.allow_nonfinite = allow_nonfinite
        self.source = source
        self._out_names = [p.name for p in io.outputs] + [s.output for s in io.states]
        self._n_out = len(io.outputs)
        # Every feed is validated here already, so the binding's run skips the public wrapper's second
        # check of names and ownership (~5 us a call); any error goes through the public run, which
        # reports it or falls back to another execution provider as onnxruntime does.
        self._fast_run = getattr(getattr(session, "_sess", None), "run", None)
        self._out_port_names = [p.name for p in io.outputs]
        self._out_drop = [(p.name, (slice(None),) * p.batch_axis + (0,)) for p in io.outputs]
        self._state_names = [s.input for s in io.states]
        self._single_input = io.inputs[0].name if len(io.inputs) == 1 else None
        self._input_names = {p.name for p in io.inputs}
        self._valid_layouts: dict[tuple, int] = {}  # (shape, dtype) of chunks that passed _prepare -> steps
        # a third-party model may fix its batch size at 1: then streams cannot share a call
        self._batchable = all(p.shape[p.batch_axis] is None for p in (*io.inputs, *io.outputs))
        # per input: (port, per-stream shape, per-stream time axis); hot-path look-ups precomputed
        self._in_checks = [
            (p, len(p.stream_shape), [(i, d) for i, d in enumerate(p.stream_shape) if d is not None],
             p.stream_time_axis)
            for p in io.inputs
        ]
        # index tuples that add (x[add]) or drop (y[drop]) the batch axis as views, without copies
        self._add_batch = {p.name: (slice(None),) * p.batch_axis + (None,) for p in io.inputs}
        self._drop_batch = [(slice(None),) * p.batch_axis + (0,) for p in io.outputs]
        # transposes that bring the batch axis first, to split a batch into per-stream views
        self._out_batch_first = [_batch_first(len(p.shape), p.batch_axis) for p in io.outputs]
        self._state_batch_first = [_batch_first(len(s.shape), s.batch_axis) for s in io.states]
        self._state_add_batch = [(s.input, (slice(None),) * s.batch_axis + (None,)) for s in io.states]
        self._state_drop_batch = [(s.input, (slice(None),) * s.batch_axis + (0,)) for s in io.states]

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | bytes,
        *,
        providers: Sequence[str | tuple[str, dict]] | None = None,
        threads: int | None = None,
        optimization: str | None = None,
        state_map: Mapping[str, str] | None = None,
        batch_axis: int = 0,
        time_axis: int | None = None,
        state_batch_axis: int | None = None,
        constants: Mapping[str, Any] | None = None,
        allow_nonfinite: bool = False,
        session_options: ort.SessionOptions | None = None,
        contract: Contract | None = None,
    ) -> StreamingModel:
        """Load an ONNX model (a path or its bytes).

        A model edge-rnn exported describes its states in its ``edge_rnn``
        metadata. For any other stateful model, ``state_map`` maps each state
        input to the output that feeds it (common pairs such as ``h0``/``hn``,
        ``X_in``/``X_out``, ``past_X``/``present_X`` and ``state``/``stateN``
        are found without it); ``batch_axis`` and ``time_axis`` say where the
        batch and time axes of the data inputs and outputs are (``time_axis``
        None: one step per call), ``state_batch_axis`` the states' batch axis
        when it is not the one dynamic dimension. ``constants`` are fed on
        every call, e.g. ``{"sr": np.array(16000)}``. ``threads`` sets
        onnxruntime's intra-op threads (None: its default); ``optimization``
        its graph optimisation level (``"default"``: all).
        ``session_options`` is used as given and never changed: set threads
        and the optimisation level on it, not here as well.
        ``contract`` describes the states when the file carries none (a
        bundle's manifest holds it); it takes the place of the metadata.
        """
        if isinstance(model, (bytes, bytearray)):
            data, source = bytes(model), "<bytes>"
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelFormatError(f"{path}: no such file")
            data, source = path.read_bytes(), str(path)
        so = _session_options(session_options, threads, optimization)
        try:
            session = ort.InferenceSession(data, so, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(f"{source}: onnxruntime could not load it: {first}") from None
        ins = {i.name: (tuple(i.shape), i.type) for i in session.get_inputs()}
        outs = {o.name: (tuple(o.shape), o.type) for o in session.get_outputs()}
        metadata = session.get_modelmeta().custom_metadata_map if contract is None else contract.to_metadata()
        io = resolve_io(
            ins, outs, metadata, state_map=state_map, batch_axis=batch_axis,
            time_axis=time_axis, state_batch_axis=state_batch_axis, constants=constants,
        )
        fingerprint = hashlib.sha256(data).hexdigest()[:32]
        return cls(session, io, fingerprint, allow_nonfinite=allow_nonfinite, source=source)

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
    def constants(self) -> Mapping[str, np.ndarray]:
        return self._io.constants

    def __repr__(self) -> str:
        return (f"<StreamingModel {self.source}: inputs {[p.name for p in self.inputs]}, "
                f"outputs {[p.name for p in self.outputs]}, states {[s.input for s in self.states]}>")

    # ------------------------------------------------------------------ streams
    def open_stream(self, initial_state: Mapping[str, np.ndarray] | None = None) -> Stream:
        """A new stream, from zeros (PyTorch's default) or from ``initial_state`` (per stream, no batch axis)."""
        if initial_state is None:
            state = {s.input: np.zeros(stream_shape(s), np.dtype(s.dtype)) for s in self.states}
        else:
            state = state_from_user(self.states, initial_state)
        return Stream(self, self.states, state)

    def restore(self, snapshot: bytes) -> Stream:
        """A stream resumed from :meth:`Stream.snapshot`; refused if the snapshot is of another model."""
        state, steps = decode_snapshot(snapshot, self.fingerprint, self.states)
        return Stream(self, self.states, state, steps=steps)

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
                self._check_finite(p.name, a)
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

    def _check_finite(self, name: str, a: np.ndarray) -> None:
        # One sum finds any NaN or Inf (both propagate into it); only a sum that overflowed from
        # finite values needs the element-wise look. Measured on the demo LSTM: a numpy reduction
        # right before onnxruntime's call slows that call by ~13 us, a Python sum over a small chunk
        # by ~4 us, so small chunks (one to a few steps) are summed in Python.
        if self.allow_nonfinite or a.dtype.kind != "f":
            return
        flat = a.reshape(-1)
        total = sum(flat.tolist()) if flat.size <= 1024 else float(flat @ flat)
        if not math.isfinite(total) and not np.isfinite(a).all():
            raise NonFiniteError(
                f"{name}: expected finite values, got NaN or Inf (load with allow_nonfinite=True to let them in)"
            )

    def _run(self, feeds: Arrays) -> list[np.ndarray]:
        """One onnxruntime call. Run once: only an execution-provider failure is retried, by onnxruntime's
        own public path (it falls back to the next provider); any other failure raises InferenceError."""
        feeds.update(self._io.constants)
        try:
            if self._fast_run is not None:
                try:
                    return self._fast_run(self._out_names, feeds, None)
                except _EP_FAIL:
                    pass  # the public run below retries on the fallback providers, as onnxruntime does
            return self._session.run(self._out_names, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's Fail, InvalidArgument, RuntimeException, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise InferenceError(f"onnxruntime failed to run {self.source} ({type(e).__name__}: {first}); "
                                 "no stream advanced") from None

    def step(self, stream: Stream, x: Any) -> Arrays:
        """Feed one chunk (array, or dict for several inputs; no batch axis) and advance the stream.

        Returns the outputs without the batch axis. On any error the stream's
        state is left exactly as it was.
        """
        if type(x) is np.ndarray and self._single_input is not None and (x.shape, x.dtype) in self._valid_layouts:
            n = self._valid_layouts[x.shape, x.dtype]  # this layout passed every shape check before
            self._check_finite(self._single_input, x)
            feeds = {self._single_input: x[self._add_batch[self._single_input]]}
        else:
            xs, n = self._prepare(x)
            feeds = {name: a[self._add_batch[name]] for name, a in xs.items()}
            if self._single_input is not None and len(self._valid_layouts) < 64:
                a = xs[self._single_input]
                self._valid_layouts[a.shape, a.dtype] = n
        with stream.lock:
            if not stream.usable_fast(self):
                stream.check_usable(self)  # raises the right error
            feeds.update(stream.single_feeds(self._state_add_batch))
            res = self._run(feeds)
            n_out = self._n_out
            # kept as onnxruntime returned them, batch axis included: fed as they are next call
            stream.advance_alone({name: res[n_out + i] for i, name in enumerate(self._state_names)},
                                 self._state_drop_batch, n)
        return {name: res[i][drop] for i, (name, drop) in enumerate(self._out_drop)}

    def _step_isolated(self, items: Sequence[tuple[Stream, Any]]) -> list[Arrays | EdgeRnnError]:
        """step_batch(on_error="isolate"): each item's error in its own slot; the valid items still advance."""
        results: list[Arrays | EdgeRnnError | None] = [None] * len(items)
        valid: list[int] = []
        seen: set[int] = set()
        for i, item in enumerate(items):
            try:
                if not isinstance(item, tuple) or len(item) != 2:
                    raise StreamError(f"step_batch: item {i}: expected a (stream, chunk) pair, got {item!r:.80}")
                if id(item[0]) in seen:
                    raise StreamError("step_batch: expected each stream at most once per call, got one twice")
                self.check(*item)
                seen.add(id(item[0]))
                valid.append(i)
            except EdgeRnnError as e:
                results[i] = e
        if valid and self._batchable:
            try:  # atomic on a batchable model: on failure no stream advanced, and each is stepped alone below
                for i, out in zip(valid, self.step_batch([items[i] for i in valid])):
                    results[i] = out
                valid = []
            except Exception:  # noqa: BLE001 - whatever failed, it is found again item by item
                pass
        for i in valid:
            try:
                results[i] = self.step(*items[i])
            except EdgeRnnError as e:
                results[i] = e
            except Exception as e:  # noqa: BLE001 - onnxruntime's own error types: this item's error
                results[i] = EdgeRnnError(f"item {i}: onnxruntime failed ({type(e).__name__}: {e})")
        return results  # type: ignore[return-value]

    def _step_each(self, items: Sequence[tuple[Stream, Any]]) -> list[Arrays]:
        """step_batch for a model whose batch size is fixed at 1: all chunks checked first, then one call each."""
        if len({id(s) for s, _ in items}) != len(items):
            raise StreamError("step_batch: expected each stream at most once per call, got one twice")
        for s, x in items:
            self._prepare(x)
            with s.lock:
                s.check_usable(self)
        return [self.step(s, x) for s, x in items]

    def step_batch(self, items: Sequence[tuple[Stream, Any]], *, on_error: str = "raise"
                   ) -> list[Arrays | EdgeRnnError]:
        """Step many streams; chunks of equal length share one onnxruntime call.

        Chunks of different lengths are grouped by length (one call per
        length), so no padding ever reaches a state. Results equal stepping
        each stream alone.

        ``on_error="raise"`` (the default): every chunk and stream is checked
        first, and the first bad one raises with no stream advanced. The
        onnxruntime calls then run, and states are set only after all of them
        succeeded, so a failing call advances nothing either; except on a model
        whose batch size is fixed at 1, where streams are stepped one call each
        and a call failing midway leaves the streams before it advanced.

        ``on_error="isolate"``: a bad chunk, a closed stream or a failing call
        gives its item the :class:`~edge_rnn.errors.EdgeRnnError` in its slot
        of the result, and every other stream still advances, so one client's
        bad input cannot stop the others.
        """
        if on_error == "isolate":
            return self._step_isolated(items)
        if on_error != "raise":
            raise ValueError(f"on_error: expected 'raise' or 'isolate', got {on_error!r}")
        for i, item in enumerate(items):  # before any lock is taken
            if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], Stream):
                raise StreamError(f"step_batch: item {i}: expected a (stream, chunk) pair, got {item!r:.80}")
        if len(items) == 1:  # nothing to batch: the single-stream path has less to do
            (stream, x), = items
            return [self.step(stream, x)]
        if not self._batchable:
            return self._step_each(items)
        chunks, steps, streams = self._collect(items)
        with self._locked(streams):
            for s in streams:
                s.check_usable(self)
            groups: dict[int, list[int]] = {}
            for i, n in enumerate(steps):
                groups.setdefault(n, []).append(i)
            results: list[Arrays] = [{}] * len(streams)
            slots: list[tuple[_StateBatch, int]] = [None] * len(streams)  # type: ignore[list-item]
            for idxs in groups.values():  # every call first; states are set only when all succeeded
                batch = self._run_group(idxs, chunks, streams, results)
                for j, i in enumerate(idxs):
                    slots[i] = (batch, j)
            for s, (batch, j), n in zip(streams, slots, steps):
                s.advance_in_batch(batch, j, n)
            return results

    def _collect(self, items: Sequence[tuple[Stream, Any]]) -> tuple[dict[str, list[np.ndarray]], list[int],
                                                                      list[Stream]]:
        """Every chunk validated (each distinct layout once), per input; the steps and streams, in item order."""
        chunks: dict[str, list[np.ndarray]] = {p.name: [] for p in self.inputs}
        steps: list[int] = []
        streams: list[Stream] = []
        seen: set[int] = set()
        single = self._single_input
        checked: dict[tuple, int] = {}  # (shape, dtype) -> steps
        for stream, x in items:
            if id(stream) in seen:
                raise StreamError("step_batch: expected each stream at most once per call, got one twice")
            seen.add(id(stream))
            streams.append(stream)
            a = x.get(single) if type(x) is dict and len(x) == 1 else x
            if single is not None and type(a) is np.ndarray:
                key = (a.shape, a.dtype)
                n = checked.get(key)
                if n is None:
                    n = checked[key] = self._prepare(a, check_finite=False)[1]
                chunks[single].append(a)
            else:
                d, n = self._prepare(x, check_finite=False)
                for k, v in d.items():
                    chunks[k].append(v)
            steps.append(n)
        return chunks, steps, streams

    @contextmanager
    def _locked(self, streams: list[Stream]) -> Iterator[None]:
        """Hold every stream's lock, taken in one fixed order (no deadlock between concurrent batches)."""
        with ExitStack() as stack:
            for s in sorted(streams, key=id):
                stack.enter_context(s.lock)
            yield

    def _run_group(self, idxs: list[int], chunks: dict[str, list[np.ndarray]], streams: list[Stream],
                   results: list[Arrays]) -> _StateBatch:
        """One onnxruntime call for the items ``idxs`` (chunks of one length); fills their results."""
        feeds = {}
        for p in self.inputs:
            add, parts = self._add_batch[p.name], chunks[p.name]
            feeds[p.name] = np.concatenate([parts[i][add] for i in idxs], axis=p.batch_axis)
            try:  # once over the stacked chunk; on failure, name the item
                self._check_finite(p.name, feeds[p.name])
            except NonFiniteError as e:
                bad = next(i for i in idxs if not np.isfinite(parts[i]).all())
                raise NonFiniteError(f"item {bad} of the batch: {e}") from None
        feeds.update(self._group_states([streams[i] for i in idxs]))
        res = self._run(feeds)
        # per-stream views into the batched outputs (iterating the batch axis): no copies
        outs = [res[k].transpose(perm) for k, perm in enumerate(self._out_batch_first)]
        for i, *vals in zip(idxs, *outs):
            results[i] = dict(zip(self._out_port_names, vals))
        n_out = self._n_out
        return _StateBatch(
            {name: res[n_out + k] for k, name in enumerate(self._state_names)},
            {name: res[n_out + k].transpose(perm)
             for k, (name, perm) in enumerate(zip(self._state_names, self._state_batch_first))},
            len(idxs),
        )

    def _group_states(self, group: list[Stream]) -> Arrays:
        """The group's states with their batch axis: the last call's outputs when it stepped the same streams in
        the same order, else each stream's state stacked."""
        last = group[0].batch_slot
        if last is not None and last[0].size == len(group) and all(
            (slot := s.batch_slot) is not None and slot[0] is last[0] and slot[1] == j for j, s in enumerate(group)
        ):
            return last[0].arrays
        return {name: np.concatenate([s.arrays()[name][add] for s in group], axis=st.batch_axis)
                for (name, add), st in zip(self._state_add_batch, self.states)}
