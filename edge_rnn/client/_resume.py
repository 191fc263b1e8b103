"""How a client's stream outlives the server process that held it: checkpoints, and a replay from the last one.

The client keeps the last checkpoint (a snapshot fetched every ``every``
steps, or the one the stream was opened from; a stream opened from zeros
fetches its snapshot at once: a server of another model refuses it) and the
chunks sent since, with the outputs already returned for them (and a reset,
where there was one). When the stream needs a resume (a transport error, a
502/503/504, a proxy's 500, a 404 ``unknown_stream``, a 409 ``out_of_order``,
``out_of_step`` (a call interrupted between its request and its reply), a
WebSocket closed with 1001, 1006, 1011, 1012 or 1013) it opens a new stream
from the checkpoint, replays those chunks in order (each output must equal,
bit for bit, the one returned before: else :class:`ReplayDiverged`) and then
sends the request that failed. The new stream's state is the checkpoint plus
each chunk once. A server that is draining (``shutting_down``) still answers
a snapshot: that one is taken, and nothing needs replaying. The server's own
503 ``overloaded`` (over HTTP: refused before it was applied, the stream
alive) is no resume: the same request is sent again after ``Retry-After``.

The logic is written once, as generators that yield operations and are sent
their results (or thrown their errors): ``("open", snapshot | None)``,
``("step", chunk) -> reply``, ``("snapshot",) -> bytes``, ``("reset",)``,
``("abandon",)`` (best effort, never raises) and ``("sleep", seconds)``.
:func:`run` drives one with a blocking client's calls, :func:`arun` with an
async client's. No transport library is imported here: each client names the
errors of its own transport that mean the server is gone.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Self

from edge_rnn._snapshot_layout import MAGIC, unpack
from edge_rnn.errors import EdgeRnnError

__all__ = ["ServiceError", "ReplayDiverged", "Journal", "Resumable", "SyncResumable", "AsyncResumable", "journal",
           "open_plan", "step_plan", "snapshot_plan", "reset_plan", "run", "arun", "snapshot_steps", "interrupted"]

Op = tuple
Plan = Generator[Op, Any, Any]

_GONE = frozenset((502, 503, 504, 1001, 1006, 1011, 1012, 1013))  # HTTP statuses and close codes: the server is gone
# the stream gone, or out of step with the client's record (which is the authority: a resume rebuilds from it)
_RESUMED_CODES = frozenset(("unknown_stream", "out_of_order", "out_of_step"))
_RESET = None  # a journal entry: the stream was reset there
_FIRST_WAIT, _LONGEST_WAIT = 0.05, 1.0  # seconds between tries to resume: doubling from the first to the longest


class ServiceError(EdgeRnnError):
    """The server refused a request: ``status`` (HTTP) or close code (WebSocket), and its error ``code``;
    ``proxied``: the answer was not the server's own JSON error (a proxy's page, a crash's); ``retry_after``: the
    seconds its ``Retry-After`` said, if it said."""

    def __init__(self, status: int, code: str, message: str, *, proxied: bool = False,
                 retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.proxied, self.retry_after = status, code, proxied, retry_after


class ReplayDiverged(ServiceError):
    """A chunk replayed on a resumed stream gave another output than the one returned for it before: the resumed
    stream is not the stream those outputs came from (another model or build behind the same address)."""

    def __init__(self, index: int, before: bytes, now: bytes):
        at = next((i // 4 for i, (a, b) in enumerate(zip(before, now)) if a != b), min(len(before), len(now)) // 4)
        super().__init__(409, "replay_diverged", f"chunk {index} after the checkpoint: expected the output returned "
                         f"before ({len(before)} bytes), got another ({len(now)} bytes, first difference at float "
                         f"{at}); the resumed stream is not the one the outputs came from")


ServiceError.__module__ = ReplayDiverged.__module__ = "edge_rnn.client"  # where they are imported from


def interrupted(status: int) -> ServiceError:
    """What a stream answers once a call on it was interrupted between its request and its reply (a task
    cancelled, an ``asyncio.wait_for`` timed out, Ctrl-C): the server may have applied a step the client never
    counted, or its reply is still to come. With resume on, the next call resumes from the checkpoint."""
    return ServiceError(status, "out_of_step", "expected a stream in step with this client, got one whose last call "
                        "was interrupted between its request and its reply: open a new stream (resume=True does)")


def _in_place(e: BaseException) -> bool:
    """The server's own 503 ``overloaded`` over HTTP: refused before it was applied, the stream alive."""
    return isinstance(e, ServiceError) and e.status == 503 and e.code == "overloaded" and not e.proxied


