"""A stream: one sequence's recurrent state, owned by the caller, stepped by a shared model."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from edge_rnn.contract import StateSpec
from edge_rnn.errors import NonFiniteError, ShapeError, StateError, StreamError
from edge_rnn.runtime._snapshot import encode_snapshot, stream_shape


class StreamingModel(Protocol):
    """What a stream needs of its model (the real one is :class:`edge_rnn.runtime.StreamingModel`)."""

    fingerprint: str

    @property
    def streamable(self) -> bool: ...

__all__ = ["Stream", "stream_shape", "state_from_user"]

class Stream:
    """The recurrent state of one sequence. Create it with :meth:`StreamingModel.open_stream`.

    The state is held per stream, without the batch axis, like everything a
    stream passes or gets back. Steps on one stream are serialised by its lock.

    The stream is the only owner of its state. For speed the state has three
    forms, and whichever was set last is the truth: a per-stream dict (after
    open, reset or restore), the state outputs onnxruntime returned for this
    stream alone (after ``step``, batch axis of 1, fed back as they are), or a
    slot in a batch's outputs (after ``step_batch``). The per-stream dict is
    cut from the others only when something asks for it. The model changes
    the state only through the methods below marked "for the model".
    """

    def __init__(self, model: StreamingModel, specs: tuple[StateSpec, ...], state: dict[str, np.ndarray], *,
                 steps: int = 0):
        self._model = model
        self._specs = specs
        self._dict: dict[str, np.ndarray] | None = state  # name -> array without the batch axis
        # (batch outputs, index) after step_batch, else None; read by the model, set only by the methods below
        self.batch_slot: tuple[Any, int] | None = None
        self._fed: dict[str, np.ndarray] | None = None  # after step: onnxruntime's outputs, batch axis of 1
        self._drop: list = []  # (name, index) that drops the batch axis of _fed
        self.lock = threading.Lock()  # held while a step on this stream runs
        self._closed = False
        self.steps = steps  # time steps consumed since open/reset

    # ------------------------------------------------------------------ for the model
    def arrays(self) -> dict[str, np.ndarray]:
        """The current state, per stream (no batch axis), as views; the caller holds the lock."""
        if self._dict is None:
            if self._fed is not None:
                self._dict = {name: self._fed[name][drop] for name, drop in self._drop}
            else:
                batch, j = self.batch_slot  # type: ignore[misc]
                self._dict = {name: a[j] for name, a in batch.batch_first.items()}
        return self._dict

    def single_feeds(self, add_batch: list[tuple[str, tuple]]) -> dict[str, np.ndarray]:
        """The state as feeds with a batch axis of 1: onnxruntime's own outputs when the last step was alone."""
        if self._fed is not None:
            return self._fed
        state = self.arrays()
        return {name: state[name][add] for name, add in add_batch}

    def advance_alone(self, fed: dict[str, np.ndarray], drop: list, steps: int) -> None:
        """After a step on this stream alone: its new state is onnxruntime's outputs ``fed``."""
        self._fed, self._drop = fed, drop
        self._dict = self.batch_slot = None
        self.steps += steps

    def advance_in_batch(self, batch: Any, index: int, steps: int) -> None:
        """After a step_batch call: its new state is slot ``index`` of that call's outputs."""
        self.batch_slot = (batch, index)
        self._dict = self._fed = None
        self.steps += steps

    def check_usable(self, model: StreamingModel) -> None:
        """Raise unless ``model`` may step this stream now (its own model, open, streamable or fresh)."""
        if self._model is not model:
            raise StreamError("stream belongs to another model: expected a stream from this model's open_stream()")
        self._check_open()
        if self.steps and not model.streamable:
            raise StreamError(
                "model is not streamable (a bidirectional layer needs the whole sequence): expected one step call "
                "per sequence; call stream.reset() before the next sequence"
            )

    def usable_fast(self, model: StreamingModel, streamable: bool) -> bool:
        """The common case of :meth:`check_usable` in one test, for the hot path (``streamable``: the model's)."""
        return self._model is model and not self._closed and (streamable or not self.steps)

    # ------------------------------------------------------------------ for the user
    @property
    def model(self) -> StreamingModel:
        return self._model

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> dict[str, np.ndarray]:
        """State input name -> a copy of the current state, without the batch axis."""
        with self.lock:
            self._check_open()
            return {k: v.copy() for k, v in self.arrays().items()}

    def reset(self) -> None:
        """Back to the zero state, PyTorch's default initial state."""
        with self.lock:
            self._check_open()
            self._set({s.input: np.zeros(stream_shape(s), np.dtype(s.dtype)) for s in self._specs})
            self.steps = 0

    def close(self) -> None:
        """Release the state; any later step on this stream raises :class:`StreamError`."""
        with self.lock:
            self._closed = True
            self._set({})

    def snapshot(self) -> bytes:
        """The state as bytes; :meth:`StreamingModel.restore` resumes it bit for bit."""
        with self.lock:
            self._check_open()
            return encode_snapshot(self._model.fingerprint, self._specs, self.arrays(), self.steps)

    def _set(self, state: dict[str, np.ndarray]) -> None:
        self._dict = state
        self.batch_slot = self._fed = None

    def _check_open(self) -> None:
        if self._closed:
            raise StreamError("stream is closed: expected an open stream, open a new one with model.open_stream()")

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Stream {'closed' if self._closed else 'open'}, {self.steps} steps>"


def state_from_user(states: tuple[StateSpec, ...], given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate a per-stream state (no batch axis) and copy it."""
    if not isinstance(given, Mapping):
        raise StateError(f"initial_state: expected a mapping of state name -> array, got {type(given).__name__}")
    names = {s.input for s in states}
    unknown = sorted(set(given) - names)
    if unknown:
        raise StateError(f"initial_state: unknown state {unknown}, expected names in {sorted(names)}")
    out = {}
    for s in states:
        want = stream_shape(s)
        if s.input not in given:
            raise StateError(f"initial_state: missing state {s.input!r} of shape {want}")
        a = given[s.input]
        if type(a) is not np.ndarray:  # a nested list, as step takes one
            try:
                a = np.asarray(a, dtype=np.dtype(s.dtype))
            except (ValueError, TypeError, OverflowError) as e:
                raise ShapeError(f"initial_state {s.input!r}: expected an array of shape {want} {s.dtype}, got "
                                 f"{type(given[s.input]).__name__} that numpy cannot convert ({e})") from None
        if a.shape != want or a.dtype != np.dtype(s.dtype):
            raise ShapeError(
                f"initial_state {s.input!r}: expected shape {want} {s.dtype}, got {a.shape} {a.dtype}"
            )
        if a.dtype.kind == "f" and not np.isfinite(a).all():  # step refuses them too
            raise NonFiniteError(f"initial_state {s.input!r}: expected finite values, got NaN or Inf")
        out[s.input] = a.copy()
    return out
