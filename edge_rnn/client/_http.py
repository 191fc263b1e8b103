"""The client over HTTP: a stream's steps, snapshot and close as requests, blocking or async.

A step sent and never answered (a task cancelled, Ctrl-C, a reply lost, a proxy's 5xx) may have been applied
by the server and not counted here: the stream is then out of step (:class:`InStep`), and its next call resumes
it (or, with ``resume=False``, raises ``out_of_step``) rather than be refused ``out_of_order`` for ever.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge_rnn.client._resume import (
    AsyncResumable,
    Journal,
    ServiceError,
    SyncResumable,
    arun,
    journal,
    open_plan,
    run,
    snapshot_plan,
    step_plan,
)
from edge_rnn.client._width import Described, aask_width, ask_width, given_width, output
from edge_rnn.client._wire import ABANDON_S, GIVEN_UP, InStep, auth_headers, chunk_bytes, http_base, said

__all__ = ["HttpStream", "AsyncHttpStream"]

_HTTP_409_CONFLICT, _HTTP_404_NOT_FOUND = 409, 404  # out_of_step, unknown_stream (a stream given up)


def _in_step() -> InStep:
    return InStep(_HTTP_409_CONFLICT, _HTTP_404_NOT_FOUND)


def _refusal(response: Any) -> ServiceError | None:
    """The error an answer is, if it is one: the server's own JSON error, or a proxy's (``proxied``)."""
    if response.status_code < 400:
        return None
    try:  # a hostile body nested past what json.loads takes raises RecursionError: no JSON error either
        body = response.json()
        code, message, proxied = said(body.get("code", "error")), said(body.get("message", "")), "code" not in body
    except (ValueError, AttributeError, RecursionError):
        code, message, proxied = "error", response.text[:200], True
    return ServiceError(response.status_code, code, message, proxied=proxied,
                        retry_after=_seconds(response.headers.get("retry-after")))


def _raise_for(response: Any) -> None:
    e = _refusal(response)
    if e is not None:
        raise e


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (an HTTP date, or nothing that reads: None)."""
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return seconds if 0 <= seconds < math.inf else None


def _settled(in_step: InStep, response: Any) -> None:
    """A step's answer: a refusal raised. The stream is in step again, unless the answer is a proxy's 5xx (the
    server behind it may have applied the step)."""
    e = _refusal(response)
    if e is None or not (e.proxied and e.status >= 500):
        in_step.answered()
    if e is not None:
        raise e


def _unanswered(in_step: InStep, e: BaseException) -> None:
    """A step whose request failed: still in step if it never reached the server (no connection was made)."""
    import httpx

    if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        in_step.answered()


def _session(sid: str) -> dict[str, str]:
    """The headers of a request about stream ``sid``: its id, by which a router in front finds its replica."""
    return {"X-Session-Id": sid}


def _step_headers(step: int, sid: str) -> dict[str, str]:
    """A binary step's headers: its media type (the server answers 415 without one) and its sequence number."""
    return {"Content-Type": "application/octet-stream", "X-Step": str(step), **_session(sid)}


def _http_journal(snapshot: bytes | None, resume: bool, every: Any, timeout: Any) -> Journal | None:
    import httpx

    return journal(snapshot, resume=resume, every=every, timeout=timeout, gone=(httpx.TransportError, OSError))


