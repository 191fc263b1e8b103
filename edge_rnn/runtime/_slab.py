"""The state slab: every open stream's state in preallocated arrays, one row per stream.

Each state of the contract gets one array shaped like the state itself, with
the batch axis (where the model has it) as long as the slab's capacity. A
stream owns one row. A batch of streams then gathers each state with one
``np.take`` over its rows, already in the layout onnxruntime wants, and its new
states are written back with one indexed assignment, instead of a loop over
streams. (LLM servers keep their caches the same way.)

One batch's state outputs may stay *pending*: instead of being written into
the rows at once, they are kept as onnxruntime returned them, and ``owner``
marks their rows. When the next batch is the same streams in the same order
(a fixed set of streams stepped together, as a server does at a steady pace),
those arrays are fed as they are: no gather and no write at all. Any other use
of a pending row writes it into the slab first (``settle``, ``flush``).

A stream stepped alone keeps that call's state outputs as they are too
(``lone``, by row): the next lone step feeds them back without a copy, and
anything else writes them into the row first.

Concurrency: a row is used only by whoever holds its stream's lock, and
everything that reads or writes the arrays, ``owner`` or the pending batch
takes the slab's lock (short: copies, never onnxruntime). Growing replaces the
arrays under the same lock, so nothing is written into arrays already dropped.
"""

from __future__ import annotations

import threading

import numpy as np

from edge_rnn.contract import StateSpec

__all__ = ["StateSlab"]

Arrays = dict[str, np.ndarray]


class _Pending:
    """A batch's state outputs not yet written into the slab: ``rows[j]``'s state is slot ``j`` of ``arrays``."""

    __slots__ = ("serial", "rows", "key", "arrays", "intact")

    def __init__(self, serial: int, rows: np.ndarray, arrays: list[np.ndarray]):
        self.serial, self.rows, self.arrays = serial, rows, arrays
        self.key = rows.tobytes()
        self.intact = True  # every row still held: none settled, written or given to another stream since


