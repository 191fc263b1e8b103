"""A stream: one sequence's recurrent state, owned by the caller, stepped by a shared model."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import repeat
from operator import attrgetter
from typing import Protocol

import numpy as np

from edge_rnn.contract import StateSpec
from edge_rnn.errors import NonFiniteError, ShapeError, StateError, StreamError
from edge_rnn.runtime._chunks import float_values
from edge_rnn.runtime._slab import StateSlab
from edge_rnn.runtime._snapshot import MAX_STEPS, encode_snapshot, stream_shape


class ModelOfStream(Protocol):
    """What a stream needs of its model (the real one is :class:`edge_rnn.runtime.StreamingModel`)."""

    fingerprint: str

    @property
    def streamable(self) -> bool: ...


__all__ = ["Stream", "stream_shape", "state_from_user", "ModelOfStream", "rows_of", "check_all_usable", "locked"]

class Stream:
    """The recurrent state of one sequence. Create it with :meth:`StreamingModel.open_stream`.

    The state is held per stream, without the batch axis, like everything a
    stream passes or gets back. Steps on one stream are serialised by its lock.

    The stream is the only owner of its state, which lives in one row of its
    model's :class:`~edge_rnn.runtime._slab.StateSlab` (so that a batch of
    streams gathers and sets its states with one indexing operation). The
    model changes the state only through the methods below marked "for the
    model", holding the stream's lock.
    """

    def __init__(self, model: ModelOfStream, specs: tuple[StateSpec, ...], slab: StateSlab,
                 state: dict[str, np.ndarray] | None = None, *, steps: int = 0):
        self._model = model
        self._specs = specs
        self._slab = slab
        self._row = slab.allocate(state, steps)  # -1 once closed
        self.lock = threading.Lock()  # held while a step on this stream runs
        self._closed = False
        self._steps_at_close = 0

    def __copy__(self) -> Stream:
        raise StreamError("a stream cannot be copied (two streams would share one state): snapshot() it and "
                          "model.restore() the snapshot")

    def __deepcopy__(self, memo: dict) -> Stream:
        return self.__copy__()

    def __del__(self) -> None:  # a stream dropped without close() gives its row back
        row = getattr(self, "_row", -1)
        if row >= 0:
            self._slab.release(row)

    # ------------------------------------------------------------------ for the model
    def arrays(self) -> dict[str, np.ndarray]:
        """The current state, per stream (no batch axis), as views; the caller holds the lock."""
        return self._slab.view(self._row)

    def check_usable(self, model: ModelOfStream) -> None:
        """Raise unless ``model`` may step this stream now (its own model, open, streamable or fresh)."""
        if self._model is not model:
            raise StreamError("stream belongs to another model: expected a stream from this model's open_stream()")
        self._check_open()
        if self.steps and not model.streamable:
            raise StreamError(
                "model is not streamable (a bidirectional layer needs the whole sequence): expected one step call "
                "per sequence; call stream.reset() before the next sequence"
            )

    def row_for(self, model: ModelOfStream, streamable: bool) -> int:
        """This stream's row of the slab, for ``model`` to step it (``streamable``: the model's); raises what
        :meth:`check_usable` raises when it may not. The caller holds the lock."""
        if self._model is not model or self._closed or (not streamable and self.steps):
            self.check_usable(model)  # raises the right error
        return self._row

    # ------------------------------------------------------------------ for the user
    @property
    def steps(self) -> int:
        """Time steps consumed since open or reset; it stops at ``2**62`` (a restore refuses more), never wraps."""
        row = self._row
        return self._steps_at_close if row < 0 else min(int(self._slab.steps[row]), MAX_STEPS)

    @property
    def model(self) -> ModelOfStream:
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
        """Back to the model's initial state: zeros (PyTorch's default) unless its contract names one."""
        with self.lock:
            self._check_open()
            self._slab.write(self._row)  # the initial state, no steps

    def close(self) -> None:
        """Release the state; any later step on this stream raises :class:`StreamError`."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self._steps_at_close = self.steps
                self._slab.release(self._row)
                self._row = -1

    def snapshot(self) -> bytes:
        """The state as bytes; :meth:`StreamingModel.restore` resumes it bit for bit."""
        with self.lock:
            self._check_open()
            return encode_snapshot(self._model.fingerprint, self._specs, self.arrays(), self.steps)

    def _check_open(self) -> None:
        if self._closed:
            raise StreamError("stream is closed: expected an open stream, open a new one with model.open_stream()")

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Stream {'closed' if self._closed else 'open'}, {self.steps} steps>"

    def checkpoint(self) -> Callable[[], None]:
        """Keep the state and step count as they are now; calling what this returns puts them back.

        For a caller that applies one chunk as several steps (a server running a
        long chunk in pieces) and must undo the first ones when a later one
        fails. Raises :class:`StreamError` if the stream is closed, now or when
        the state is put back.
        """
        with self.lock:
            self._check_open()
            saved = {k: v.copy() for k, v in self.arrays().items()}
            steps = self.steps

        def put_back() -> None:
            with self.lock:
                self._check_open()
                self._slab.write(self._row, saved, steps=steps)

        return put_back


