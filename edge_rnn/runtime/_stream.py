"""A stream: one sequence's recurrent state, owned by the caller, stepped by a shared model."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_rnn.contract import StateSpec
from edge_rnn.errors import ShapeError, StateError, StreamError
from edge_rnn.runtime._snapshot import encode_snapshot, stream_shape

if TYPE_CHECKING:
    from edge_rnn.runtime._model import StreamingModel

__all__ = ["Stream", "stream_shape", "state_from_user"]

class Stream:
    """The recurrent state of one sequence. Create it with :meth:`StreamingModel.open_stream`.

    The state is held per stream, without the batch axis, like everything a
    stream passes or gets back. Steps on one stream are serialised by its lock.
    """

    def __init__(self, model: StreamingModel, state: dict[str, np.ndarray]):
        self._model = model
        # One stream's state has three forms; whichever is set is the truth, and the per-stream view
        # (_state) is cut from the others only when something asks:
        self._state_dict: dict[str, np.ndarray] | None = state  # name -> array without the batch axis
        self._batch: Any = None  # (_StateBatch, index) after step_batch
        self._fed: dict[str, np.ndarray] | None = None  # after step: onnxruntime's outputs, batch axis of 1
        self._drop: list = []  # (name, index) that drops the batch axis of _fed
        self._lock = threading.Lock()
        self._closed = False
        self.steps = 0  # time steps consumed since open/reset

    @property
    def _state(self) -> dict[str, np.ndarray]:
        if self._state_dict is None:
            if self._fed is not None:
                self._state_dict = {name: self._fed[name][drop] for name, drop in self._drop}
            else:
                batch, j = self._batch
                self._state_dict = {name: a[j] for name, a in batch.batch_first.items()}
        return self._state_dict

    @_state.setter
    def _state(self, state: dict[str, np.ndarray]) -> None:
        self._state_dict = state
        self._batch = self._fed = None

    def _set_batch_state(self, batch: Any, index: int) -> None:
        self._batch = (batch, index)
        self._state_dict = self._fed = None

    def _set_fed(self, fed: dict[str, np.ndarray], drop: list) -> None:
        self._fed, self._drop = fed, drop
        self._state_dict = self._batch = None

    @property
    def model(self) -> StreamingModel:
        return self._model

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def state(self) -> dict[str, np.ndarray]:
        """State input name -> a copy of the current state, without the batch axis."""
        with self._lock:
            self._check_open()
            return {k: v.copy() for k, v in self._state.items()}

    def reset(self) -> None:
        """Back to the zero state, PyTorch's default initial state."""
        with self._lock:
            self._check_open()
            self._state = self._model._zero_state()
            self.steps = 0

    def close(self) -> None:
        """Release the state; any later step on this stream raises :class:`StreamError`."""
        with self._lock:
            self._closed = True
            self._state = {}

    def snapshot(self) -> bytes:
        """The state as bytes; :meth:`StreamingModel.restore` resumes it bit for bit."""
        with self._lock:
            self._check_open()
            return encode_snapshot(self._model.fingerprint, self._model.states, self._state, self.steps)

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
    names = {s.input for s in states}
    unknown = sorted(set(given) - names)
    if unknown:
        raise StateError(f"initial_state: unknown state {unknown}, expected names in {sorted(names)}")
    out = {}
    for s in states:
        want = stream_shape(s)
        if s.input not in given:
            raise StateError(f"initial_state: missing state {s.input!r} of shape {want}")
        a = np.asarray(given[s.input])
        if a.shape != want or a.dtype != np.dtype(s.dtype):
            raise ShapeError(
                f"initial_state {s.input!r}: expected shape {want} {s.dtype}, got {a.shape} {a.dtype}"
            )
        out[s.input] = a.copy()
    return out
