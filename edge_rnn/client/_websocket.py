"""The client over a WebSocket: one connection is one stream, blocking or async.

A call interrupted between its message and its reply (a task cancelled, an ``asyncio.wait_for`` timed out,
Ctrl-C) leaves that reply on the socket, and a refusal closes it: either way the socket takes no more calls
(:class:`InStep`). The next call resumes the stream from the checkpoint, or, with ``resume=False``, raises
``out_of_step`` or ``unknown_stream``: never a reply meant for another call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
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
    reset_plan,
    run,
    snapshot_plan,
    snapshot_steps,
    step_plan,
)
from edge_rnn.client._width import WS_DESCRIBE_S, Described, aask_width, ask_width, given_width, output
from edge_rnn.client._wire import ABANDON_S, GIVEN_UP, InStep, auth_headers, chunk_bytes, http_base, said, shown

__all__ = ["WebSocketStream", "SyncWebSocketStream"]

_WS_1001_GOING_AWAY, _WS_1008_POLICY_VIOLATION, _WS_1009_MESSAGE_TOO_BIG = 1001, 1008, 1009


def _ws_url(url: str) -> str:
    """The socket's URL from any URL form a client takes (:func:`http_base`): ``ws(s)://.../v1/streams/ws``."""
    return "ws" + http_base(url)[4:] + "/v1/streams/ws"


def _refused(url: str, e: Any) -> ServiceError:
    """A handshake answered with an HTTP status (a token refused: 401; no socket at that path: 403 or 404). One that
    got no valid answer (a server closing as it stops) stays websockets' InvalidHandshake: a transport error, as an
    OSError is, which a resuming client takes for a server gone and reconnects past."""
    return ServiceError(e.response.status_code, "refused", f"the server refused the connection to {shown(url)}")


def _closed(e: Any) -> ServiceError:
    """A ConnectionClosed from websockets as the ServiceError it stands for: the close code and its reason."""
    frame = getattr(e, "rcvd", None)
    code = frame.code if frame is not None else 1006
    reason = frame.reason if frame is not None and frame.reason else "closed"
    if code == _WS_1009_MESSAGE_TOO_BIG:  # a proxy in front (Ray's, at 16 MiB) closes so with a reason of its own
        return ServiceError(code, "too_large", "expected a message within the limit of the server or of a proxy in "
                            f"front of it, got one over it: the connection was closed ({reason})")
    return ServiceError(code, reason, f"the server closed the connection ({code})")


def _in_step() -> InStep:
    return InStep(_WS_1008_POLICY_VIOLATION, _WS_1008_POLICY_VIOLATION)


def _closed_by(in_step: InStep, e: ServiceError) -> ServiceError:
    """``e``, a refusal that closed the socket: the socket's later calls say so (a resume opens another)."""
    in_step.give_up(f"expected an open stream, got one the server closed after {e.status} {e.code}: open a new one "
                    "(resume=True does)")
    return e


def _error_body(reply: Any) -> dict | None:
    """The server's error message, if ``reply`` is one."""
    if not isinstance(reply, str):
        return None
    try:
        body = json.loads(reply)
    except (ValueError, RecursionError):  # not JSON, or nested past what the parser takes (a hostile server)
        return None
    return body if isinstance(body, dict) and body.get("type") == "error" else None


def _judged(in_step: InStep, journal: Journal | None, reply: Any) -> dict | None:
    """None where ``reply`` answers the call (the socket in step again); else the server's error, whose close the
    caller reads before raising it. A draining server's ``shutting_down`` (to a resuming client) is raised at once:
    the socket is not closed, it still answers a snapshot."""
    body = _error_body(reply)
    if body is None:
        in_step.answered()
    elif journal is not None and body.get("code") == "shutting_down":
        in_step.answered()
        raise _ws_error(body, _WS_1001_GOING_AWAY)
    return body


def _snapshot_of(reply: Any) -> bytes:
    """The snapshot in the snapshot command's answer (anything else: ServiceError ``bad_reply``)."""
    try:
        return base64.b64decode(json.loads(reply)["data"], validate=True)
    except (TypeError, ValueError, KeyError, RecursionError):  # binascii.Error is a ValueError
        raise ServiceError(1002, "bad_reply", f"expected the snapshot command's answer, got "
                           f"{said(reply, 80)!r}") from None


def _ws_error(body: dict, close_code: int) -> ServiceError:
    """The server's error message, and the close code that followed it."""
    return ServiceError(close_code, said(body.get("code", "error")), said(body.get("message", "")))


def _ws_options(token: str | None, resuming: bool) -> dict[str, Any]:
    # float32 frames barely compress: deflate is waste; a resuming client waits less on a dead server's close
    return {"additional_headers": auth_headers(token), "max_size": None, "compression": None,
            **({"close_timeout": ABANDON_S} if resuming else {})}