def state_from_user(states: tuple[StateSpec, ...], given: Mapping[str, np.ndarray], *, allow_nonfinite: bool = False
                    ) -> dict[str, np.ndarray]:
    """Validate a per-stream state (no batch axis) and copy it; NaN or Inf refused unless ``allow_nonfinite``, as
    step refuses them."""
    if not isinstance(given, Mapping):
        raise StateError(f"initial_state: expected a mapping of state name -> array, got {type(given).__name__}")
    names = {s.input for s in states}
    unknown = sorted(set(given) - names)
    if unknown:
        raise StateError(f"initial_state: unknown state {unknown}, expected names in {sorted(names)}")
    out = {}
    for s in states:
        if s.input not in given:
            raise StateError(f"initial_state: missing state {s.input!r} of shape {stream_shape(s)}")
        out[s.input] = _state_array(s, given[s.input], allow_nonfinite)
    return out


def _state_array(s: StateSpec, given: object, allow_nonfinite: bool) -> np.ndarray:
    """One state given by the user (an array, or nested lists as step takes), checked and copied."""
    want, dtype = stream_shape(s), np.dtype(s.dtype)
    a = given
    if type(a) is not np.ndarray:  # nested lists, as step takes them: numbers only, within the dtype
        name = f"initial_state {s.input!r}"
        try:
            a = float_values(a, dtype, name, f"{want} {s.dtype}") if dtype.kind == "f" else np.asarray(a, dtype=dtype)
        except (ValueError, TypeError, OverflowError) as e:
            if isinstance(e, ShapeError):
                raise
            raise ShapeError(f"{name}: expected an array of shape {want} {s.dtype}, got {type(given).__name__} that "
                             f"numpy cannot convert ({e})") from None
    if a.shape != want or a.dtype != dtype:
        raise ShapeError(f"initial_state {s.input!r}: expected shape {want} {s.dtype}, got {a.shape} {a.dtype}")
    if a.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(a).all():
        raise NonFiniteError(f"initial_state {s.input!r}: expected finite values, got NaN or Inf")
    return a.copy()


# A batch of streams read at C speed (map over attribute getters): the stepper's view of many streams at once,
# kept here beside the attributes it reads.
_ROW = attrgetter("_row")
_MODEL = attrgetter("_model")
_CLOSED = attrgetter("_closed")
_LOCK = attrgetter("lock")


def rows_of(streams: list[Stream]) -> np.ndarray:
    """The slab rows of ``streams``, in order (the caller holds their locks)."""
    return np.fromiter(map(_ROW, streams), np.intp, len(streams))


_LOCK_TYPE = type(threading.Lock())  # the lock every Stream holds; its unbound methods map at C speed


@contextmanager
def locked(streams: list[Stream]) -> Iterator[None]:
    """Hold every stream's lock. Each is tried without waiting; if one is busy, those taken are let go and
    all are taken in one fixed order, waiting (no deadlock between concurrent batches)."""
    locks = list(map(_LOCK, streams))
    taken = list(map(_LOCK_TYPE.acquire, locks, repeat(False)))
    if not all(taken):
        for lock, got in zip(locks, taken):
            if got:
                lock.release()
        locks = sorted(locks, key=id)
        for k, lock in enumerate(locks):
            try:
                lock.acquire()
            except BaseException:
                for held in locks[:k]:
                    held.release()
                raise
    try:
        yield
    finally:
        deque(map(_LOCK_TYPE.release, locks), 0)


def check_all_usable(streams: list[Stream], model: ModelOfStream) -> None:
    """Every stream usable by ``model`` now (its own, open, streamable or fresh); the first that is not raises
    its error, as :meth:`Stream.check_usable` does. The caller holds their locks."""
    if (set(map(_MODEL, streams)) != {model} or any(map(_CLOSED, streams))
            or (not model.streamable and any(s.steps for s in streams))):
        for s in streams:
            s.check_usable(model)
