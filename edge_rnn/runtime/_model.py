"""StreamingModel: one loaded ONNX model shared by many streams."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_rnn.contract import StateSpec
from edge_rnn.errors import ModelFormatError, NonFiniteError, ShapeError, StreamError
from edge_rnn.runtime._ports import ModelIO, Port, resolve_io
from edge_rnn.runtime._stream import Stream, decode_snapshot, state_from_user

__all__ = ["StreamingModel"]

Arrays = dict[str, np.ndarray]
_OPT = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


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
        self._single_input = io.inputs[0].name if len(io.inputs) == 1 else None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | bytes,
        *,
        providers: Sequence[str | tuple[str, dict]] | None = None,
        threads: int | None = None,
        optimization: str = "default",
        state_map: Mapping[str, str] | None = None,
        batch_axis: int = 0,
        time_axis: int | None = None,
        state_batch_axis: int | None = None,
        constants: Mapping[str, Any] | None = None,
        allow_nonfinite: bool = False,
        session_options: ort.SessionOptions | None = None,
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
        onnxruntime's intra-op threads (None: its default).
        """
        if isinstance(model, (bytes, bytearray)):
            data, source = bytes(model), "<bytes>"
        else:
            path = Path(model)
            if not path.is_file():
                raise ModelFormatError(f"{path}: no such file")
            data, source = path.read_bytes(), str(path)
        if optimization not in _OPT:
            raise ValueError(f"optimization: expected one of {sorted(_OPT)}, got {optimization!r}")
        so = session_options or ort.SessionOptions()
        so.graph_optimization_level = _OPT[optimization]
        if threads is not None:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(data, so, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(f"{source}: onnxruntime could not load it: {first}") from None
        ins = {i.name: (tuple(i.shape), i.type) for i in session.get_inputs()}
        outs = {o.name: (tuple(o.shape), o.type) for o in session.get_outputs()}
        io = resolve_io(
            ins, outs, session.get_modelmeta().custom_metadata_map, state_map=state_map, batch_axis=batch_axis,
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
    def _zero_state(self) -> Arrays:
        return {s.input: np.zeros(s.concrete_shape(1), np.dtype(s.dtype)) for s in self.states}

    def open_stream(self, initial_state: Mapping[str, np.ndarray] | None = None) -> Stream:
        """A new stream, from zeros (PyTorch's default) or from ``initial_state`` (per stream, no batch axis)."""
        state = self._zero_state() if initial_state is None else state_from_user(self.states, initial_state)
        return Stream(self, state)

    def restore(self, snapshot: bytes) -> Stream:
        """A stream resumed from :meth:`Stream.snapshot`; refused if the snapshot is of another model."""
        state, steps = decode_snapshot(snapshot, self.fingerprint, self.states)
        stream = Stream(self, state)
        stream.steps = steps
        return stream

    # ------------------------------------------------------------------ stepping
    def _prepare(self, x: Any) -> tuple[Arrays, int]:
        """Validate one stream's chunk; returns the arrays (no batch axis) and the number of time steps."""
        if not isinstance(x, Mapping):
            if self._single_input is None:
                raise ShapeError(f"expected a dict with inputs {[p.name for p in self.inputs]}, got {type(x).__name__}")
            x = {self._single_input: x}
        names = {p.name for p in self.inputs}
        if set(x) != names:
            raise ShapeError(f"expected inputs {sorted(names)}, got {sorted(x)}")
        out: Arrays = {}
        steps: int | None = None
        for p in self.inputs:
            a = x[p.name]
            if not isinstance(a, np.ndarray):
                a = np.asarray(a, dtype=p.dtype)
            want = p.stream_shape
            bad = a.dtype != p.dtype or a.ndim != len(want) or any(
                w is not None and w != g for w, g in zip(want, a.shape)
            )
            if bad:
                raise ShapeError(f"{p.name}: expected shape {p.describe()}, got {a.shape} {a.dtype}")
            if a.size == 0:
                raise ShapeError(f"{p.name}: expected at least one time step, got an empty chunk of shape {a.shape}")
            t = p.stream_time_axis
            n = 1 if t is None else a.shape[t]
            if steps is not None and n != steps:
                raise ShapeError(f"{p.name}: expected {steps} time steps like the other inputs, got {n}")
            steps = n
            if not self.allow_nonfinite and a.dtype.kind == "f" and not np.isfinite(a).all():
                raise NonFiniteError(
                    f"{p.name}: expected finite values, got NaN or Inf (load with allow_nonfinite=True to let them in)"
                )
            out[p.name] = a
        return out, steps or 1

    def _check_usable(self, stream: Stream) -> None:
        if stream._model is not self:
            raise StreamError("stream belongs to another model: expected a stream from this model's open_stream()")
        stream._check_open()
        if not self.streamable and stream.steps:
            raise StreamError(
                "model is not streamable (a bidirectional layer needs the whole sequence): expected one step call "
                "per sequence; call stream.reset() before the next sequence"
            )

    def _run(self, feeds: Arrays) -> list[np.ndarray]:
        feeds.update(self._io.constants)
        return self._session.run(self._out_names, feeds)

    def step(self, stream: Stream, x: Any) -> Arrays:
        """Feed one chunk (array, or dict for several inputs; no batch axis) and advance the stream.

        Returns the outputs without the batch axis. On any error the stream's
        state is left exactly as it was.
        """
        xs, n = self._prepare(x)
        with stream._lock:
            self._check_usable(stream)
            feeds = {p.name: np.expand_dims(xs[p.name], p.batch_axis) for p in self.inputs}
            feeds.update(stream._state)
            res = self._run(feeds)
            stream._state = {s.input: res[self._n_out + i] for i, s in enumerate(self.states)}
            stream.steps += n
        return {p.name: np.take(res[i], 0, axis=p.batch_axis) if res[i].shape[p.batch_axis] == 1 else res[i]
                for i, p in enumerate(self.outputs)}

    def step_batch(self, items: Sequence[tuple[Stream, Any]]) -> list[Arrays]:
        """Step many streams; chunks of equal length share one onnxruntime call.

        Chunks of different lengths are grouped by length (one call per
        length), so no padding ever reaches a state. Results equal stepping
        each stream alone. Nothing advances unless every chunk is valid and
        every call succeeds.
        """
        prepared = []
        seen: set[int] = set()
        for stream, x in items:
            if id(stream) in seen:
                raise StreamError("step_batch: expected each stream at most once per call, got one twice")
            seen.add(id(stream))
            prepared.append((stream, *self._prepare(x)))
        streams = sorted({id(s): s for s, _, _ in prepared}.values(), key=id)  # fixed order: no deadlock
        for s in streams:
            s._lock.acquire()
        try:
            for s, _, _ in prepared:
                self._check_usable(s)
            groups: dict[int, list[int]] = {}
            for i, (_, _, n) in enumerate(prepared):
                groups.setdefault(n, []).append(i)
            results: list[Arrays] = [{} for _ in prepared]
            new_states: list[Arrays] = [{} for _ in prepared]
            for idxs in groups.values():
                feeds = {
                    p.name: np.concatenate([np.expand_dims(prepared[i][1][p.name], p.batch_axis) for i in idxs],
                                           axis=p.batch_axis)
                    for p in self.inputs
                }
                for s in self.states:
                    feeds[s.input] = np.concatenate([prepared[i][0]._state[s.input] for i in idxs], axis=s.batch_axis)
                res = self._run(feeds)
                for j, i in enumerate(idxs):
                    results[i] = {p.name: np.take(res[k], j, axis=p.batch_axis) for k, p in enumerate(self.outputs)}
                    new_states[i] = {
                        s.input: np.take(res[self._n_out + k], [j], axis=s.batch_axis)
                        for k, s in enumerate(self.states)
                    }
            for (s, _, n), st in zip(prepared, new_states):
                s._state = st
                s.steps += n
            return results
        finally:
            for s in streams:
                s._lock.release()