def snapshot_steps(data: bytes) -> int | None:
    """The step count in a snapshot's header, read without the runtime; None if the header cannot be read (the
    server judges the snapshot, not the client)."""
    try:
        if not data.startswith(MAGIC):
            return None
        steps = unpack(data)[0].get("steps", 0)
    except (struct.error, ValueError, AttributeError, RecursionError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


@dataclass
class Journal:
    """One stream's last checkpoint (None: zeros), the chunks sent since with their outputs (None: a reset), and
    the resumes so far. ``gone``: the transport's errors that mean the server is gone."""

    every: int
    timeout: float
    gone: tuple[type, ...]
    checkpoint: bytes | None = None
    checkpoint_steps: int | None = 0
    entries: list[tuple[bytes, bytes] | None] = field(default_factory=list)
    resumes: int = 0
    last_resume_s: float | None = None

    def keep(self, snapshot: bytes | None) -> None:
        """``snapshot`` (None: zeros) holds every chunk sent so far: the new checkpoint."""
        self.checkpoint = snapshot
        self.checkpoint_steps = 0 if snapshot is None else snapshot_steps(snapshot)
        self.entries.clear()

    def is_gone(self, e: BaseException) -> bool:
        """Whether ``e`` means the stream's server (or the stream) is gone, or the stream is out of step with this
        record, so a new stream from the record is the cure."""
        if isinstance(e, ReplayDiverged) or _in_place(e):
            return False
        if isinstance(e, ServiceError):  # the model failing on a chunk (over a WebSocket 1011) is no server gone
            return e.code != "inference_failed" and (e.status in _GONE or e.code in _RESUMED_CODES
                                                     or (e.status == 500 and e.proxied))
        return isinstance(e, self.gone)


def journal(snapshot: bytes | None, *, resume: bool, every: Any, timeout: Any, gone: tuple[type, ...]
            ) -> Journal | None:
    """The journal of a stream opened from ``snapshot`` (None: zeros); None when ``resume`` is off."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise EdgeRnnError(f"checkpoint_every: expected an integer >= 1 (steps between checkpoints), got {every!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise EdgeRnnError(f"resume_timeout: expected seconds >= 0, got {timeout!r}")
    if not resume:
        return None
    j = Journal(every, float(timeout), gone)
    j.keep(snapshot or None)
    return j


def open_plan(j: Journal) -> Plan:
    """The stream opened from the checkpoint; opened from zeros, its snapshot is the first checkpoint (one request
    more), so that a resume on a server of another model is refused (``bad_snapshot``) where zeros would be taken
    by any model of the same frame size."""
    yield from _tried(j, ("open", j.checkpoint))
    if j.checkpoint is None:
        j.keep((yield from _tried(j, ("snapshot",))))


def step_plan(j: Journal, chunk: bytes) -> Plan:
    """One step: its reply (resumed if the stream is gone); then, every ``j.every`` steps, a new checkpoint."""
    out = yield from _guarded(j, ("step", chunk))
    j.entries.append((chunk, out))
    if len(j.entries) >= j.every:
        yield from _checkpoint(j)
    return out


def snapshot_plan(j: Journal) -> Plan:
    """The stream's snapshot (resumed first if the stream is gone): the new checkpoint too."""
    snap = yield from _guarded(j, ("snapshot",))
    j.keep(snap)
    return snap


def reset_plan(j: Journal) -> Plan:
    """Back to zeros (resumed first if the stream is gone). The chunks before it no longer count: the journal
    keeps its checkpoint, which a server of another model refuses, and the reset, replayed on a resume."""
    yield from _guarded(j, ("reset",))
    j.entries[:] = [_RESET]


def _tried(j: Journal, op: Op) -> Plan:
    """``op``'s result; refused by the server itself as ``overloaded`` (an HTTP 503: not applied, the stream
    alive), the same request again after its Retry-After (at most 1 s), for up to ``j.timeout`` seconds: then that
    refusal is raised (no resume: the stream is alive, the server busy)."""
    t0, backoff = time.monotonic(), _FIRST_WAIT
    while True:
        try:
            return (yield op)
        except ServiceError as e:
            if not _in_place(e):
                raise
            wait = min(e.retry_after or backoff, _LONGEST_WAIT)
            if time.monotonic() + wait > t0 + j.timeout:
                raise
        backoff = min(2 * backoff, _LONGEST_WAIT)
        yield ("sleep", wait)


def _guarded(j: Journal, op: Op) -> Plan:
    try:
        return (yield from _tried(j, op))
    except Exception as e:
        if not j.is_gone(e):
            raise
        return (yield from _resume(j, op, e))


def _checkpoint(j: Journal) -> Plan:
    """A new checkpoint; a refusal that does not mean the stream is gone leaves the old one (tried again after
    the next step): the step it follows was applied and its output is the caller's."""
    try:
        snap = yield from _tried(j, ("snapshot",))
    except Exception as e:
        if not j.is_gone(e):
            return
        snap = yield from _resume(j, ("snapshot",), e)
    j.keep(snap)


def _resume(j: Journal, op: Op, error: Exception) -> Plan:
    """A new stream with the old one's state, then ``op`` on it (its result); tried with a growing wait until
    ``j.timeout`` seconds have passed, then the last error is raised. A draining server's snapshot of the old
    stream stands for the checkpoint and the replay."""
    t0 = time.monotonic()
    if getattr(error, "code", None) == "shutting_down":  # a draining server still answers a snapshot
        try:
            j.keep((yield ("snapshot",)))
        except Exception:  # noqa: BLE001 - none after all: the checkpoint and the replay then
            pass
    wait = _FIRST_WAIT
    while True:
        yield from _abandon()  # the old stream, or the new one a failed try left half made
        try:
            result = yield from _reopen(j, op)
        except Exception as e:
            if not j.is_gone(e):  # a replay that diverged, a checkpoint refused, overloaded for too long
                yield from _abandon()  # never stepped on: a later call resumes anew (and meets the same refusal)
                raise e
            error = e
        else:
            j.resumes += 1
            j.last_resume_s = time.monotonic() - t0
            return result
        if time.monotonic() + wait > t0 + j.timeout:
            yield from _abandon()  # the journal is kept: a later call tries again
            raise error
        yield ("sleep", wait)
        wait = min(2 * wait, _LONGEST_WAIT)


def _abandon() -> Plan:
    try:
        yield ("abandon",)
    except Exception:  # noqa: BLE001 - best effort: the stream is given up either way
        pass


def _reopen(j: Journal, op: Op) -> Plan:
    """A new stream from the checkpoint, the chunks since replayed (each output as returned before; a reset as a
    reset), then ``op``."""
    yield from _tried(j, ("open", j.checkpoint))
    for k, entry in enumerate(j.entries):
        if entry is _RESET:
            yield from _tried(j, ("reset",))
            continue
        chunk, before = entry
        now = yield from _tried(j, ("step", chunk))
        if bytes(now) != before:
            raise ReplayDiverged(k, before, bytes(now))
    return (yield from _tried(j, op))


class Resumable:
    """What every stream tells of its resumes (all zero with ``resume=False``)."""

    _journal: Journal | None = None

    @property
    def resumes(self) -> int:
        """How many times the stream was resumed on a new server stream."""
        return self._journal.resumes if self._journal is not None else 0

    @property
    def last_resume_s(self) -> float | None:
        """Seconds the last resume took, from the failure seen to the request answered on the new stream."""
        return self._journal.last_resume_s if self._journal is not None else None


class SyncResumable(Resumable):
    """A blocking stream: a context manager that closes it, and its operations done by method name."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, op: tuple) -> Any:
        return getattr(self, "_" + op[0])(*op[1:])


class AsyncResumable(Resumable):
    """An async stream: an async context manager that closes it, and its operations awaited by method name."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _do(self, op: tuple) -> Any:
        return await getattr(self, "_" + op[0])(*op[1:])


def run(plan: Plan, do: Callable[[Op], Any]) -> Any:
    """``plan`` driven by a blocking client: each operation done by ``do`` (a sleep by this thread)."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            op = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as done:
            return done.value
        result, error = None, None
        try:
            result = time.sleep(op[1]) if op[0] == "sleep" else do(op)
        except Exception as e:  # noqa: BLE001 - handed to the plan, which decides
            error = e


async def arun(plan: Plan, do: Callable[[Op], Awaitable[Any]]) -> Any:
    """``plan`` driven by an async client: each operation awaited from ``do`` (a sleep on the event loop)."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            op = plan.send(result) if error is None else plan.throw(error)
        except StopIteration as done:
            return done.value
        result, error = None, None
        try:
            result = await asyncio.sleep(op[1]) if op[0] == "sleep" else await do(op)
        except Exception as e:  # noqa: BLE001 - handed to the plan, which decides
            error = e
