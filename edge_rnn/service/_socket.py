"""The stream socket, ``/v1/streams/ws``: one WebSocket connection is one stream, spoken in raw ASGI.

The socket sits in front of the FastAPI app and its middleware, so each
message costs one ``receive`` and one ``send`` of uvicorn's protocol, and
resuming the handler's coroutine walks two frames, not a dozen (the
per-message cost on the event loop is what bounds the server's capacity;
docs/performance.md). No web framework here: every other scope goes to the
ASGI app it wraps.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from edge_rnn.errors import EdgeRnnError
from edge_rnn.service._auth import ScopeHeaders, authorize
from edge_rnn.service._body import single_headers
from edge_rnn.service._errors import Refusal, refusal
from edge_rnn.service._registry import Entry
from edge_rnn.service._service import Service
from edge_rnn.service._status import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_413_CONTENT_TOO_LARGE,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
    WS_1000_NORMAL_CLOSURE,
)

__all__ = ["StreamSocket", "PATH"]

PATH = "/v1/streams/ws"
_COMMANDS = ("reset", "snapshot", "restore", "end")
_log = logging.getLogger("edge_rnn.service")
_logged: set[type] = set()  # the kinds of unexpected error logged with their traceback already (once each)


class StreamSocket:
    """The server's ASGI app: :data:`PATH` handled here, every other scope passed on to the ASGI app ``api``."""

    def __init__(self, api: Any, service: Service):
        self.api, self.svc = api, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            return await _http(self.api, scope, receive, send)
        if scope["type"] != "websocket" or scope["path"] != PATH:
            return await self.api(scope, receive, send)
        svc = self.svc
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            single_headers(scope.get("headers", ()))  # two Authorization headers: which one is meant?
            authorize(svc.config.token, ScopeHeaders(scope), svc.metrics)
            if svc.closing:
                raise Refusal(HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down")
            sid = svc.registry.open()
        except Refusal as e:  # accepted, told why, and closed: a browser sees the code (not a bare 403)
            await send({"type": "websocket.accept"})
            await _refuse(send, e)
            return
        try:
            await send({"type": "websocket.accept"})
            svc.sockets[sid] = send
            await _serve_socket(receive, send, svc, sid)
        except Exception as e:  # noqa: BLE001 - whatever happened, the connection ends with a close code
            await _failed(e, svc, sid)
        finally:
            svc.sockets.pop(sid, None)
            svc.registry.close(sid)


async def _http(api: Any, scope: dict, receive: Any, send: Any) -> None:
    """``api`` on an HTTP request; what it raises once the client is gone (it disconnected, or the protocol timed
    its body out) ends the request quietly, not as a traceback in the log: nobody is left to answer."""
    gone = False

    async def receive_() -> dict:
        nonlocal gone
        message = await receive()
        gone = gone or message["type"] == "http.disconnect"
        return message

    try:
        await api(scope, receive_, send)
    except Exception:
        if not gone:
            raise


async def _failed(e: Exception, svc: Service, sid: str) -> None:
    """The socket's handler failed: quietly where the client went away (uvicorn's ClientDisconnected is an
    OSError) or the server closed the socket already (a send after it is refused), else closed with 1011."""
    if isinstance(e, OSError) or (isinstance(e, RuntimeError) and sid not in svc.sockets):
        return
    first = type(e) not in _logged
    _logged.add(type(e))
    _log.error("stream socket: unexpected %s: %s; closed with 1011", type(e).__name__, e, exc_info=e if first else None)
    if sid in svc.sockets:
        await svc.close_socket(sid, Refusal(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "the server failed "
                                            "on this message; the stream is closed"))


async def _refuse(send: Any, e: Refusal, *, close: bool = True) -> None:
    """The error as a JSON message, then (``close``) the close code that fits it."""
    await send({"type": "websocket.send", "text": json.dumps(e.body())})
    if close:
        await send({"type": "websocket.close", "code": e.close_code, "reason": e.code})


async def _serve_socket(receive: Any, send: Any, svc: Service, sid: str) -> None:
    streams, decode, encode, submit = svc.registry.streams, svc.codec.decode, svc.codec.encode, svc.submit
    entry = streams[sid]
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":  # websocket.disconnect
            return
        if streams.get(sid) is not entry:  # expired while idle
            await _refuse(send, Refusal(HTTP_404_NOT_FOUND, "unknown_stream", "the stream expired after idling"))
            return
        entry.last_used = time.monotonic()
        try:
            data = message.get("bytes")
            if data is not None:
                future = submit(entry, decode(data))  # awaited here: the fewest coroutine frames
                try:
                    out = await future
                except EdgeRnnError as e:
                    raise refusal(e, svc.metrics) from None
                await send({"type": "websocket.send", "bytes": encode(out)})
                continue
            command = _command(message.get("text"))
            if command["type"] == "end":
                await send({"type": "websocket.close", "code": WS_1000_NORMAL_CLOSURE})
                return
            await send({"type": "websocket.send", "text": json.dumps(_answer(command, entry, svc))})
        except Refusal as e:  # every error ends the connection, with its code; the state was not touched
            draining = e.code == "shutting_down"  # but a draining server answers the snapshot command until it stops
            await _refuse(send, e, close=not draining)
            if not draining:
                return


def _command(text: Any) -> dict:
    """A command message, parsed: a JSON object whose ``type`` is one of :data:`_COMMANDS`."""
    try:
        command = json.loads(text)
        kind = command.get("type")
    except (TypeError, ValueError, AttributeError, RecursionError, MemoryError):  # not JSON, or absurd JSON
        kind = None
    if kind not in _COMMANDS:
        raise Refusal(HTTP_400_BAD_REQUEST, "bad_message", "expected a binary chunk, or JSON {\"type\": \"reset\" | "
                      "\"snapshot\" | \"end\"}, or {\"type\": \"restore\", \"data\": \"<base64 snapshot>\"}")
    return command


def _answer(command: dict, entry: Entry, svc: Service) -> dict:
    """What a reset, snapshot or restore command does to ``entry``'s stream, and the JSON it answers with."""
    kind = command["type"]
    if kind == "reset":
        entry.stream.reset()
        return {"type": "reset", "ok": True}
    if kind == "restore":
        _restore(entry, svc, command.get("data"))
        return {"type": "restore", "ok": True, "steps": entry.stream.steps}
    return {"type": "snapshot", "data": base64.b64encode(entry.stream.snapshot()).decode()}


def _restore(entry: Entry, svc: Service, data: Any) -> None:
    """The connection's stream replaced by one resumed from the base64 snapshot ``data``, at once (no step of it
    is running: the socket's messages are handled one at a time), with the refusals of ``POST /v1/streams``
    with a snapshot (another model's, corrupt, another version: 400 ``bad_snapshot``); refused, the stream is left
    as it was. The old stream's slab row is given back."""
    if svc.closing:
        raise Refusal(HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down: no restore; a "
                      "snapshot of the stream can still be fetched")
    if not isinstance(data, str):
        raise Refusal(HTTP_400_BAD_REQUEST, "bad_message", "expected {\"type\": \"restore\", \"data\": \"<base64 "
                      f"snapshot>\"}}, got data of type {type(data).__name__}")
    limit = svc.registry.snapshot_limit
    if len(data) > 4 * (limit + 2) // 3:  # base64 of no snapshot of this model is longer
        raise Refusal(HTTP_413_CONTENT_TOO_LARGE, "too_large", f"expected a snapshot of at most {limit} bytes, got "
                      f"{len(data)} bytes of base64")
    try:
        snapshot = base64.b64decode(data, validate=True)
    except ValueError:
        raise Refusal(HTTP_400_BAD_REQUEST, "bad_snapshot", "expected the snapshot as base64, got other text") from None
    old, entry.stream = entry.stream, svc.registry.restored(snapshot)
    old.close()
