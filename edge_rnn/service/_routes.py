"""The FastAPI routes: streams over HTTP (open, step, snapshot, close), the model, health, readiness, metrics;
and the guard in front of them (the token, and no new work while the server drains)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from edge_rnn.errors import EdgeRnnError
from edge_rnn.service import _openapi as api
from edge_rnn.service._auth import authorize
from edge_rnn.service._body import BINARY, JSON, BodyRefused, media_kind, read_body, single_headers
from edge_rnn.service._errors import Refusal, refusal
from edge_rnn.service._json import JsonChunks
from edge_rnn.service._metrics import Metrics
from edge_rnn.service._registry import Entry, Registry
from edge_rnn.service._service import Service
from edge_rnn.service._status import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_204_NO_CONTENT,
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_413_CONTENT_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

__all__ = ["add_routes"]

_UNGUARDED = ("/healthz", "/readyz")  # answered without a token


def add_routes(app: FastAPI, svc: Service, prometheus: Metrics, variant: str | None) -> None:
    """Every route of the server but the stream socket, on ``app``."""
    _guard(app, svc)
    _stream_routes(app, svc)
    _info_routes(app, svc, prometheus, variant)


def _respond(e: Refusal) -> JSONResponse:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else {}
    if isinstance(e, BodyRefused):  # the rest of the body is not read: the connection ends here
        headers["Connection"] = "close"
    return JSONResponse(e.body(), e.status, headers=headers)


def _guard(app: FastAPI, svc: Service) -> None:
    @app.exception_handler(Refusal)
    async def _error(request: Request, exc: Refusal) -> JSONResponse:
        return _respond(exc)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        try:
            single_headers(request.headers.raw)  # two Content-Types (or X-Steps, ...): which one is meant?
            if request.url.path not in _UNGUARDED:
                authorize(svc.config.token, request.headers, svc.metrics)
        except Refusal as e:
            return _respond(e)
        if svc.closing and request.method == "POST":
            return _respond(Refusal(HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"))
        return await call_next(request)


def _stream_routes(app: FastAPI, svc: Service) -> None:
    streams, codec, limit = svc.registry, svc.codec, svc.config.max_message_bytes
    chunks = JsonChunks(svc.model, limit)

    @app.post("/v1/streams", status_code=HTTP_201_CREATED, summary="Open a stream, from zeros or from a snapshot",
              openapi_extra=api.OPEN, responses={HTTP_400_BAD_REQUEST: api.ERROR,
                                                 HTTP_413_CONTENT_TOO_LARGE: api.ERROR,
                                                 HTTP_429_TOO_MANY_REQUESTS: api.ERROR,
                                                 HTTP_503_SERVICE_UNAVAILABLE: api.ERROR})
    async def open_stream(request: Request) -> dict:
        body = await _body(request, streams.snapshot_limit, streams)  # no snapshot of this model is larger
        if svc.overflow is not None and streams.full():  # on Ray Serve: a replica with room opens it
            sid = await svc.overflow(body or None)
            if sid is not None:
                return {"stream_id": sid}
        return {"stream_id": streams.open(body or None)}  # another model's snapshot: 400 bad_snapshot

    @app.post("/v1/streams/{sid}/steps", summary="Step a stream by one chunk", openapi_extra=api.STEP,
              responses={HTTP_200_OK: api.STEP_OUT, HTTP_400_BAD_REQUEST: api.ERROR, HTTP_404_NOT_FOUND: api.ERROR,
                         HTTP_409_CONFLICT: api.ERROR, HTTP_413_CONTENT_TOO_LARGE: api.ERROR,
                         HTTP_415_UNSUPPORTED_MEDIA_TYPE: api.ERROR, HTTP_429_TOO_MANY_REQUESTS: api.ERROR,
                         HTTP_500_INTERNAL_SERVER_ERROR: api.ERROR, HTTP_503_SERVICE_UNAVAILABLE: api.ERROR})
    async def step(sid: str, request: Request) -> Response:
        # what can be refused without the body is, before it is read: the stream, the media type, the room
        entry = streams.get(sid)
        kind = media_kind(request.headers.get("content-type"))
        if kind == BINARY:
            codec.check_binary()
        with streams.admitted(entry) as engage:
            body = await _body(request, limit, streams)
            engage()  # an engine slot, now that the body is whole
            chunk = await chunks.parse(body) if kind == JSON else codec.decode(body)
            del body
            out = await _in_turn(svc, entry, request.headers.get("x-step"), chunk)
            # nothing below can fail: the step is applied and counted
            if kind == JSON:
                return Response(await chunks.encode(out), media_type=JSON)
            return Response(codec.encode(out), media_type=BINARY)

    @app.delete("/v1/streams/{sid}", status_code=HTTP_204_NO_CONTENT, summary="Close a stream",
                responses={HTTP_404_NOT_FOUND: api.ERROR})
    async def delete(sid: str) -> Response:
        streams.get(sid)
        streams.close(sid)
        return Response(status_code=HTTP_204_NO_CONTENT)

    @app.get("/v1/streams/{sid}/snapshot", summary="The stream's state as a snapshot",
             responses={HTTP_200_OK: api.BYTES, HTTP_404_NOT_FOUND: api.ERROR})
    async def snapshot(sid: str) -> Response:
        return Response(await _snapshot(streams, sid, svc.config.message_timeout), media_type=BINARY)


async def _snapshot(streams: Registry, sid: str, timeout: float) -> bytes:
    """The stream's snapshot once its turn comes: after the HTTP steps admitted before it (a long chunk runs in
    pieces, and the state between two pieces is no state an answered step left). The wait is bounded by those
    steps (at most ``max_stream_inflight``), and by ``timeout`` seconds: then a 429 ``stream_busy``."""
    entry = streams.get(sid)
    try:
        await asyncio.wait_for(entry.order.acquire(), timeout)
    except asyncio.TimeoutError:
        raise Refusal(HTTP_429_TOO_MANY_REQUESTS, "stream_busy", f"expected the stream's steps to end within "
                      f"{timeout:g} s, got still more running: retry shortly", retry_after=1) from None
    try:
        if streams.streams.get(sid) is not entry:  # closed or expired meanwhile
            streams.get(sid)
        return entry.stream.snapshot()
    finally:
        entry.order.release()


async def _body(request: Request, limit: int, streams: Registry) -> bytearray:
    try:
        return await read_body(request.stream(), request.headers, limit, streams.bodies)
    except ClientDisconnect:  # no one reads the answer; not an error of the server's to log
        raise Refusal(HTTP_400_BAD_REQUEST, "incomplete", "the client went away before its body was whole") from None


async def _in_turn(svc: Service, entry: Entry, number: str | None, chunk: Any) -> dict:
    """The step's outputs, once the stream's earlier HTTP steps are done. X-Step is checked when its turn comes
    and counted when the engine applied the step (a callback, so a request cancelled meanwhile still counts it);
    the stream's next step waits until then."""
    await entry.order.acquire()
    try:
        if number is not None and number != str(entry.next_step):
            raise Refusal(HTTP_409_CONFLICT, "out_of_order", f"expected X-Step {entry.next_step}, got {number[:40]}")
        future = svc.submit(entry, chunk)
    except BaseException:
        entry.order.release()
        raise
    future.add_done_callback(partial(_stepped, entry))
    try:
        return await asyncio.shield(future)
    except EdgeRnnError as e:
        raise refusal(e, svc.metrics) from None


def _stepped(entry: Entry, future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        entry.next_step += 1
    entry.order.release()


def _info_routes(app: FastAPI, svc: Service, prometheus: Metrics, variant: str | None) -> None:
    model = svc.model

    @app.get("/v1/model")
    async def describe() -> dict:

        def ports(ps: Any) -> list[dict]:
            return [{"name": p.name, "dtype": str(p.dtype), "shape": list(p.stream_shape),
                     "time_axis": p.stream_time_axis} for p in ps]

        contract = None if model.contract is None else model.contract.to_dict()
        return {"contract": contract, "variant": variant, "fingerprint": model.fingerprint,
                "inputs": ports(model.inputs), "outputs": ports(model.outputs),
                "frame": svc.codec.frame}  # one frame's shape for binary chunks (null: JSON chunks only)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = svc.batcher is not None and not svc.closing
        return JSONResponse({"ready": ready}, HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE)

    @app.get("/metrics")
    async def metrics() -> Response:  # the function's name is the OpenAPI's operationId
        return Response(prometheus.exposition(), media_type="text/plain; version=0.0.4")