class StateSlab:
    """Rows of state for one model's streams; grows by doubling, rows are reused after release."""

    def __init__(self, specs: tuple[StateSpec, ...], capacity: int = 16):
        self._specs = specs
        self._names = [s.input for s in specs]
        self._axes = [s.batch_axis for s in specs]
        self._initial = [0 if s.initial is None else s.initial_row() for s in specs]  # a new stream's row
        self._pre = [(slice(None),) * b for b in self._axes]  # index prefix up to the batch axis
        self.lock = threading.Lock()
        self.capacity = 0
        self.arrays: list[np.ndarray] = [self._empty(s, 0) for s in specs]
        self.owner = np.zeros(0, np.int64)  # per row: the serial of the pending batch holding its state, or 0
        self.steps = np.zeros(0, np.int64)  # per row: time steps its stream consumed since open or reset
        self._pending: _Pending | None = None
        self.lone: dict[int, list[np.ndarray]] = {}  # row -> the state outputs of its stream's last lone step
        self._want: dict[int, list[tuple[tuple[int, ...], np.dtype]]] = {}  # n -> each state output's shape, dtype
        self._serial = 0
        self._free: list[int] = []
        self._released: list[int] = []  # rows given back without the lock (list.append is atomic)
        self._grow(capacity)

    @staticmethod
    def _empty(s: StateSpec, rows: int) -> np.ndarray:
        return np.zeros(tuple(rows if d is None else d for d in s.shape), np.dtype(s.dtype))

    def _grow(self, capacity: int) -> None:
        """Caller holds the lock (or is the constructor)."""
        new = [self._empty(s, capacity) for s in self._specs]
        for a, old, pre in zip(new, self.arrays, self._pre):
            a[(*pre, slice(0, self.capacity))] = old
        self.owner = np.concatenate([self.owner, np.zeros(capacity - self.capacity, np.int64)])
        self.steps = np.concatenate([self.steps, np.zeros(capacity - self.capacity, np.int64)])
        self._free.extend(range(capacity - 1, self.capacity - 1, -1))  # lowest rows first
        self.arrays, self.capacity = new, capacity

    # ------------------------------------------------------------------ rows
    def allocate(self, state: Arrays | None = None, steps: int = 0) -> int:
        """A free row holding ``state`` (per stream, no batch axis), or the model's initial state (zeros unless
        the contract names one)."""
        with self.lock:
            if not self._free and self._released:
                released, self._released = self._released, []  # a release() racing this lands in one or the other
                self._free.extend(released)
            if not self._free:
                self._grow(2 * self.capacity)
            row = self._free.pop()
            try:
                self._drop(row)  # a pending batch's slot, or the outputs of a lone step, of the row's last owner
                self.steps[row] = steps
                for a, pre, name, init in zip(self.arrays, self._pre, self._names, self._initial):
                    a[(*pre, row)] = init if state is None else state[name]
            except BaseException:  # a state or step count that does not fit: the row is not taken
                self._free.append(row)
                raise
        return row

    def __len__(self) -> int:
        """The rows held by open streams."""
        return self.capacity - len(self._free) - len(self._released)

    def release(self, row: int) -> None:
        """Give a row back; safe from any thread and from a finalizer (takes no lock)."""
        self._released.append(row)

    # ------------------------------------------------------------------ one row
    def _drop(self, row: int) -> None:
        """Caller holds the lock: the row's state, if pending, no longer is (it is about to be overwritten)."""
        self.lone.pop(row, None)
        if self.owner[row]:
            self.owner[row] = 0
            self._pending.intact = False  # type: ignore[union-attr]

    def _settle(self, row: int) -> None:
        """Caller holds the lock: the row's state moved from a pending batch or a lone step into the slab, if it
        was there."""
        fed = self.lone.pop(row, None)
        if fed is not None:
            for a, pre, v in zip(self.arrays, self._pre, fed):
                a[(*pre, slice(row, row + 1))] = v
            return
        serial = self.owner[row]
        if serial:
            p = self._pending
            assert p is not None and p.serial == serial  # only the last batch is ever pending
            j = int(np.flatnonzero(p.rows == row)[0])
            for a, pre, v in zip(self.arrays, self._pre, p.arrays):
                a[(*pre, row)] = v[(*pre, j)]
            self.owner[row] = 0
            p.intact = False

    def view(self, row: int) -> Arrays:
        """One stream's state, no batch axis, as views (valid until the slab grows or the row is stepped)."""
        with self.lock:
            self._settle(row)
            return {name: a[(*pre, row)] for name, a, pre in zip(self._names, self.arrays, self._pre)}

    def feeds(self, row: int) -> Arrays:
        """One stream's state with a batch axis of 1: feeds for a step on that stream alone (the outputs of its
        last lone step as they are, else views of the row)."""
        fed = self.lone.get(row)  # only the holder of the row's stream lock changes its entry
        if fed is not None:
            return dict(zip(self._names, fed))
        with self.lock:
            self._settle(row)
            return {name: a[(*pre, slice(row, row + 1))] for name, a, pre in zip(self._names, self.arrays, self._pre)}

    def write(self, row: int, values: Arrays | None = None, *, steps: int = 0) -> None:
        """Set one row to ``values`` (per stream, no batch axis, by name), or to the model's initial state; its step
        count to ``steps``."""
        with self.lock:
            self._drop(row)
            self.steps[row] = steps
            for a, pre, name, init in zip(self.arrays, self._pre, self._names, self._initial):
                a[(*pre, row)] = init if values is None else values[name]

    def advance(self, row: int, values: list[np.ndarray], steps: int) -> None:
        """One stream stepped alone by ``steps``: its new state is that call's state outputs (state order, batch
        axis of 1), kept as they are in ``lone``."""
        with self.lock:
            self._drop(row)
            self.steps[row] += steps
            self.lone[row] = values

    def mismatch(self, values: list[np.ndarray], n: int) -> str | None:
        """What is wrong with a call's state outputs for ``n`` streams (state order), or None: a wrong shape or
        dtype would otherwise be broadcast or cast into the rows without a word."""
        want = self._want.get(n)
        if want is None:
            want = [((*a.shape[:b], n, *a.shape[b + 1:]), a.dtype) for a, b in zip(self.arrays, self._axes)]
            if len(self._want) < 1024:
                self._want[n] = want
        for name, (shape, dtype), v in zip(self._names, want, values):
            if type(v) is not np.ndarray or v.shape != shape or v.dtype != dtype:
                got = f"{v.shape} {v.dtype}" if isinstance(v, np.ndarray) else type(v).__name__
                return f"state output for {name!r}: expected {shape} {dtype}, got {got}"
        return None

    # ------------------------------------------------------------------ many rows
    def _flush(self) -> None:
        """Caller holds the lock: the pending batch's rows it still holds written into the slab."""
        p, self._pending = self._pending, None
        if p is None:
            return
        mine = self.owner[p.rows] == p.serial
        if mine.all():
            rows, sel = p.rows, None
        else:
            rows, sel = p.rows[mine], np.flatnonzero(mine)
        if len(rows):
            for a, pre, v in zip(self.arrays, self._pre, p.arrays):
                a[(*pre, rows)] = v if sel is None else np.take(v, sel, axis=len(pre))
            self.owner[rows] = 0

    def gather(self, rows: np.ndarray) -> Arrays:
        """The states of ``rows``, batch axis in the model's place, as feeds: the pending batch's own arrays when
        it is exactly these rows in this order, else fresh contiguous arrays taken from the slab."""
        with self.lock:
            if self.lone:  # rows stepped alone last: their outputs into the slab first
                for row in self.lone.keys() & set(rows.tolist()):
                    self._settle(row)
            p = self._pending
            if p is not None and p.intact and p.key == rows.tobytes():
                return dict(zip(self._names, p.arrays))
            if p is not None and self.owner[rows].any():
                self._flush()
            return {name: np.take(a, rows, axis=b) for name, a, b in zip(self._names, self.arrays, self._axes)}

    def take(self, values: list[np.ndarray], keep: np.ndarray) -> list[np.ndarray]:
        """A batch's state outputs (state order) for the streams at positions ``keep`` of its batch axis only."""
        return [np.take(v, keep, axis=b) for v, b in zip(values, self._axes)]

    def claim(self, rows: np.ndarray, values: list[np.ndarray], steps: int) -> None:
        """``rows`` stepped by ``steps``: their new states are a batch's state outputs (state order, batch axis
        in the model's place), kept pending; the batch pending before is written into the slab first."""
        with self.lock:
            self.steps[rows] += steps
            p = self._pending
            if p is not None and p.intact and p.key == rows.tobytes():  # the same batch again: owner holds
                p.arrays = values
                return
            self._serial += 1
            self.owner[rows] = self._serial
            self._flush()  # only the rows the old batch still holds
            self._pending = _Pending(self._serial, rows, values)
