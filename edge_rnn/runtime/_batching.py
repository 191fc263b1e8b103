"""step_batch: many streams stepped together, chunks of one length sharing one onnxruntime call.

:class:`BatchStepper` is handed everything it uses when its model is built:
the model it steps for (streams must belong to it), the model's
:class:`~edge_rnn.runtime._chunks.ChunkChecker` and
:class:`~edge_rnn.runtime._chunks.ResultChecker`, its
:class:`~edge_rnn.runtime._runner.SessionRunner`, its state slab, its
single-stream step, and the layout of its ports.
A batch's new states are kept only once every call of it ran and its outputs
and states were found whole and finite (but in isolate mode, see :meth:`_keep`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import numpy as np

from edge_rnn.errors import EdgeRnnError, InferenceError, NonFiniteError, ShapeError, StreamError, UnsupportedError
from edge_rnn.runtime._chunks import Arrays, ChunkChecker, ResultChecker
from edge_rnn.runtime._layout import from_front, to_front
from edge_rnn.runtime._ports import Port
from edge_rnn.runtime._runner import SessionRunner
from edge_rnn.runtime._slab import StateSlab
from edge_rnn.runtime._stream import ModelOfStream, Stream, check_all_usable, locked, rows_of

__all__ = ["BatchStepper"]

Items = Sequence[tuple[Stream, Any]]
Results = list[Any]  # per item: its outputs (Arrays), or in isolate mode its EdgeRnnError
_SHAPE = attrgetter("shape")
_NDIM = attrgetter("ndim")


def _as_items(items: Any) -> Items:
    """step_batch's items as a sequence (a generator of pairs is taken whole); anything else refused."""
    if type(items) is list or isinstance(items, Sequence):
        return items
    try:
        return list(items)
    except TypeError:
        raise StreamError(f"step_batch: expected a sequence of (stream, chunk) pairs, got {type(items).__name__}"
                          ) from None


def _check_item(i: int, item: Any) -> None:
    if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], Stream):
        raise StreamError(f"step_batch: item {i}: expected a (stream, chunk) pair, got {item!r:.80}")


