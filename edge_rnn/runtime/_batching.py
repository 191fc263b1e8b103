"""step_batch: many streams stepped together, chunks of one length sharing one onnxruntime call.

:class:`BatchStepping` is the half of :class:`~edge_rnn.runtime.StreamingModel`
that batches; it relies on the model's own validation (``_prepare``,
``check``), its single-stream ``step`` and its ``_run``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import repeat
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from edge_rnn.errors import EdgeRnnError, InferenceError, NonFiniteError, ShapeError, StreamError, UnsupportedError
from edge_rnn.runtime._stream import Stream

__all__ = ["BatchStepping"]

Arrays = dict[str, np.ndarray]


_LAYOUT = attrgetter("shape", "dtype")
_SHAPE = attrgetter("shape")
_NDIM = attrgetter("ndim")
_MODEL = attrgetter("_model")
_CLOSED = attrgetter("_closed")
_ROW = attrgetter("_row")
_LOCK = attrgetter("lock")
_LOCK_TYPE = type(threading.Lock())  # the lock every Stream holds; its unbound methods map at C speed


def _check_item(i: int, item: Any) -> None:
    if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], Stream):
        raise StreamError(f"step_batch: item {i}: expected a (stream, chunk) pair, got {item!r:.80}")


class BatchStepping:
    """step_batch and its parts; mixed into StreamingModel."""

    def _step_isolated(self, items: Sequence[tuple[Stream, Any]]) -> list[Arrays | EdgeRnnError]:
        """step_batch(on_error="isolate"): each item's error in its own slot; the valid items still advance."""
        if self._batchable and len(items) > 1:
            try:  # the common case, every item good: the raise mode's checks at C speed, atomic on failure
                return self.step_batch(items)  # type: ignore[return-value]
            except Exception:  # noqa: BLE001 - no stream advanced; each item is looked at alone below
                pass
        results, valid = self._checked_items(items)
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

    def _checked_items(self, items: Sequence[tuple[Stream, Any]]) -> tuple[list, list[int]]:
        """Each item checked alone: the error of each bad one in its slot, and the indices of the good ones."""
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
        return results, valid

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
        if type(items) is not list and not isinstance(items, Sequence):
            items = list(items)  # a generator of pairs
        if on_error == "isolate":
            return self._step_isolated(items)
        if on_error != "raise":
            raise UnsupportedError(f"on_error: expected 'raise' or 'isolate', got {on_error!r}")
        if not items:
            return []
        if len(items) == 1 or not self._batchable:  # _collect checks the items of the batched path
            return self._step_unbatched(items)
        uniform = self._uniform(items)
        if uniform is not None:  # the common case, checked in a few passes over the items at C speed
            return self._step_uniform(*uniform)
        chunks, steps, streams = self._collect(items)
        with self._locked(streams):
            self._check_streams(streams)
            rows = np.fromiter(map(_ROW, streams), np.intp, len(streams))
            results: list[Arrays] = [{}] * len(streams)
            if steps.count(steps[0]) == len(steps):
                groups: list[list[int] | None] = [None]  # one call for every item
            else:
                by_steps: dict[int, list[int]] = {}
                for i, n in enumerate(steps):
                    by_steps.setdefault(n, []).append(i)
                groups = list(by_steps.values())
            # every call first; states are set only when all succeeded
            done = [self._run_group(idxs, chunks, rows, results) for idxs in groups]
            for (group_rows, states), idxs in zip(done, groups):
                self._slab.claim(group_rows, states, steps[0 if idxs is None else idxs[0]])
            return results

    def _step_uniform(self, streams: list[Stream], stacked: np.ndarray, n: int) -> list[Arrays]:
        """step_batch's common case in one piece: distinct streams, one chunk layout stacked already, one call."""
        with self._locked(streams):
            self._check_streams(streams)
            rows = np.fromiter(map(_ROW, streams), np.intp, len(streams))
            results: list[Arrays] = []
            _, states = self._run_group(None, {self._single_input: stacked}, rows, results)
            self._slab.claim(rows, states, n)
            return results

    def _uniform(self, items: Sequence[tuple[Stream, Any]]) -> tuple[list[Stream], np.ndarray, int] | None:
        """(streams, the chunks stacked on the batch axis, steps) when every item is a (Stream, array) pair, the
        streams distinct and the chunks of one shape and dtype that passed the model's checks (values aside);
        else None, and the general path finds what differs."""
        if self._single_input is None or set(map(type, items)) != {tuple} or set(map(len, items)) != {2}:
            return None
        streams, xs = map(list, zip(*items))
        if set(map(type, streams)) != {Stream} or len(set(map(id, streams))) != len(streams):
            return None
        kinds = set(map(type, xs))
        if kinds == {dict} and set(map(len, xs)) == {1}:  # {"x": array}, the input by name
            try:
                xs = list(map(itemgetter(self._single_input), xs))
            except KeyError:
                return None
            kinds = set(map(type, xs))
        if kinds != {np.ndarray}:
            return None
        first = xs[0]
        n = self._valid_layouts.get((first.shape, first.dtype))
        if n is None:
            try:
                n = self._prepare(first, check_finite=False)[1]
            except EdgeRnnError:
                return None
            if len(self._valid_layouts) < 64:
                self._valid_layouts[first.shape, first.dtype] = n
        if not first.ndim or set(map(_NDIM, xs)) != {first.ndim} or set(map(len, xs)) != {len(first)}:
            return None
        try:  # the same rank, trailing sizes (concatenate's rule), first size (above) and dtype (casting="no")
            return streams, self._stack_alike(self._single_input, xs, casting="no"), n
        except (ValueError, TypeError):
            return None

    def _check_streams(self, streams: list[Stream]) -> None:
        """Every stream usable by this model now (its own, open, streamable or fresh); the first that is not
        raises its error. The caller holds their locks."""
        if (set(map(_MODEL, streams)) != {self} or any(map(_CLOSED, streams))
                or (not self._io.streamable and self._slab.steps[np.fromiter(map(_ROW, streams), np.intp)].any())):
            for s in streams:
                s.check_usable(self)

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

    def _stack(self, name: str, parts: list[np.ndarray], idxs: list[int] | None) -> np.ndarray:
        """One input's chunks of a group stacked on the model's batch axis."""
        if idxs is not None:
            parts = [parts[i] for i in idxs]
        if parts[0].ndim and len(set(map(_SHAPE, parts))) == 1:
            return self._stack_alike(name, parts)
        return np.concatenate([a[self._add_batch[name]] for a in parts], axis=self._in_batch_axis[name])

    def _stack_alike(self, name: str, parts: list[np.ndarray], casting: str = "same_kind") -> np.ndarray:
        """Chunks of one shape stacked on input ``name``'s batch axis: one C-level copy, then the axis moved."""
        stacked = np.concatenate(parts, casting=casting).reshape(len(parts), *parts[0].shape)
        perm = self._in_from_batch_first[name]
        return stacked if perm is None else np.ascontiguousarray(stacked.transpose(perm))

    def _run_group(self, idxs: list[int] | None, chunks: dict[str, Any], rows: np.ndarray,
                   results: list[Arrays]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One onnxruntime call for the items ``idxs`` (chunks of one length; None: all); fills their results and
        returns their rows with the new states (set by the caller once every call succeeded)."""
        feeds = {}
        for p in self.inputs:
            parts = chunks[p.name]
            feeds[p.name] = x = parts if type(parts) is np.ndarray else self._stack(p.name, parts, idxs)
            try:  # once over the stacked chunk; on failure, name the item
                self._check_values(p.name, x)
            except (NonFiniteError, ShapeError) as e:
                items = np.moveaxis(parts, p.batch_axis, 0) if type(parts) is np.ndarray else parts
                bad = next(i for i in (range(len(items)) if idxs is None else idxs)
                           if not self._values_ok(p.name, items[i]))
                raise type(e)(f"item {bad} of the batch: {e}") from None
        if idxs is not None:
            rows = rows[idxs]
        n = len(rows)
        feeds.update(self._slab.gather(rows))
        res = self._run(feeds)
        n_out = self._n_out
        states = res[n_out:]
        wrong = self._slab.mismatch(states, n) or next(
            (f"output {name!r} for {n} streams: got shape {o.shape}" for name, o, p in
             zip(self._out_port_names, res, self.outputs) if o.ndim <= p.batch_axis or o.shape[p.batch_axis] != n),
            None)
        if wrong:
            raise InferenceError(f"onnxruntime ran {self.source} but returned a {wrong}; no stream in this call "
                                 "advanced")
        # per-stream views into the batched outputs (iterating the batch axis): no copies
        views = [list(res[k] if perm is None else res[k].transpose(perm))
                 for k, perm in enumerate(self._out_batch_first)]
        if n_out == 1:
            name = self._out_port_names[0]
            mine = [{name: v} for v in views[0]]
        else:
            mine = [dict(zip(self._out_port_names, vs)) for vs in zip(*views)]
        if idxs is None:
            results[:] = mine
        else:
            for i, r in zip(idxs, mine):
                results[i] = r
        return rows, states
