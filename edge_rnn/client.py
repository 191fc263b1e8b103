"""A client for ``edge-rnn serve``: one stream over HTTP or WebSocket, sync or async (the ``client`` extra).

>>> with HttpStream("http://127.0.0.1:8000") as s:          # doctest: +SKIP
...     y = s.step(chunk)                                    # (time, features) float32 -> primary output
...     saved = s.snapshot()
>>> with HttpStream("http://127.0.0.1:8000", snapshot=saved) as s:   # resumes where it was     # doctest: +SKIP
...     y = s.step(next_chunk)

``AsyncHttpStream`` and ``WebSocketStream`` (async) take the same calls with
``await``; ``SyncWebSocketStream`` is the blocking WebSocket one. A server
error raises :class:`ServiceError` with its HTTP status (or WebSocket close
code) and the server's error code; outputs come back as float32 arrays of
shape ``(time, output features)``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np

from edge_rnn.errors import EdgeRnnError

__all__ = ["ServiceError", "HttpStream", "AsyncHttpStream", "WebSocketStream", "SyncWebSocketStream"]


class ServiceError(EdgeRnnError):
    """The server refused a request: ``status`` (HTTP) or close code (WebSocket), and its error ``code``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


def _chunk(x: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(x, dtype="<f4")).tobytes()


def _output(data: bytes, width: int | None) -> np.ndarray:
    y = np.frombuffer(data, dtype="<f4")
    return y.reshape(-1, width) if width else y


def _raise_for(response: Any) -> None:
    if response.status_code >= 400:
        try:
            body = response.json()
            code, message = body.get("code", "error"), body.get("message", "")
        except ValueError:
            code, message = "error", response.text[:200]
        raise ServiceError(response.status_code, code, message)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _step_headers(step: int) -> dict[str, str]:
    """A binary step's headers: its media type (the server answers 415 without one) and its sequence number."""
    return {"Content-Type": "application/octet-stream", "X-Step": str(step)}


class HttpStream:
    """One stream over HTTP, blocking; every step carries ``X-Step``, so a retried request cannot apply twice."""

    def __init__(self, url: str, *, token: str | None = None, snapshot: bytes | None = None, width: int | None = None,
                 timeout: float = 30.0):
        import httpx

        self._http = httpx.Client(base_url=url.rstrip("/"), headers=_headers(token), timeout=timeout)
        r = self._http.post("/v1/streams", content=snapshot or b"")
        _raise_for(r)
        self.id, self.width, self.steps = r.json()["stream_id"], width, 0

    def step(self, x: Any) -> np.ndarray:
        r = self._http.post(f"/v1/streams/{self.id}/steps", content=_chunk(x), headers=_step_headers(self.steps))
        _raise_for(r)
        self.steps += 1
        return _output(r.content, self.width)

    def snapshot(self) -> bytes:
        r = self._http.get(f"/v1/streams/{self.id}/snapshot")
        _raise_for(r)
        return r.content

    def close(self) -> None:
        try:
            self._http.delete(f"/v1/streams/{self.id}")
        finally:
            self._http.close()

    def __enter__(self) -> HttpStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncHttpStream:
    """One stream over HTTP, async: ``s = await AsyncHttpStream.open(url)``, then ``await s.step(x)``."""

    def __init__(self, http: Any, stream_id: str, width: int | None):
        self._http, self.id, self.width, self.steps = http, stream_id, width, 0

    @classmethod
    async def open(cls, url: str, *, token: str | None = None, snapshot: bytes | None = None,
                   width: int | None = None, timeout: float = 30.0) -> AsyncHttpStream:
        import httpx

        http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=_headers(token), timeout=timeout)
        r = await http.post("/v1/streams", content=snapshot or b"")
        if r.status_code >= 400:
            await http.aclose()
        _raise_for(r)
        return cls(http, r.json()["stream_id"], width)

    async def step(self, x: Any) -> np.ndarray:
        r = await self._http.post(f"/v1/streams/{self.id}/steps", content=_chunk(x),
                                  headers=_step_headers(self.steps))
        _raise_for(r)
        self.steps += 1
        return _output(r.content, self.width)

    async def snapshot(self) -> bytes:
        r = await self._http.get(f"/v1/streams/{self.id}/snapshot")
        _raise_for(r)
        return r.content

    async def close(self) -> None:
        try:
            await self._http.delete(f"/v1/streams/{self.id}")
        finally:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncHttpStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _ws_url(url: str) -> str:
    base = url.rstrip("/")
    base = "ws" + base[4:] if base.startswith("http") else base
    return base if base.endswith("/v1/streams/ws") else base + "/v1/streams/ws"


