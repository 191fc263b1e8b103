"""A call of the client interrupted once its request went out and before its reply is read: a blocking client
gets KeyboardInterrupt (Ctrl-C), an async one stalls there until the caller's ``asyncio.wait_for`` cancels it.
The request is sent for real; its reply (or its answer's effect on the server) is left as it is.

    cut = Interrupter(monkeypatch)
    cut.arm("step")          # the next step request; "snapshot", "open" (a restore over a WebSocket), "reset"
    cut.call(s, lambda: s.s.step(x))   # raises KeyboardInterrupt (blocking) or TimeoutError (async)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection as AsyncSocket
from websockets.sync.client import ClientConnection as SyncSocket

__all__ = ["Interrupter", "CUT_S"]

CUT_S = 2.0  # seconds an async call is given before the caller's wait_for cancels it (it stalls for ever)


def _http_kind(request: httpx.Request) -> str:
    path = request.url.path
    if request.method == "POST":
        return "step" if path.endswith("/steps") else "open"
    return "snapshot" if path.endswith("/snapshot") else request.method.lower()


def _ws_kind(message: Any) -> str:
    if isinstance(message, (bytes, bytearray, memoryview)):
        return "step"
    for kind in ("snapshot", "restore", "reset", "end"):
        if f'"{kind}"' in message:
            return "open" if kind == "restore" else kind
    return "other"


class Interrupter:
    """Patches the four clients' transports (for the test): an armed kind of request is sent, then its call is
    interrupted before the reply is read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.kind: str | None = None
        self.skip = 0
        self.hits = 0
        self._patch_http(monkeypatch)
        self._patch_ws(monkeypatch)

    def arm(self, kind: str, skip: int = 0) -> None:
        """Interrupt the ``skip + 1``-th request of ``kind`` from now on (once)."""
        self.kind, self.skip = kind, skip

    def _fires(self, kind: str | None) -> bool:
        if self.kind is None or kind != self.kind:  # unarmed (a receive with no send before it: none to cut)
            return False
        if self.skip:
            self.skip -= 1
            return False
        self.kind, self.hits = None, self.hits + 1
        return True

    def _patch_http(self, mp: pytest.MonkeyPatch) -> None:
        sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

        def send(client: httpx.Client, request: httpx.Request, **kw: Any) -> httpx.Response:
            response = sync_send(client, request, **kw)
            if self._fires(_http_kind(request)):
                raise KeyboardInterrupt  # the answer came and is dropped, as Ctrl-C between the two does
            return response

        async def asend(client: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> httpx.Response:
            response = await async_send(client, request, **kw)
            if self._fires(_http_kind(request)):
                await asyncio.Event().wait()  # until cancelled
            return response

        mp.setattr(httpx.Client, "send", send)
        mp.setattr(httpx.AsyncClient, "send", asend)

    def _patch_ws(self, mp: pytest.MonkeyPatch) -> None:
        sync_send, sync_recv, async_send, async_recv = SyncSocket.send, SyncSocket.recv, AsyncSocket.send, \
            AsyncSocket.recv

        def send(ws: SyncSocket, message: Any, **kw: Any) -> None:
            ws._cut_kind = _ws_kind(message)
            return sync_send(ws, message, **kw)

        def recv(ws: SyncSocket, *a: Any, **kw: Any) -> Any:
            kind, ws._cut_kind = getattr(ws, "_cut_kind", None), None  # the first receive after a send only
            if self._fires(kind):
                raise KeyboardInterrupt  # the reply stays queued on the socket
            return sync_recv(ws, *a, **kw)

        async def asend(ws: AsyncSocket, message: Any, **kw: Any) -> None:
            ws._cut_kind = _ws_kind(message)
            return await async_send(ws, message, **kw)

        async def arecv(ws: AsyncSocket, *a: Any, **kw: Any) -> Any:
            kind, ws._cut_kind = getattr(ws, "_cut_kind", None), None
            if self._fires(kind):
                await asyncio.Event().wait()  # until cancelled; the reply stays queued on the socket
            return await async_recv(ws, *a, **kw)

        mp.setattr(SyncSocket, "send", send)
        mp.setattr(SyncSocket, "recv", recv)
        mp.setattr(AsyncSocket, "send", asend)
        mp.setattr(AsyncSocket, "recv", arecv)

    @staticmethod
    def call(loop: asyncio.AbstractEventLoop | None, call: Callable[[], Any]) -> None:
        """``call()`` (a blocking call, or a coroutine run on ``loop`` under ``asyncio.wait_for``), which must be
        interrupted: KeyboardInterrupt, or the caller's timeout."""
        if loop is None:
            with pytest.raises(KeyboardInterrupt):
                call()
        else:
            with pytest.raises(TimeoutError):
                loop.run_until_complete(asyncio.wait_for(call(), CUT_S))