class HttpStream(SyncResumable):
    """One stream over HTTP, blocking; every step carries ``X-Step``, so a retried request cannot apply twice.

    ``X-Step`` counts the steps of the server's stream: it starts at 0 on each stream opened, a resumed one too.
    """

    def __init__(self, url: str, *, token: str | None = None, snapshot: bytes | None = None, width: int | None = None,
                 timeout: float = 30.0, resume: bool = True, checkpoint_every: int = 10,
                 resume_timeout: float = 30.0):
        import httpx

        self._journal = _http_journal(snapshot, resume, checkpoint_every, resume_timeout)
        base, width = http_base(url), given_width(width)
        self._shape = Described(width) if width is not None else ask_width(url, token, timeout)  # before a client
        self.width = self._shape.width
        self._http = httpx.Client(base_url=base, headers=auth_headers(token), timeout=timeout)
        self.steps, self.id = 0, ""
        try:
            self._open(snapshot) if self._journal is None else run(open_plan(self._journal), self._do)
        except BaseException:
            self._discard()
            raise

    def step(self, x: Any) -> np.ndarray:
        chunk = chunk_bytes(x)
        out = self._step(chunk) if self._journal is None else run(step_plan(self._journal, chunk), self._do)
        self.steps += 1
        return output(out, *self._shape)

    def snapshot(self) -> bytes:
        return self._snapshot() if self._journal is None else run(snapshot_plan(self._journal), self._do)

    def close(self) -> None:
        try:
            self._http.delete(f"/v1/streams/{self.id}", headers=_session(self.id))
        except Exception as e:
            if self._journal is None or not self._journal.is_gone(e):
                raise  # with resume on, a server gone is no error: its streams are closed with it
        finally:
            self._http.close()

    # the operations a resume is made of (edge_rnn.client._resume), done by name: _open, _step, _snapshot, ...
    def _open(self, snapshot: bytes | None) -> None:
        r = self._http.post("/v1/streams", content=snapshot or b"")
        _raise_for(r)
        self.id, self._sent, self._in_step = r.json()["stream_id"], 0, _in_step()

    def _step(self, chunk: bytes) -> bytes:
        self._in_step.sending()
        try:
            r = self._http.post(f"/v1/streams/{self.id}/steps", content=chunk,
                                headers=_step_headers(self._sent, self.id))
        except Exception as e:
            _unanswered(self._in_step, e)
            raise
        _settled(self._in_step, r)
        self._sent += 1
        return r.content

    def _snapshot(self) -> bytes:
        self._in_step.check()
        r = self._http.get(f"/v1/streams/{self.id}/snapshot", headers=_session(self.id))
        _raise_for(r)
        return r.content

    def _abandon(self) -> None:
        self._in_step.give_up(GIVEN_UP)
        try:
            self._http.delete(f"/v1/streams/{self.id}", headers=_session(self.id), timeout=ABANDON_S)
        except Exception:  # noqa: BLE001 - best effort: the stream is given up either way
            pass

    def _discard(self) -> None:
        """An open that failed: its stream, if one was made, deleted; the connections closed."""
        try:
            if self.id:
                self._abandon()
        finally:
            self._http.close()


class AsyncHttpStream(AsyncResumable):
    """One stream over HTTP, async: ``s = await AsyncHttpStream.open(url)``, then ``await s.step(x)``."""

    def __init__(self, http: Any, stream_id: str, shape: Described, journal: Journal | None = None):
        self._http, self.id, self._shape, self.width, self.steps = http, stream_id, shape, shape.width, 0
        self._journal, self._sent, self._in_step = journal, 0, _in_step()

    @classmethod
    async def open(cls, url: str, *, token: str | None = None, snapshot: bytes | None = None,
                   width: int | None = None, timeout: float = 30.0, resume: bool = True, checkpoint_every: int = 10,
                   resume_timeout: float = 30.0) -> AsyncHttpStream:
        import httpx

        j = _http_journal(snapshot, resume, checkpoint_every, resume_timeout)
        base, width = http_base(url), given_width(width)
        shape = Described(width) if width is not None else await aask_width(url, token, timeout)  # before a client
        s = cls(httpx.AsyncClient(base_url=base, headers=auth_headers(token), timeout=timeout), "", shape, j)
        try:
            await (s._open(snapshot) if j is None else arun(open_plan(j), s._do))
        except BaseException:
            await s._discard()
            raise
        return s

    async def step(self, x: Any) -> np.ndarray:
        chunk = chunk_bytes(x)
        out = await (self._step(chunk) if self._journal is None else arun(step_plan(self._journal, chunk), self._do))
        self.steps += 1
        return output(out, *self._shape)

    async def snapshot(self) -> bytes:
        return await (self._snapshot() if self._journal is None else arun(snapshot_plan(self._journal), self._do))

    async def close(self) -> None:
        try:
            await self._http.delete(f"/v1/streams/{self.id}", headers=_session(self.id))
        except Exception as e:
            if self._journal is None or not self._journal.is_gone(e):
                raise
        finally:
            await self._http.aclose()

    async def _open(self, snapshot: bytes | None) -> None:
        r = await self._http.post("/v1/streams", content=snapshot or b"")
        _raise_for(r)
        self.id, self._sent, self._in_step = r.json()["stream_id"], 0, _in_step()

    async def _step(self, chunk: bytes) -> bytes:
        self._in_step.sending()
        try:
            r = await self._http.post(f"/v1/streams/{self.id}/steps", content=chunk,
                                      headers=_step_headers(self._sent, self.id))
        except Exception as e:
            _unanswered(self._in_step, e)
            raise
        _settled(self._in_step, r)
        self._sent += 1
        return r.content

    async def _snapshot(self) -> bytes:
        self._in_step.check()
        r = await self._http.get(f"/v1/streams/{self.id}/snapshot", headers=_session(self.id))
        _raise_for(r)
        return r.content

    async def _abandon(self) -> None:
        self._in_step.give_up(GIVEN_UP)
        try:
            await self._http.delete(f"/v1/streams/{self.id}", headers=_session(self.id), timeout=ABANDON_S)
        except Exception:  # noqa: BLE001 - best effort: the stream is given up either way
            pass

    async def _discard(self) -> None:
        """An open that failed: its stream, if one was made, deleted; the connections closed."""
        try:
            if self.id:
                await self._abandon()
        finally:
            await self._http.aclose()