class _Once:
    """The one rule: each stream at most once per call (a stream twice in one call would be stepped from one state
    twice). :meth:`take` a stream as its item is accepted; a later item of a stream already taken is refused."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    @staticmethod
    def distinct(streams: Sequence[Any]) -> bool:
        """Whether no stream stands twice (at C speed: the uniform path's test)."""
        return len(set(map(id, streams))) == len(streams)

    def check(self, stream: Stream) -> None:
        if id(stream) in self._taken:
            raise StreamError("step_batch: expected each stream at most once per call, got one twice")

    def take(self, stream: Stream) -> None:
        self._taken.add(id(stream))


class _Call(NamedTuple):
    """One onnxruntime call of a batch: its rows, their new states (not yet kept) and steps, and the rows (by
    position in the call) whose outputs or states hold NaN or Inf, with their messages; ``idxs``: its items (None:
    all of the batch)."""

    rows: np.ndarray
    states: list[np.ndarray]
    steps: int
    bad: dict[int, str]
    idxs: list[int] | None

    def item(self, j: int) -> int:
        """The batch's item at position ``j`` of this call."""
        return j if self.idxs is None else self.idxs[j]


class BatchStepper:
    """Steps many streams of one model; see :meth:`StreamingModel.step_batch`."""

    def __init__(self, owner: ModelOfStream, checker: ChunkChecker, results: ResultChecker, runner: SessionRunner,
                 slab: StateSlab, step_one: Callable[[Stream, Any], Arrays], outputs: tuple[Port, ...], *,
                 batchable: bool):
        self._owner = owner  # the model: every stream stepped must be its own
        self._checker = checker
        self._results = results
        self._runner = runner
        self._slab = slab
        self._step_one = step_one  # the model's single-stream step
        self._batchable = batchable
        self._outputs = outputs
        self._out_names = [p.name for p in outputs]
        inputs = checker.inputs
        # index tuples that add the batch axis as a view (x[add]), and each input's batch axis
        self._add_batch = {p.name: (slice(None),) * p.batch_axis + (None,) for p in inputs}
        self._batch_axis = {p.name: p.batch_axis for p in inputs}
        # transposes that take chunks stacked batch first to the model's layout (None: already it)
        self._from_batch_first = {p.name: from_front(len(p.shape), p.batch_axis) for p in inputs}
        # transposes that bring the batch axis first, to split a batch into per-stream views (None: first already)
        self._out_batch_first = [to_front(len(p.shape), p.batch_axis) for p in outputs]

    # ------------------------------------------------------------------ the entry point
    def step_batch(self, items: Items, on_error: str = "raise") -> list[Arrays | EdgeRnnError]:
        items = _as_items(items)
        if on_error == "isolate":
            return self._step_isolated(items)
        if on_error != "raise":
            raise UnsupportedError(f"on_error: expected 'raise' or 'isolate', got {on_error!r:.40}")
        if not items:
            return []
        if len(items) == 1 or not self._batchable:  # _collect checks the items of the batched path
            return self._step_unbatched(items)
        return self._step_batched(items, isolate=False)

    def _step_batched(self, items: Items, *, isolate: bool) -> Results:
        """Streams sharing calls. A bad chunk or stream, or a call failing, raises with no stream advanced; an
        overflow raises too (``isolate``: its item gets the error, and the other rows of its call are kept)."""
        uniform = self._uniform(items)
        if uniform is not None:  # the common case, checked in a few passes over the items at C speed
            return self._step_uniform(*uniform, isolate=isolate)
        return self._step_grouped(*self._collect(items), isolate=isolate)

    # ------------------------------------------------------------------ on_error="isolate"
    def _step_isolated(self, items: Items) -> list[Arrays | EdgeRnnError]:
        """Each item's error in its own slot; the valid items still advance."""
        if self._batchable and len(items) > 1:
            try:  # the common case, every chunk good: the raise mode's checks at C speed, atomic on failure
                return self._step_batched(items, isolate=True)
            except Exception:  # noqa: BLE001 - no stream advanced; each item is looked at alone below
                pass
        results, valid = self._checked_items(items)
        if len(valid) > 1 and self._batchable:
            try:  # atomic on a batchable model: on failure no stream advanced, and each is stepped alone below
                for i, out in zip(valid, self._step_batched([items[i] for i in valid], isolate=True)):
                    results[i] = out
                valid = []
            except Exception:  # noqa: BLE001 - whatever failed, it is found again item by item
                pass
        for i in valid:
            try:
                results[i] = self._step_one(*items[i])
            except EdgeRnnError as e:
                results[i] = e
            except Exception as e:  # noqa: BLE001 - onnxruntime's own error types: this item's error
                results[i] = EdgeRnnError(f"item {i}: onnxruntime failed ({type(e).__name__}: {e})")
        return results  # type: ignore[return-value]

    def _checked_items(self, items: Items) -> tuple[list, list[int]]:
        """Each item checked alone: the error of each bad one in its slot, and the indices of the good ones."""
        results: list[Arrays | EdgeRnnError | None] = [None] * len(items)
        valid: list[int] = []
        once = _Once()  # a stream counts as taken once one of its items passed: a bad first item frees it
        for i, item in enumerate(items):
            try:
                _check_item(i, item)
                once.check(item[0])
                self._check_one(*item)
                once.take(item[0])
                valid.append(i)
            except EdgeRnnError as e:
                results[i] = e
            except Exception as e:  # noqa: BLE001 - whatever the item's own content raised: its error alone
                results[i] = ShapeError(f"item {i}: cannot be used ({type(e).__name__}: {e})")
        return results, valid

    def _check_one(self, stream: Stream, x: Any) -> tuple[Arrays, int]:
        xs = self._checker.prepare(x)
        with stream.lock:
            stream.check_usable(self._owner)
        return xs

    # ------------------------------------------------------------------ one call per stream
    def _step_unbatched(self, items: Items) -> list[Arrays]:
        """One item (the single-stream path has less to do), or a model whose batch is fixed at 1: every item
        checked first, in item order (the first fault is the one raised), then one call each, holding every
        stream's lock; the states are set only once every call succeeded."""
        if len(items) == 1:
            _check_item(0, items[0])
            (stream, x), = items
            return [self._step_one(stream, x)]
        once = _Once()
        chunks = []
        for i, item in enumerate(items):
            _check_item(i, item)
            once.check(item[0])
            once.take(item[0])
            chunks.append(self._check_one(*item))
        streams = [s for s, _ in items]
        with locked(streams):
            check_all_usable(streams, self._owner)
            done = [self._run_alone(i, int(row), xs) for i, (row, (xs, _)) in enumerate(zip(rows_of(streams), chunks))]
            for (row, states, _), (_, n) in zip(done, chunks):
                self._slab.advance(row, states, n)
        return [out for _, _, out in done]

    def _run_alone(self, i: int, row: int, xs: Arrays) -> tuple[int, list[np.ndarray], Arrays]:
        """Item ``i``'s call on its own (a batch of one): its row, new states and outputs, not yet kept."""
        feeds = {name: a[self._add_batch[name]] for name, a in xs.items()}
        feeds.update(self._slab.feeds(row))
        res = self._runner.run(feeds)
        wrong = self._wrong_outputs(res, 1)
        if wrong:
            raise InferenceError(f"onnxruntime ran {self._runner.source} but returned a {wrong}; no stream in this "
                                 "batch advanced")
        bad = self._results.bad_rows(res)
        if bad:
            raise NonFiniteError(f"item {i} of the batch: {bad[0]}; no stream in this batch advanced")
        return row, res[len(self._outputs):], self._per_stream(res)[0]

    # ------------------------------------------------------------------ one call for all
    def _uniform(self, items: Items) -> tuple[list[Stream], np.ndarray, int] | None:
        """(streams, the chunks stacked on the batch axis, steps) when every item is a (Stream, array) pair, the
        streams distinct and the chunks of one shape and dtype that passed the model's checks (values aside);
        else None, and the general path finds what differs."""
        single = self._checker.single
        if single is None or set(map(type, items)) != {tuple} or set(map(len, items)) != {2}:
            return None
        streams, xs = map(list, zip(*items))
        if set(map(type, streams)) != {Stream} or not _Once.distinct(streams):
            return None
        xs = self._arrays_of(xs, single)
        if xs is None:
            return None
        first = xs[0]
        n = self._steps_of_layout(first)
        if n is None or not first.ndim or set(map(_NDIM, xs)) != {first.ndim} or set(map(len, xs)) != {len(first)}:
            return None
        try:  # the same rank, trailing sizes (concatenate's rule), first size (above) and dtype (casting="no")
            return streams, self._stack_alike(single, xs, casting="no"), n
        except (ValueError, TypeError):
            return None

    @staticmethod
    def _arrays_of(xs: list[Any], single: str) -> list[np.ndarray] | None:
        """The chunks as arrays, each given bare or as ``{input: array}``; None when any is something else."""
        kinds = set(map(type, xs))
        if kinds == {dict} and set(map(len, xs)) == {1}:  # {"x": array}, the input by name
            try:
                xs = list(map(itemgetter(single), xs))
            except KeyError:
                return None
            kinds = set(map(type, xs))
        return xs if kinds == {np.ndarray} else None

    def _steps_of_layout(self, a: np.ndarray) -> int | None:
        """The steps of a chunk of this layout, when the layout passes the model's checks (values aside)."""
        n = self._checker.layouts.get((a.shape, a.dtype))
        if n is None:
            try:
                n = self._checker.prepare(a, check_finite=False)[1]
            except EdgeRnnError:
                return None
            self._checker.remember(a, n)
        return n

    def _step_uniform(self, streams: list[Stream], stacked: np.ndarray, n: int, *, isolate: bool) -> Results:
        """step_batch's common case in one piece: distinct streams, one chunk layout stacked already, one call."""
        with locked(streams):
            check_all_usable(streams, self._owner)
            rows = rows_of(streams)
            results: Results = []
            self._keep([self._run_group(None, {self._checker.single: stacked}, rows, results, n)], results, isolate)
            return results

    # ------------------------------------------------------------------ one call per chunk length
    def _collect(self, items: Items) -> tuple[dict[str, list[np.ndarray]], list[int], list[Stream]]:
        """Every chunk validated (each distinct layout once), per input; the steps and streams, in item order."""
        chunks: dict[str, list[np.ndarray]] = {p.name: [] for p in self._checker.inputs}
        steps: list[int] = []
        streams: list[Stream] = []
        once = _Once()
        single = self._checker.single
        checked: dict[tuple, int] = {}  # (shape, dtype) -> steps
        for i, item in enumerate(items):  # in item order, so the first fault is the one raised; before any lock
            if type(item) is not tuple or len(item) != 2 or type(item[0]) is not Stream:
                _check_item(i, item)  # the exact test, and its error
            stream, x = item
            once.check(stream)
            once.take(stream)
            streams.append(stream)
            a = x.get(single) if type(x) is dict and len(x) == 1 else x
            if single is not None and type(a) is np.ndarray:
                key = (a.shape, a.dtype)
                n = checked.get(key)
                if n is None:
                    n = checked[key] = self._checker.prepare(a, check_finite=False)[1]
                chunks[single].append(a)
            else:
                d, n = self._checker.prepare(x, check_finite=False)
                for k, v in d.items():
                    chunks[k].append(v)
            steps.append(n)
        return chunks, steps, streams

    def _step_grouped(self, chunks: dict[str, list[np.ndarray]], steps: list[int], streams: list[Stream], *,
                      isolate: bool) -> Results:
        """Chunks grouped by length, one call per length; states set only once every call succeeded."""
        if steps.count(steps[0]) == len(steps):
            groups: list[list[int] | None] = [None]  # one call for every item
        else:
            by_steps: dict[int, list[int]] = {}
            for i, n in enumerate(steps):
                by_steps.setdefault(n, []).append(i)
            groups = list(by_steps.values())
        with locked(streams):
            check_all_usable(streams, self._owner)
            rows = rows_of(streams)
            results: Results = [{}] * len(streams)
            calls = [self._run_group(idxs, chunks, rows, results, steps[0 if idxs is None else idxs[0]])
                     for idxs in groups]
            self._keep(calls, results, isolate)
            return results

    # ------------------------------------------------------------------ the calls' new states kept
    def _keep(self, calls: list[_Call], results: Results, isolate: bool) -> None:
        """Every call of a batch ran: their new states kept. A row that overflowed raises, naming the first such
        item, with no state kept; or (``isolate``) its item gets the error and the other rows are kept."""
        if len(calls) == 1 and not calls[0].bad:  # the common case, one call that overflowed nowhere
            call = calls[0]
            self._slab.claim(call.rows, call.states, call.steps)
            return
        faults = sorted((call.item(j), message) for call in calls for j, message in call.bad.items())
        if faults and not isolate:
            raise NonFiniteError(f"item {faults[0][0]} of the batch: {faults[0][1]}; no stream in this batch "
                                 "advanced")
        for call in calls:
            rows, states = call.rows, call.states
            if call.bad:
                for j, message in call.bad.items():
                    results[call.item(j)] = NonFiniteError(f"{message}; the stream did not advance")
                keep = np.array([j for j in range(len(rows)) if j not in call.bad], np.intp)
                rows, states = rows[keep], self._slab.take(states, keep)
            if len(rows):
                self._slab.claim(rows, states, call.steps)

    # ------------------------------------------------------------------ one onnxruntime call
    def _stack(self, name: str, parts: list[np.ndarray], idxs: list[int] | None) -> np.ndarray:
        """One input's chunks of a group stacked on the model's batch axis."""
        if idxs is not None:
            parts = [parts[i] for i in idxs]
        if parts[0].ndim and len(set(map(_SHAPE, parts))) == 1:
            return self._stack_alike(name, parts)
        return np.concatenate([a[self._add_batch[name]] for a in parts], axis=self._batch_axis[name])

    def _stack_alike(self, name: str, parts: list[np.ndarray], casting: str = "same_kind") -> np.ndarray:
        """Chunks of one shape stacked on input ``name``'s batch axis: one C-level copy, then the axis moved."""
        stacked = np.concatenate(parts, casting=casting).reshape(len(parts), *parts[0].shape)
        perm = self._from_batch_first[name]
        return stacked if perm is None else np.ascontiguousarray(stacked.transpose(perm))

    def _feeds(self, idxs: list[int] | None, chunks: dict[str, Any]) -> dict[str, np.ndarray]:
        """The group's chunks stacked per input, their values checked once over the stack (the bad item named)."""
        feeds = {}
        for p in self._checker.inputs:
            parts = chunks[p.name]
            feeds[p.name] = x = parts if type(parts) is np.ndarray else self._stack(p.name, parts, idxs)
            try:
                self._checker.check_values(p.name, x)
            except (NonFiniteError, ShapeError) as e:
                items = np.moveaxis(parts, p.batch_axis, 0) if type(parts) is np.ndarray else parts
                bad = next(i for i in (range(len(items)) if idxs is None else idxs)
                           if not self._checker.values_ok(p.name, items[i]))
                raise type(e)(f"item {bad} of the batch: {e}") from None
        return feeds

    def _wrong_outputs(self, res: list[np.ndarray], n: int) -> str | None:
        """What is wrong with a call's outputs for ``n`` streams, or None."""
        n_out = len(self._outputs)
        return self._slab.mismatch(res[n_out:], n) or next(
            (f"output {p.name!r} for {n} streams: got shape {o.shape}" for o, p in zip(res, self._outputs)
             if o.ndim <= p.batch_axis or o.shape[p.batch_axis] != n), None)

    def _run_group(self, idxs: list[int] | None, chunks: dict[str, Any], rows: np.ndarray, results: Results,
                   steps: int) -> _Call:
        """One onnxruntime call for the items ``idxs`` (chunks of ``steps`` steps; None: all); fills their results
        and returns the call, its new states to be kept by the caller once every call succeeded."""
        feeds = self._feeds(idxs, chunks)
        if idxs is not None:
            rows = rows[idxs]
        feeds.update(self._slab.gather(rows))
        res = self._runner.run(feeds)
        wrong = self._wrong_outputs(res, len(rows))
        if wrong:
            raise InferenceError(f"onnxruntime ran {self._runner.source} but returned a {wrong}; no stream in this "
                                 "call advanced")
        mine = self._per_stream(res)
        if idxs is None:
            results[:] = mine
        else:
            for i, r in zip(idxs, mine):
                results[i] = r
        return _Call(rows, res[len(self._outputs):], steps, self._results.bad_rows(res), idxs)

    def _per_stream(self, res: list[np.ndarray]) -> list[Arrays]:
        """Per-stream views into the batched outputs (iterating the batch axis): no copies."""
        views = [list(res[k] if perm is None else res[k].transpose(perm))
                 for k, perm in enumerate(self._out_batch_first)]
        if len(views) == 1:
            name = self._out_names[0]
            return [{name: v} for v in views[0]]
        return [dict(zip(self._out_names, vs)) for vs in zip(*views)]
