"""step_batch: many streams stepped together, chunks of one length sharing one onnxruntime call.

:class:`BatchStepping` is the half of :class:`~edge_rnn.runtime.StreamingModel`
that batches; it relies on the model's own validation (``_prepare``,
``check``), its single-stream ``step`` and its ``_run``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from edge_rnn.errors import EdgeRnnError, NonFiniteError, ShapeError, StreamError
from edge_rnn.runtime._stream import Stream

__all__ = ["BatchStepping"]

Arrays = dict[str, np.ndarray]


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


def _check_item(i: int, item: Any) -> None:
    if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], Stream):
        raise StreamError(f"step_batch: item {i}: expected a (stream, chunk) pair, got {item!r:.80}")


class BatchStepping:
    """step_batch and its parts; mixed into StreamingModel."""

    def _step_isolated(self, items: Sequence[tuple[Stream, Any]]) -> list[Arrays | EdgeRnnError]:
        """step_batch(on_error="isolate"): each item's error in its own slot; the valid items still advance."""
        results: list[Arrays | EdgeRnnError | None] = [None] * len(items)
        valid: list[int] = []
        seen: set[int] = set()
        for i, item in enumerate(items):
            try:
                _check_item(i, item)
                if id(item[0]) in seen:
                    raise StreamError("step_batch: expected each stream at most once per call, got one twice")
                self.check(*item)
                seen.add(id(item[0]))
                valid.append(i)
            except EdgeRnnError as e:
                results[i] = e
            except Exception as e:  # noqa: BLE001 - whatever the item's own content raised: its error alone
                results[i] = ShapeError(f"item {i}: cannot be used ({type(e).__name__}: {e})")
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

    def _step_unbatched(self, items: Sequence[tuple[Stream, Any]]) -> list[Arrays]:
        """One item (the single-stream path has less to do), or a model whose batch is fixed at 1."""
        for i, item in enumerate(items):
            _check_item(i, item)
        if len(items) == 1:
            (stream, x), = items
            return [self.step(stream, x)]
        return self._step_each(items)

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
        if not isinstance(items, Sequence):
            items = list(items)  # a generator of pairs
        if on_error == "isolate":
            return self._step_isolated(items)
        if on_error != "raise":
            raise ValueError(f"on_error: expected 'raise' or 'isolate', got {on_error!r}")
        if len(items) == 1 or not self._batchable:  # _collect checks the items of the batched path
            return self._step_unbatched(items)
        chunks, steps, streams = self._collect(items)
        with self._locked(streams):
            streamable = self._io.streamable
            for s in streams:
                if not s.usable_fast(self, streamable):
                    s.check_usable(self)  # raises the right error
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
        for i, item in enumerate(items):  # before any lock is taken
            if type(item) is not tuple or len(item) != 2 or type(item[0]) is not Stream:
                _check_item(i, item)  # the exact test, and its error
            stream, x = item
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
        locked: list[Stream] = []
        try:
            for s in sorted(streams, key=id):
                s.lock.acquire()
                locked.append(s)
            yield
        finally:
            for s in locked:
                s.lock.release()

    def _run_group(self, idxs: list[int], chunks: dict[str, list[np.ndarray]], streams: list[Stream],
                   results: list[Arrays]) -> _StateBatch:
        """One onnxruntime call for the items ``idxs`` (chunks of one length); fills their results."""
        feeds = {}
        for p in self.inputs:
            add, parts = self._add_batch[p.name], chunks[p.name]
            feeds[p.name] = np.concatenate([parts[i][add] for i in idxs], axis=p.batch_axis)
            try:  # once over the stacked chunk; on failure, name the item
                self._check_values(p.name, feeds[p.name])
            except (NonFiniteError, ShapeError) as e:
                bad = next(i for i in idxs if not self._values_ok(p.name, parts[i]))
                raise type(e)(f"item {bad} of the batch: {e}") from None
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
