"""The batching consumer: steps of many streams, from many clients, in few onnxruntime calls.

A request handler awaits :meth:`Batcher.step`; the consumer task awaits its
queue (no polling: one future per wait, woken when enough steps are queued),
takes what is queued, and waits for more until ``max_batch`` steps or until
``max_wait_ms`` after the first step of the batch arrived (a step that queued
while the last batch ran goes at once). It runs them as one
``step_batch(..., on_error="isolate")`` in a worker thread, off the event
loop. Two steps of one stream never share a batch, and each stream's steps are
applied in the order they were submitted: a later step of a stream that is
already in the batch waits for the next one, and so does every step behind it.
The queue is bounded: when it is full, :class:`Overloaded` is raised at once,
so latency cannot grow without end.

A batch runs at most ``max_batch_frames`` time steps of any one stream, so a
long chunk cannot hold up the short steps of the others for longer than that:
a chunk of more than ``max_batch_frames`` frames is run as consecutive pieces
of ``max_batch_frames`` frames (the last one shorter), one piece per batch,
beside the other streams' steps; the stream's later steps wait behind its
remaining pieces. The client gets one reply, the pieces' outputs joined along
each output's time axis, which equals stepping those pieces in order. The whole
chunk is checked before its first piece runs, and if a later piece fails (or
its client gives up) the stream's state is put back as it was before the first
piece: a step answered with an error is not applied. A model without a time
axis (one step per call), with a fixed chunk length (the static form) or that
is not streamable takes its chunks whole, as does a JSON chunk (nested lists)
on a model whose time axis is not the chunk's first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from edge_rnn._numbers import is_int, is_number
from edge_rnn.errors import EdgeRnnError, ShapeError, StreamError, UnsupportedError
from edge_rnn.runtime import Stream, StreamingModel

__all__ = ["Batcher", "Overloaded", "ShuttingDown"]


class Overloaded(EdgeRnnError):
    """The step queue is full: try again later (HTTP 503 with Retry-After, WebSocket close 1013)."""


class ShuttingDown(EdgeRnnError):
    """The server is stopping and takes no new steps (HTTP 503, WebSocket close 1001)."""


class _Pending:
    """One submitted step; a chunk of ``frames`` > 0 runs as pieces, ``done`` frames of it run so far."""

    __slots__ = ("stream", "chunk", "future", "queued_at", "frames", "done", "outs", "undo")

    def __init__(self, stream: Stream, chunk: Any, future: asyncio.Future, frames: int):
        self.stream, self.chunk, self.future, self.queued_at = stream, chunk, future, time.perf_counter()
        self.frames, self.done = frames, 0  # frames 0: run whole
        self.outs: list[dict] = []  # each piece's outputs, copied (a view would keep its whole batch's arrays)
        self.undo: Callable[[], None] | None = None  # puts back the stream's state from before the first piece


_MORE = object()  # a piece's result when the step has pieces left to run


class _Splitter:
    """How one model's chunks are cut along time into pieces, and the pieces' outputs joined again.

    ``inputs`` is None where the model's chunks cannot be split: an input without a time axis (one step per
    call) or with a fixed number of steps (the static form), an output without a time axis to join on, or a
    model that is not streamable (a bidirectional layer needs the whole sequence in one call).
    """

    def __init__(self, model: StreamingModel):
        ins, outs = model.inputs, model.outputs
        timed = all(p.stream_time_axis is not None and p.stream_shape[p.stream_time_axis] is None for p in ins)
        ok = model.streamable and timed and all(p.stream_time_axis is not None for p in outs)
        # per input: (its time axis, its rank), per stream; per output: its time axis, per stream
        self.inputs = {p.name: (p.stream_time_axis, len(p.stream_shape)) for p in ins} if ok else None
        self.outputs = {p.name: p.stream_time_axis for p in outs}
        self.single = ins[0].name if len(ins) == 1 else None

    def _parts(self, chunk: Any) -> Mapping | None:
        if not isinstance(chunk, Mapping):
            return None if self.single is None else {self.single: chunk}
        return chunk if chunk.keys() == self.inputs.keys() else None

    def frames(self, chunk: Any) -> int:
        """The chunk's time steps, read from its shape (an array) or its length (a list, time first); 0 where
        they cannot be read so (the chunk then runs whole, and the model says what is wrong with it)."""
        parts = None if self.inputs is None else self._parts(chunk)
        if parts is None:
            return 0
        steps = set()
        for name, a in parts.items():
            t, rank = self.inputs[name]
            if type(a) is np.ndarray and a.ndim == rank:
                steps.add(a.shape[t])
            elif type(a) is list and t == 0:
                steps.add(len(a))
            else:
                return 0
        return steps.pop() if len(steps) == 1 else 0

    def piece(self, chunk: Any, start: int, stop: int) -> Any:
        """Frames ``start:stop`` of a chunk (views of arrays, slices of lists)."""
        parts = {name: a[start:stop] if type(a) is list else a[(slice(None),) * self.inputs[name][0]
                                                                 + (slice(start, stop),)]
                 for name, a in self._parts(chunk).items()}
        return parts if isinstance(chunk, Mapping) else parts[self.single]

    def join(self, outs: list[dict]) -> dict:
        """The pieces' outputs, in order, as one step's: joined along each output's time axis."""
        return {name: np.concatenate([o[name] for o in outs], axis=t) for name, t in self.outputs.items()}


