"""The HTTP and WebSocket server over the batching engine (FastAPI on uvicorn; the ``serve`` extra).

``create_app(model, ...)`` returns the ASGI app. One WebSocket connection is one
stream; over HTTP a stream is created, stepped, snapshotted and deleted by id.
Every step goes through the :class:`~edge_rnn.service.Batcher`, so steps of
different streams share onnxruntime calls, and onnxruntime runs off the event
loop. ``docs/service.md`` documents the protocol.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edge_rnn.errors import EdgeRnnError, InferenceError, NonFiniteError, ShapeError, StateError, StreamError
from edge_rnn.runtime import Stream, StreamingModel
from edge_rnn.runtime._layout import from_front, to_front
from edge_rnn.service._batcher import Batcher, Overloaded, ShuttingDown

__all__ = ["create_app", "ServiceConfig", "uvicorn_options"]


@dataclass(frozen=True)
class ServiceConfig:
    max_streams: int = 1000
    idle_timeout: float = 300.0
    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    max_message_bytes: int = 1 << 20
    token: str | None = None
    drain_timeout: float = 10.0  # seconds a stopping server lets open streams fetch their snapshots


@dataclass
class _Entry:
    stream: Stream
    last_used: float = field(default_factory=time.monotonic)
    next_step: int = 0
    # HTTP steps of one stream run one at a time: X-Step is checked and counted around the whole step, so a
    # retry sent while the first is still queued is refused (409), never applied twice
    order: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active = Gauge("edge_rnn_active_streams", "Open streams", registry=r)
        self.steps = Counter("edge_rnn_steps", "Steps applied", registry=r)
        self.batch = Histogram("edge_rnn_batch_size", "Steps per onnxruntime call", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.wait = Histogram("edge_rnn_queue_wait_seconds", "Time a step waited for its batch", registry=r,
                              buckets=(1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5))
        self.latency = Histogram("edge_rnn_step_seconds", "onnxruntime time per batch", registry=r,
                                 buckets=(1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5))
        self.rejected = Counter("edge_rnn_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.expired = Counter("edge_rnn_expired_streams", "Streams closed for idling", registry=r)

    def on_batch(self, size: int, waits: list[float], seconds: float) -> None:
        self.batch.observe(size)
        self.steps.inc(size)
        self.latency.observe(seconds)
        for w in waits:
            self.wait.observe(w)


class _Service:
    """The state of one server: the model, its open streams, the batcher and the metrics."""

    def __init__(self, model: StreamingModel, config: ServiceConfig):
        self.model, self.config = model, config
        self.streams: dict[str, _Entry] = {}
        self.metrics = _Metrics()
        self.batcher: Batcher | None = None
        self.closing = False  # draining or stopped: no new streams or steps; snapshots still answered
        self.sockets: dict[str, Any] = {}  # stream id -> the ASGI send of its WebSocket, to close it at the end
        port = model.inputs[0] if len(model.inputs) == 1 else None
        self.port = port if port is not None and port.dtype == np.float32 else None
        rest = [d for i, d in enumerate(self.port.stream_shape) if i != self.port.stream_time_axis] if self.port else []
        self.frame = None if self.port is None or None in rest else rest  # one frame's shape, for binary chunks
        self.primary = model.outputs[0]
        # decided once, not per message: a frame's bytes, and the transposes between time-first chunks and the
        # model's layout (None: time is first already)
        self._frame_bytes = 4 * int(np.prod(self.frame)) if self.frame is not None else 0
        self._frames = (-1, *(self.frame or ()))
        t_in, t_out = (self.port.stream_time_axis if self.port else None), self.primary.stream_time_axis
        self._to_model = None if t_in is None else from_front(len(self._frames), t_in)
        self._from_model = None if t_out is None else to_front(len(self.primary.stream_shape), t_out)

    def open(self, snapshot: bytes | None = None) -> str:
        if len(self.streams) >= self.config.max_streams:
            self.metrics.rejected.labels("too_many_streams").inc()
            raise _HttpError(429, "too_many_streams", f"{self.config.max_streams} streams are open; close one first")
        stream = self.model.restore(snapshot) if snapshot else self.model.open_stream()
        sid = secrets.token_urlsafe(24)  # 192 random bits
        self.streams[sid] = _Entry(stream)
        self.metrics.active.set(len(self.streams))
        return sid

    def get(self, sid: str) -> _Entry:
        entry = self.streams.get(sid)
        if entry is None:
            raise _HttpError(404, "unknown_stream", "no such stream (never opened, closed, or expired)")
        entry.last_used = time.monotonic()
        return entry

    def close(self, sid: str) -> None:
        entry = self.streams.pop(sid, None)
        if entry is not None:
            entry.stream.close()
        self.metrics.active.set(len(self.streams))

    def decode(self, body: bytes) -> np.ndarray:
        """A binary chunk: float32 little-endian, whole frames, row-major."""
        if self.frame is None:
            raise _HttpError(415, "unsupported", "binary chunks need a model with one float32 input of fixed frame "
                                                 "size; send JSON {\"x\": ...}")
        if len(body) > self.config.max_message_bytes:
            raise _HttpError(413, "too_large", f"expected at most {self.config.max_message_bytes} bytes, got "
                                               f"{len(body)}")
        size = self._frame_bytes
        if not body or len(body) % size:
            raise _HttpError(400, "bad_chunk", f"expected a whole number of frames of {size} bytes (float32 x "
                                               f"{self.frame}), got {len(body)} bytes")
        x = np.frombuffer(body, dtype="<f4").reshape(self._frames)  # (time, *frame), as the protocol sends it
        if self.port.stream_time_axis is None:  # one step per call: exactly one frame
            return x.reshape(self.frame) if len(x) == 1 else x
        return x if self._to_model is None else x.transpose(self._to_model)  # time where the model has it

    def encode(self, out: dict) -> bytes:
        """The primary output as float32 little-endian bytes, time first (time x features, row-major)."""
        y = out[self.primary.name]
        if self._from_model is not None:
            y = y.transpose(self._from_model)
        return (y if y.dtype == _F4 else y.astype(_F4)).tobytes()  # tobytes: row-major, whatever the strides

    def submit(self, entry: _Entry, chunk: Any) -> asyncio.Future:
        """The step queued; its future. A refusal at once (overloaded, shutting down) raises _HttpError."""
        if self.closing:
            raise _HttpError(503, "shutting_down", "the server is shutting down: no new steps; a snapshot of the "
                                                   "stream can still be fetched")
        try:
            return self.batcher.submit(entry.stream, chunk)
        except EdgeRnnError as e:
            raise self.refusal(e) from None

    async def step(self, entry: _Entry, chunk: Any) -> dict:
        try:
            return await self.submit(entry, chunk)
        except EdgeRnnError as e:
            raise self.refusal(e) from None

    def refusal(self, e: EdgeRnnError) -> _HttpError:
        """An engine error as the HTTP error it is answered with (counted where it is a rejection)."""
        if isinstance(e, Overloaded):
            self.metrics.rejected.labels("overloaded").inc()
            return _HttpError(503, "overloaded", str(e), retry_after=1)
        if isinstance(e, ShuttingDown):
            return _HttpError(503, "shutting_down", str(e))
        if isinstance(e, (ShapeError, NonFiniteError)):
            self.metrics.rejected.labels("bad_chunk").inc()
            return _HttpError(400, "bad_chunk", str(e))
        if isinstance(e, StreamError):  # closed while its step waited: expired, or deleted
            return _HttpError(404, "unknown_stream", str(e))
        if isinstance(e, InferenceError):  # the model failed, not the chunk
            return _HttpError(500, "inference_failed", str(e))
        return _HttpError(400, "error", str(e))

    def begin_drain(self) -> None:
        """Stop taking new streams and steps; steps already accepted finish, snapshots are still answered."""
        self.closing = True

    async def drain(self, timeout: float) -> None:
        """Wait until every stream is closed, or ``timeout`` seconds; then close the sockets left with 1001."""
        deadline = time.monotonic() + timeout
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for send in list(self.sockets.values()):
            try:
                await send({"type": "websocket.close", "code": 1001, "reason": "shutting_down"})
            except (OSError, RuntimeError):  # already gone
                pass

    async def reap(self) -> None:
        """Close streams idle longer than the timeout; counted as expirations."""
        while True:
            await asyncio.sleep(min(1.0, self.config.idle_timeout / 4))
            now = time.monotonic()
            for sid in [s for s, e in self.streams.items() if now - e.last_used > self.config.idle_timeout]:
                self.close(sid)
                self.metrics.expired.inc()


_F4 = np.dtype("<f4")


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def body(self) -> dict[str, str]:
        """The error as the JSON both transports answer with."""
        return {"type": "error", "code": self.code, "message": self.message}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(self.body(), self.status,
                            headers=headers)


# an HTTP status's WebSocket close code: a bad chunk or message 1007, too large 1009, a model that takes no
# binary chunks 1003, too many streams or overloaded 1013, no or a wrong token 1008, an expired stream 1008, the
# model failing 1011; shutting down is 1001 (same 503 as overloaded, told apart by the error's code)
_WS_CLOSE = {400: 1007, 413: 1009, 415: 1003, 429: 1013, 503: 1013, 401: 1008, 404: 1008, 500: 1011}


def _close_code(e: _HttpError) -> int:
    return 1001 if e.code == "shutting_down" else _WS_CLOSE.get(e.status, 1011)


def create_app(model: StreamingModel, config: ServiceConfig | None = None, *,
               variant: str | None = None) -> _StreamSocket:
    """The ASGI app serving ``model``; see the module docstring. ``.api`` is the FastAPI app behind it (every
    route but the stream socket, the OpenAPI, the lifespan)."""
    config = config or ServiceConfig()
    svc = _Service(model, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.batcher = Batcher(model, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                              max_queue=config.max_queue, on_batch=svc.metrics.on_batch)
        svc.batcher.start()
        reaper = asyncio.get_running_loop().create_task(svc.reap())
        yield
        svc.closing = True
        await svc.batcher.stop()  # steps already accepted finish
        reaper.cancel()

    app = FastAPI(title="edge-rnn streaming inference", lifespan=lifespan)
    app.state.service = svc
    _guard(app, svc)
    _stream_routes(app, svc)
    _info_routes(app, svc, variant)
    return _StreamSocket(app, svc)


def uvicorn_options(config: ServiceConfig) -> dict[str, Any]:
    """How uvicorn should run the app: the WebSocket protocol that pauses reads only when a client runs ahead,
    no per-message deflate (float32 frames barely compress; it took ~40% of the server's time), and frames
    beyond ``max_message_bytes`` refused by the protocol itself (close 1009) before they are buffered."""
    from edge_rnn.service._protocol import StreamProtocol

    return {"ws": StreamProtocol, "ws_per_message_deflate": False, "ws_max_size": config.max_message_bytes}


# What the routes read and write by hand (raw bytes or JSON), described for the generated OpenAPI
_ERROR = {"description": "An error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"type": {"const": "error"}, "code": {"type": "string"},
                                     "message": {"type": "string"}}}}}}
_BYTES = {"description": "Bytes", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                      "format": "binary"}}}}
_OPENAPI_OPEN = {"requestBody": {"required": False, "description": "empty, or a snapshot to resume",
                                 "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                     "format": "binary"}}}}}
_OPENAPI_STEP = {
    "parameters": [{"name": "X-Step", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
                    "description": "The step's sequence number on this stream, from 0; out of order: 409"}],
    "requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "float32 little-endian, whole frames, time x features"},
        "application/json": {"schema": {"type": "object", "required": ["x"],
                                        "properties": {"x": {"description": "the chunk, nested lists"}}}}}}}
_STEP_OUT = {"description": "The primary output (float32 bytes, time x features), or with a JSON request "
                            "every output as JSON",
             "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                         "application/json": {"schema": {"type": "object", "properties": {
                             "outputs": {"type": "object"}}}}}}


def _authorize(svc: _Service, headers: Any) -> None:
    if svc.config.token is None:
        return
    given = headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {svc.config.token}".encode()):  # constant time
        svc.metrics.rejected.labels("unauthorized").inc()
        raise _HttpError(401, "unauthorized", "expected Authorization: Bearer <token>")


def _guard(app: FastAPI, svc: _Service) -> None:
    @app.exception_handler(_HttpError)
    async def _error(request: Request, exc: _HttpError) -> JSONResponse:
        return exc.response()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if request.url.path not in ("/healthz", "/readyz"):
            try:
                _authorize(svc, request.headers)
            except _HttpError as e:
                return e.response()
        if svc.closing and request.method == "POST":
            return _HttpError(503, "shutting_down", "the server is shutting down").response()
        return await call_next(request)


def _stream_routes(app: FastAPI, svc: _Service) -> None:
    @app.post("/v1/streams", status_code=201, summary="Open a stream, from zeros or from a snapshot",
              openapi_extra=_OPENAPI_OPEN, responses={400: _ERROR, 429: _ERROR, 503: _ERROR})
    async def open_stream(request: Request) -> dict:
        body = await request.body()
        try:
            return {"stream_id": svc.open(body or None)}
        except StateError as e:
            raise _HttpError(400, "bad_snapshot", str(e)) from None

    @app.post("/v1/streams/{sid}/steps", summary="Step a stream by one chunk", openapi_extra=_OPENAPI_STEP,
              responses={200: _STEP_OUT, 400: _ERROR, 404: _ERROR, 409: _ERROR, 413: _ERROR, 500: _ERROR,
                         503: _ERROR})
    async def step(sid: str, request: Request) -> Response:
        entry = svc.get(sid)
        body = await request.body()
        as_json = request.headers.get("content-type", "").startswith("application/json")
        if as_json:
            try:
                chunk = json.loads(body)["x"]
            except (ValueError, KeyError, TypeError):
                raise _HttpError(400, "bad_chunk", "expected JSON {\"x\": [[...], ...]}") from None
        else:
            chunk = svc.decode(body)
        number = request.headers.get("x-step")
        async with entry.order:
            if number is not None and number != str(entry.next_step):
                raise _HttpError(409, "out_of_order", f"expected X-Step {entry.next_step}, got {number}")
            out = await svc.step(entry, chunk)
            entry.next_step += 1
        if as_json:
            return JSONResponse({"outputs": {k: v.tolist() for k, v in out.items()}})
        return Response(svc.encode(out), media_type="application/octet-stream")

    @app.delete("/v1/streams/{sid}", status_code=204, summary="Close a stream", responses={404: _ERROR})
    async def delete(sid: str) -> Response:
        svc.get(sid)
        svc.close(sid)
        return Response(status_code=204)

    @app.get("/v1/streams/{sid}/snapshot", summary="The stream's state as a snapshot",
             responses={200: _BYTES, 404: _ERROR})
    async def snapshot(sid: str) -> Response:
        return Response(svc.get(sid).stream.snapshot(), media_type="application/octet-stream")


def _info_routes(app: FastAPI, svc: _Service, variant: str | None) -> None:
    model = svc.model

    @app.get("/v1/model")
    async def describe() -> dict:

        def ports(ps: Any) -> list[dict]:
            return [{"name": p.name, "dtype": str(p.dtype), "shape": list(p.stream_shape),
                     "time_axis": p.stream_time_axis} for p in ps]

        contract = None if model.contract is None else model.contract.to_dict()
        return {"contract": contract, "variant": variant, "fingerprint": model.fingerprint,
                "inputs": ports(model.inputs), "outputs": ports(model.outputs),
                "frame": svc.frame}  # one frame's shape for binary chunks (null: JSON chunks only)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = svc.batcher is not None and not svc.closing
        return JSONResponse({"ready": ready}, 200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type="text/plain; version=0.0.4")


class _StreamSocket:
    """The server's ASGI app: ``/v1/streams/ws`` (one connection one stream) handled here, every other scope
    passed on to the FastAPI app ``api``.

    The socket sits in front of FastAPI and its middleware, so each message
    costs one ``receive`` and one ``send`` of uvicorn's protocol, and resuming
    the handler's coroutine walks two frames, not a dozen (the per-message cost
    on the event loop is what bounds the server's capacity; docs/performance.md).
    """

    def __init__(self, api: FastAPI, service: _Service):
        self.api, self.svc = api, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket" or scope["path"] != "/v1/streams/ws":
            return await self.api(scope, receive, send)
        svc = self.svc
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            _authorize(svc, _Headers(scope))
            if svc.closing:
                raise _HttpError(503, "shutting_down", "the server is shutting down")
            sid = svc.open()
        except _HttpError as e:  # accepted, told why, and closed: a browser sees the code (not a bare 403)
            await send({"type": "websocket.accept"})
            await _refuse(send, e)
            return
        try:
            await send({"type": "websocket.accept"})
            svc.sockets[sid] = send
            await _serve_socket(receive, send, svc, sid)
        except OSError:  # uvicorn's ClientDisconnected: the client went away mid-send
            pass
        except RuntimeError:  # uvicorn refusing a send after the drain closed this socket from its own task
            if not svc.closing:
                raise
        finally:
            svc.sockets.pop(sid, None)
            svc.close(sid)


async def _refuse(send: Any, e: _HttpError, *, close: bool = True) -> None:
    """The error as a JSON message, then (``close``) the close code that fits it."""
    await send({"type": "websocket.send", "text": json.dumps(e.body())})
    if close:
        await send({"type": "websocket.close", "code": _close_code(e), "reason": e.code})


class _Headers:
    """The lower-case header look-up _authorize needs, over an ASGI scope's raw headers."""

    def __init__(self, scope: dict):
        self._raw = scope.get("headers", ())

    def get(self, name: str, default: str = "") -> str:
        key = name.encode("latin-1")
        return next((v.decode("latin-1") for k, v in self._raw if k.lower() == key), default)


async def _serve_socket(receive: Any, send: Any, svc: _Service, sid: str) -> None:
    entry = svc.streams[sid]
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":  # websocket.disconnect
            return
        if svc.streams.get(sid) is not entry:  # expired while idle
            await _refuse(send, _HttpError(404, "unknown_stream", "the stream expired after idling"))
            return
        entry.last_used = time.monotonic()
        try:
            data = message.get("bytes")
            if data is not None:
                future = svc.submit(entry, svc.decode(data))  # awaited here: the fewest coroutine frames
                try:
                    out = await future
                except EdgeRnnError as e:
                    raise svc.refusal(e) from None
                await send({"type": "websocket.send", "bytes": svc.encode(out)})
                continue
            command = _command(message.get("text"))
            if command == "end":
                await send({"type": "websocket.close", "code": 1000})
                return
            if command == "reset":
                entry.stream.reset()
                await send({"type": "websocket.send", "text": json.dumps({"type": "reset", "ok": True})})
            else:  # snapshot
                await send({"type": "websocket.send", "text": json.dumps({"type": "snapshot", "data": base64.b64encode(
                    entry.stream.snapshot()).decode()})})
        except _HttpError as e:  # every error ends the connection, with its code; the state was not touched
            draining = e.code == "shutting_down"  # but a draining server answers the snapshot command until it stops
            await _refuse(send, e, close=not draining)
            if not draining:
                return


def _command(text: Any) -> str:
    try:
        kind = json.loads(text).get("type")
    except (TypeError, ValueError, AttributeError):
        kind = None
    if kind not in ("reset", "snapshot", "end"):
        raise _HttpError(400, "bad_message", "expected a binary chunk, or JSON {\"type\": \"reset\" | \"snapshot\" | "
                                             "\"end\"}")
    return kind
