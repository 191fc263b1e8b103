"""A stream: one sequence's recurrent state, owned by the caller, stepped by a shared model."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_rnn.contract import StateSpec
from edge_rnn.errors import ShapeError, StateError, StreamError

if TYPE_CHECKING:
    from edge_rnn.runtime._model import StreamingModel

__all__ = ["Stream", "encode_snapshot", "decode_snapshot"]

_MAGIC = b"EDGERNN-SNAPSHOT"
_VERSION = 1


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


def stream_shape(s: StateSpec) -> tuple[int, ...]:
    """The shape of one stream's state: the state's shape without the batch axis."""
    return tuple(d for d in s.shape if d is not None)


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


def encode_snapshot(fingerprint: str, states: tuple[StateSpec, ...], state: dict[str, np.ndarray], steps: int) -> bytes:
    header = {
        "version": _VERSION,
        "fingerprint": fingerprint,
        "steps": steps,
        "states": [{"input": s.input, "shape": list(state[s.input].shape), "dtype": s.dtype} for s in states],
    }
    head = json.dumps(header).encode()
    body = b"".join(np.ascontiguousarray(state[s.input]).tobytes() for s in states)
    return _MAGIC + struct.pack("<I", len(head)) + head + body


def decode_snapshot(
    data: bytes, fingerprint: str, states: tuple[StateSpec, ...]
) -> tuple[dict[str, np.ndarray], int]:
    """The state arrays and step count in ``data``, refused unless they belong to this model."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[: len(_MAGIC)]) != _MAGIC:
        raise StateError("snapshot: expected bytes from Stream.snapshot(), got something else")
    try:
        (n,) = struct.unpack_from("<I", data, len(_MAGIC))
        start = len(_MAGIC) + 4
        header = json.loads(bytes(data[start : start + n]))
    except (struct.error, ValueError) as e:
        raise StateError(f"snapshot: corrupt header ({e})") from None
    if not isinstance(header, dict):
        raise StateError(f"snapshot: corrupt header, expected an object, got {type(header).__name__}")
    steps = header.get("steps", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise StateError(f"snapshot: corrupt header, expected a step count >= 0, got {steps!r}")
    if header.get("version") != _VERSION:
        raise StateError(f"snapshot: expected version {_VERSION}, got {header.get('version')!r}")
    want = [{"input": s.input, "shape": list(stream_shape(s)), "dtype": s.dtype} for s in states]
    if header.get("states") != want:
        raise StateError(f"snapshot of another model: expected states {want}, got {header.get('states')}")
    if header.get("fingerprint") != fingerprint:
        raise StateError(
            f"snapshot of another model: expected fingerprint {fingerprint}, got {header.get('fingerprint')} "
            "(same state layout, different weights or graph)"
        )
    offset = start + n
    out = {}
    for s in states:
        dt = np.dtype(s.dtype)
        shape = stream_shape(s)
        size = int(np.prod(shape)) * dt.itemsize
        if offset + size > len(data):
            raise StateError("snapshot: truncated, expected more state bytes")
        out[s.input] = np.frombuffer(bytes(data[offset : offset + size]), dtype=dt).reshape(shape).copy()
        offset += size
    if offset != len(data):
        raise StateError(f"snapshot: expected {offset} bytes, got {len(data)}")
    return out, steps