class Batcher:
    """Batches the steps of many streams of one model; see the module docstring."""

    def __init__(self, model: StreamingModel, *, max_batch: int = 64, max_wait_ms: float = 2.0,
                 max_queue: int = 1024, on_batch: Callable[[int, list[float], float], None] | None = None,
                 max_batch_frames: int = 64):
        for name, value, least in (("max_batch", max_batch, 1), ("max_queue", max_queue, 1),
                                   ("max_batch_frames", max_batch_frames, 1)):
            if not is_int(value, least):
                raise UnsupportedError(f"{name}: expected an int >= {least}, got {value!r}")
        if not is_number(max_wait_ms, 0, 1e4):
            raise UnsupportedError(f"max_wait_ms: expected a number in 0..10000, got {max_wait_ms!r}")
        self.model = model
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.max_batch_frames = max_batch_frames  # time steps of one stream per batch; a longer chunk is split
        self._split = _Splitter(model)
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._waiter: asyncio.Future | None = None  # the consumer's, while it waits for _want queued steps
        self._want = 1
        self._held: deque[_Pending] = deque()  # taken from the queue, waiting for a later batch (stream order)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-rnn-batch")
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, from start() (get_running_loop costs a
        # getpid() system call on each use in Python 3.11)
        self._closing = False
        self._on_batch = on_batch  # (batch size, queue waits in s, step seconds) -> None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._consume(), name="edge-rnn-batcher")

    async def stop(self) -> None:
        """Take no new steps; finish every step already accepted (the batch in flight too); then stop."""
        self._closing = True
        self._wake()  # a consumer waiting on an empty queue sees that it may end
        if self._task is not None:
            await self._task  # it ends once the queue and the held steps are empty
            self._task = None
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------ submitting
    def submit(self, stream: Stream, chunk: Any) -> asyncio.Future:
        """Queue a step of ``stream`` for the next batch it fits in; the future of its outputs (or of its
        EdgeRnnError). Raises :class:`Overloaded` or :class:`ShuttingDown` at once."""
        if self._closing:
            raise ShuttingDown("the server is shutting down and takes no new steps")
        future = (self._loop or asyncio.get_running_loop()).create_future()
        frames = self._split.frames(chunk)
        try:
            self._queue.put_nowait(_Pending(stream, chunk, future, frames if frames > self.max_batch_frames else 0))
        except asyncio.QueueFull:
            raise Overloaded(f"overloaded: {self._queue.maxsize} steps already queued; retry shortly") from None
        if self._waiter is not None and self._queue.qsize() >= self._want:
            self._wake()
        return future

    async def step(self, stream: Stream, chunk: Any) -> dict:
        """Step ``stream`` by ``chunk`` in the next batch it fits in; its outputs, or its EdgeRnnError."""
        return await self.submit(stream, chunk)

    # ------------------------------------------------------------ the consumer
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _wait(self, want: int, timeout: float | None) -> None:
        """Until ``want`` steps are queued, the batcher is stopping, or ``timeout`` seconds passed (None: no
        limit). One future and at most one timer per wait: woken once per batch, not once per step."""
        loop = self._loop or asyncio.get_running_loop()
        self._want, self._waiter = want, loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _take(self, batch: list[_Pending], taken: set[int], blocked: set[int]) -> None:
        """Move queued steps into the batch, up to max_batch; a stream's step behind one of its own is held."""
        queue = self._queue
        while len(batch) < self.max_batch and not queue.empty():
            p = queue.get_nowait()
            key = id(p.stream)
            if key in taken or key in blocked:
                blocked.add(key)
                self._held.append(p)
            else:
                taken.add(key)
                batch.append(p)

    async def _gather(self) -> list[_Pending]:
        """One batch: held steps first (in order), then the queue, at most one step per stream; up to max_batch
        steps, or what came within max_wait of the first step's arrival."""
        batch: list[_Pending] = []
        taken: set[int] = set()
        blocked: set[int] = set()  # streams with a step held back: their later steps wait behind it
        held, self._held = self._held, deque()
        for p in held:
            key = id(p.stream)
            if key in taken or key in blocked or len(batch) >= self.max_batch:
                blocked.add(key)
                self._held.append(p)
            else:
                taken.add(key)
                batch.append(p)
        while not batch:
            if self._queue.empty():
                if self._closing:
                    return batch
                await self._wait(1, None)
            self._take(batch, taken, blocked)
        first = min(p.queued_at for p in batch)  # a step that waited through the last batch goes at once
        while len(batch) < self.max_batch:
            self._take(batch, taken, blocked)
            remaining = first + self.max_wait - time.perf_counter()
            if len(batch) >= self.max_batch or remaining <= 0 or self._closing:
                break
            await self._wait(self.max_batch - len(batch), remaining)
        return batch

    async def _consume(self) -> None:
        loop = self._loop or asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch and self._closing and self._queue.empty() and not self._held:
                return
            live = _live(batch)
            if not live:
                continue
            started = time.perf_counter()
            waits = [started - p.queued_at for p in live if not p.done]  # a step's wait before its first piece
            try:  # awaited here, not in a helper coroutine: one frame to resume per batch
                results = await loop.run_in_executor(self._executor, self._run, live)
            except asyncio.CancelledError:  # this task is cancelled (the loop is closing): end, and say why
                _abandon(live)
                raise
            except BaseException as e:  # noqa: BLE001 - never leave a client waiting for ever
                results = [e] * len(live)
            self._settle(live, results, waits, started)

    def _settle(self, live: list[_Pending], results: list, waits: list[float], started: float) -> None:
        """Each step's outputs or error to its future (a client that gave up is skipped); a step with pieces left
        goes first into the next batch; the batch reported."""
        seconds = time.perf_counter() - started
        more = []
        for p, r in zip(live, results):
            if r is _MORE:
                more.append(p)
                continue
            if isinstance(r, BaseException):
                _undo(p)  # a step answered with an error is not applied: its first pieces neither
            if p.future.cancelled():
                continue
            if isinstance(r, BaseException):
                p.future.set_exception(r)
            else:
                p.future.set_result(r)
        self._held.extendleft(reversed(more))  # before the held steps of their streams: stream order holds
        if self._on_batch is not None:
            self._on_batch(len(live), waits, seconds)

    # ------------------------------------------------------------ in the worker thread
    def _run(self, live: list[_Pending]) -> list:
        """One batch: each step's outputs or error, or _MORE for a step with pieces left."""
        results: list = [None] * len(live)
        items, where = [], []
        for i, p in enumerate(live):
            try:
                items.append((p.stream, self._next_piece(p) if p.frames else p.chunk))
                where.append(i)
            except EdgeRnnError as e:
                results[i] = e
            except Exception as e:  # noqa: BLE001 - whatever the chunk's own content raised: its error alone
                results[i] = ShapeError(f"cannot be used ({type(e).__name__}: {e})")
        for i, r in zip(where, self.model.step_batch(items, on_error="isolate")):
            p = live[i]
            results[i] = self._piece_done(p, r) if p.frames and not isinstance(r, BaseException) else r
        return results

    def _next_piece(self, p: _Pending) -> Any:
        """The step's next piece; before the first, the whole chunk is checked and the stream's state kept."""
        if not p.done:
            if self.model.check(p.stream, p.chunk) != p.frames:  # not as its shape said: the model refuses it
                p.frames = 0
                return p.chunk
            p.undo = p.stream.checkpoint()
        return self._split.piece(p.chunk, p.done, min(p.done + self.max_batch_frames, p.frames))

    def _piece_done(self, p: _Pending, out: dict) -> Any:
        """A piece ran: its outputs kept; the joined outputs once it was the last, else _MORE."""
        p.outs.append({k: v.copy() for k, v in out.items()})
        p.done = min(p.done + self.max_batch_frames, p.frames)
        if p.done < p.frames:
            return _MORE
        outs, p.outs, p.undo = p.outs, [], None
        return self._split.join(outs)


def _live(batch: list[_Pending]) -> list[_Pending]:
    """The steps whose clients still wait; a step given up midway is undone (it was never answered)."""
    live = []
    for p in batch:
        if p.future.cancelled():
            _undo(p)
        else:
            live.append(p)
    return live


def _undo(p: _Pending) -> None:
    """The stream's state put back as it was before the step's first piece, if any ran."""
    undo, p.undo = p.undo, None
    if undo is not None:
        try:
            undo()
        except StreamError:  # closed meanwhile: nothing to put back
            pass


def _abandon(live: list[_Pending]) -> None:
    """The consumer is cancelled while ``live`` runs: each client still waiting is told."""
    for p in live:
        if not p.future.done():
            p.future.set_exception(ShuttingDown("the server stopped while this step ran; its stream may or may not "
                                                "have advanced"))