def _ws_journal(snapshot: bytes | None, resume: bool, every: Any, timeout: Any) -> Journal | None:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    return journal(snapshot, resume=resume, every=every, timeout=timeout,
                   gone=(OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed))


def _restore_message(snapshot: bytes) -> str:
    return json.dumps({"type": "restore", "data": base64.b64encode(snapshot).decode()})


def _restored(reply: Any, snapshot: bytes) -> None:
    """The restore command's answer checked: the server's stream holds the snapshot's step count now."""
    try:
        answer = json.loads(reply)
        steps = snapshot_steps(snapshot)
        ok = answer.get("type") == "restore" and (steps is None or answer.get("steps") == steps)
    except (TypeError, ValueError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise ServiceError(1002, "bad_reply", f"expected the restore command's answer, got {str(reply)[:80]!r}")


def _restore_refused(in_step: InStep, e: ServiceError, size: int) -> ServiceError:
    """A restore refused (or answered wrongly): the socket takes no call (its state is not the snapshot's)."""
    in_step.give_up(f"expected a stream restored from the snapshot, got {e.status} {e.code}: open a new one")
    if e.status == _WS_1009_MESSAGE_TOO_BIG:
        return ServiceError(e.status, "too_large", f"the snapshot as a restore message ({size} bytes) is over the "
                            "server's message limit: open the stream from it over HTTP instead")
    return e


CLOSE_WAIT = 2.0  # seconds close() waits for the server's close after its end message


class WebSocketStream(AsyncResumable):
    """One stream over a WebSocket, async: ``async with await WebSocketStream.open(url) as s: await s.step(x)``.

    A stream opened with ``snapshot=`` resumes from it (the ``restore`` command).
    """

    def __init__(self, socket: Any, shape: Described, *, journal: Journal | None = None, url: str = "",
                 token: str | None = None):
        self._ws, self._shape, self.width, self._journal = socket, shape, shape.width, journal
        self._url, self._token, self._in_step = url, token, _in_step()

    @classmethod
    async def open(cls, url: str, *, token: str | None = None, width: int | None = None,
                   snapshot: bytes | None = None, resume: bool = True, checkpoint_every: int = 10,
                   resume_timeout: float = 30.0) -> WebSocketStream:
        j = _ws_journal(snapshot, resume, checkpoint_every, resume_timeout)
        socket_url, width = _ws_url(url), given_width(width)
        shape = Described(width) if width is not None else await aask_width(url, token, WS_DESCRIBE_S)
        s = cls(None, shape, journal=j, url=socket_url, token=token)
        try:
            await (s._open(snapshot) if j is None else arun(open_plan(j), s._do))
        except BaseException:
            if s._ws is not None:
                await s._abandon()
            raise
        return s

    async def _ask(self, message: Any) -> Any:
        """Send, and the reply; an error reply (and the close after it) raises ServiceError."""
        from websockets.exceptions import ConnectionClosed

        self._in_step.sending()
        try:
            await self._ws.send(message)
            reply = await self._ws.recv()
        except ConnectionClosed as e:
            raise _closed_by(self._in_step, _closed(e)) from None
        body = _judged(self._in_step, self._journal, reply)
        if body is None:
            return reply
        try:
            await asyncio.wait_for(self._ws.recv(), 10)
            code = 1011  # an error not followed by a close: not what the server does
        except ConnectionClosed as e:
            code = _closed(e).status
        except asyncio.TimeoutError:
            code = 1011
        raise _closed_by(self._in_step, _ws_error(body, code))

    async def step(self, x: Any) -> np.ndarray:
        chunk = chunk_bytes(x)
        out = await (self._step(chunk) if self._journal is None else arun(step_plan(self._journal, chunk), self._do))
        return output(out, *self._shape)

    async def snapshot(self) -> bytes:
        return await (self._snapshot() if self._journal is None else arun(snapshot_plan(self._journal), self._do))

    async def reset(self) -> None:
        await (self._reset() if self._journal is None else arun(reset_plan(self._journal), self._do))

    async def close(self, *, wait: bool = True) -> None:
        """End the stream and close the socket; ``wait`` (a bounded time) for the server's close first."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(json.dumps({"type": "end"}))
            if not wait:  # a socket given up may still hold replies: not read
                return
            # the server's close 1000 waited for (a bounded time): closing first, the client cut the server's
            # answer short, which Ray Serve's proxy logged as an error with a traceback, once per stream
            await asyncio.wait_for(self._ws.wait_closed(), CLOSE_WAIT)
        except (ConnectionClosed, asyncio.TimeoutError):
            pass  # already closed by the server (after an error), or not closing in time
        finally:
            await self._ws.close()

    async def _open(self, snapshot: bytes | None) -> None:
        import websockets

        try:
            self._ws = await websockets.connect(self._url,
                                                **_ws_options(self._token, self._journal is not None))
        except websockets.exceptions.InvalidStatus as e:
            raise _refused(self._url, e) from None
        self._in_step = _in_step()
        if snapshot:
            message = _restore_message(snapshot)
            try:
                _restored(await self._ask(message), snapshot)
            except ServiceError as e:
                raise _restore_refused(self._in_step, e, len(message)) from None

    async def _step(self, chunk: bytes) -> bytes:
        return await self._ask(chunk)

    async def _snapshot(self) -> bytes:
        return _snapshot_of(await self._ask(json.dumps({"type": "snapshot"})))

    async def _reset(self) -> None:
        await self._ask(json.dumps({"type": "reset"}))

    async def _abandon(self) -> None:
        self._in_step.give_up(GIVEN_UP)
        try:
            await asyncio.wait_for(self.close(wait=False), ABANDON_S)
        except Exception:  # noqa: BLE001 - best effort: the stream is given up either way
            pass


class SyncWebSocketStream(SyncResumable):
    """One stream over a WebSocket, blocking; ``snapshot=`` resumes from it (the ``restore`` command)."""

    def __init__(self, url: str, *, token: str | None = None, width: int | None = None,
                 snapshot: bytes | None = None, resume: bool = True, checkpoint_every: int = 10,
                 resume_timeout: float = 30.0):
        self._journal = _ws_journal(snapshot, resume, checkpoint_every, resume_timeout)
        self._url, self._token, width = _ws_url(url), token, given_width(width)
        self._shape = Described(width) if width is not None else ask_width(url, token, WS_DESCRIBE_S)
        self.width = self._shape.width
        self._ws: Any = None
        self._in_step = _in_step()
        try:
            self._open(snapshot) if self._journal is None else run(open_plan(self._journal), self._do)
        except BaseException:
            if self._ws is not None:
                self._abandon()
            raise

    def _ask(self, message: Any) -> Any:
        from websockets.exceptions import ConnectionClosed

        self._in_step.sending()
        try:
            self._ws.send(message)
            reply = self._ws.recv()
        except ConnectionClosed as e:
            raise _closed_by(self._in_step, _closed(e)) from None
        body = _judged(self._in_step, self._journal, reply)
        if body is None:
            return reply
        try:
            self._ws.recv(timeout=10)
            code = 1011
        except ConnectionClosed as e:
            code = _closed(e).status
        except TimeoutError:
            code = 1011
        raise _closed_by(self._in_step, _ws_error(body, code))

    def step(self, x: Any) -> np.ndarray:
        chunk = chunk_bytes(x)
        out = self._step(chunk) if self._journal is None else run(step_plan(self._journal, chunk), self._do)
        return output(out, *self._shape)

    def snapshot(self) -> bytes:
        return self._snapshot() if self._journal is None else run(snapshot_plan(self._journal), self._do)

    def reset(self) -> None:
        if self._journal is None:
            self._reset()
        else:
            run(reset_plan(self._journal), self._do)

    def close(self, *, wait: bool = True) -> None:
        """End the stream and close the socket; ``wait`` (a bounded time) for the server's close first."""
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(json.dumps({"type": "end"}))
            if not wait:  # a socket given up may still hold replies: not read
                return
            deadline = time.monotonic() + CLOSE_WAIT
            while time.monotonic() < deadline:  # until the server's close 1000 (as the async client waits)
                self._ws.recv(timeout=max(0.0, deadline - time.monotonic()))
        except (ConnectionClosed, TimeoutError):
            pass  # closed by the server (as asked, or after an error), or not closing in time
        finally:
            self._ws.__exit__(None, None, None)

    def _open(self, snapshot: bytes | None) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        try:  # entered as the context manager it is (websockets 16+ warns otherwise); left in close()
            self._ws = connect(self._url, **_ws_options(self._token, self._journal is not None)).__enter__()
        except InvalidStatus as e:
            raise _refused(self._url, e) from None
        self._in_step = _in_step()
        if snapshot:
            message = _restore_message(snapshot)
            try:
                _restored(self._ask(message), snapshot)
            except ServiceError as e:
                raise _restore_refused(self._in_step, e, len(message)) from None

    def _step(self, chunk: bytes) -> bytes:
        return self._ask(chunk)

    def _snapshot(self) -> bytes:
        return _snapshot_of(self._ask(json.dumps({"type": "snapshot"})))

    def _reset(self) -> None:
        self._ask(json.dumps({"type": "reset"}))

    def _abandon(self) -> None:
        self._in_step.give_up(GIVEN_UP)
        try:
            self.close(wait=False)
        except Exception:  # noqa: BLE001 - best effort: the stream is given up either way
            pass