def _closed(e: Any) -> ServiceError:
    """A ConnectionClosed from websockets as the ServiceError it stands for: the close code and its reason."""
    frame = getattr(e, "rcvd", None)
    code = frame.code if frame is not None else 1006
    reason = frame.reason if frame is not None and frame.reason else "closed"
    return ServiceError(code, reason, f"the server closed the connection ({code})")


def _is_error(reply: Any) -> bool:
    if not isinstance(reply, str):
        return False
    try:
        return json.loads(reply).get("type") == "error"
    except (ValueError, AttributeError):
        return False


def _ws_error(message: Any, close_code: int) -> ServiceError:
    """The server's error message, and the close code that followed it."""
    body = json.loads(message)
    return ServiceError(close_code, body.get("code", "error"), body.get("message", ""))


class WebSocketStream:
    """One stream over a WebSocket, async: ``async with await WebSocketStream.open(url) as s: await s.step(x)``.

    A WebSocket stream starts from zeros; to resume from a snapshot, use HTTP (``POST /v1/streams`` with it).
    """

    def __init__(self, socket: Any, width: int | None):
        self._ws, self.width = socket, width

    @classmethod
    async def open(cls, url: str, *, token: str | None = None, width: int | None = None) -> WebSocketStream:
        import websockets

        try:
            socket = await websockets.connect(_ws_url(url), additional_headers=_headers(token), max_size=None,
                                              compression=None)  # float32 frames barely compress: deflate is waste
        except websockets.exceptions.InvalidStatus as e:
            raise ServiceError(e.response.status_code, "refused", "the server refused the connection") from None
        return cls(socket, width)

    async def _ask(self, message: Any) -> Any:
        """Send, and the reply; an error reply (and the close after it) raises ServiceError."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(message)
            reply = await self._ws.recv()
        except ConnectionClosed as e:
            raise _closed(e) from None
        if _is_error(reply):
            try:
                await asyncio.wait_for(self._ws.recv(), 10)
                code = 1011  # an error not followed by a close: not what the server does
            except ConnectionClosed as e:
                code = _closed(e).status
            except asyncio.TimeoutError:
                code = 1011
            raise _ws_error(reply, code)
        return reply

    async def step(self, x: Any) -> np.ndarray:
        return _output(await self._ask(_chunk(x)), self.width)

    async def snapshot(self) -> bytes:
        return base64.b64decode(json.loads(await self._ask(json.dumps({"type": "snapshot"})))["data"])

    async def reset(self) -> None:
        await self._ask(json.dumps({"type": "reset"}))

    async def close(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass  # already closed by the server, after an error
        finally:
            await self._ws.close()

    async def __aenter__(self) -> WebSocketStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncWebSocketStream:
    """One stream over a WebSocket, blocking."""

    def __init__(self, url: str, *, token: str | None = None, width: int | None = None):
        from websockets.sync.client import connect

        # entered as the context manager it is (websockets 16+ warns otherwise); left in close()
        self._ws = connect(_ws_url(url), additional_headers=_headers(token), max_size=None,
                           compression=None).__enter__()
        self.width = width

    def _ask(self, message: Any) -> Any:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(message)
            reply = self._ws.recv()
        except ConnectionClosed as e:
            raise _closed(e) from None
        if _is_error(reply):
            try:
                self._ws.recv(timeout=10)
                code = 1011
            except ConnectionClosed as e:
                code = _closed(e).status
            except TimeoutError:
                code = 1011
            raise _ws_error(reply, code)
        return reply

    def step(self, x: Any) -> np.ndarray:
        return _output(self._ask(_chunk(x)), self.width)

    def snapshot(self) -> bytes:
        return base64.b64decode(json.loads(self._ask(json.dumps({"type": "snapshot"})))["data"])

    def reset(self) -> None:
        self._ask(json.dumps({"type": "reset"}))

    def close(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass  # already closed by the server, after an error
        finally:
            self._ws.__exit__(None, None, None)

    def __enter__(self) -> SyncWebSocketStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
