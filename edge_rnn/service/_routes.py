"""The FastAPI routes: streams over HTTP (open, step, snapshot, close), the model, health, readiness, metrics;
and the guard in front of them (the token, and no new work while the server drains)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from edge_rnn.errors import StateError
from edge_rnn.service import _openapi as api
from edge_rnn.service._auth import authorize
from edge_rnn.service._errors import Refusal
from edge_rnn.service._metrics import Metrics
from edge_rnn.service._service import Service
from edge_rnn.service._status import (
    HTTP_200_OK,
    HTTP_201_CREATED,
    HTTP_204_NO_CONTENT,
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_413_CONTENT_TOO_LARGE,
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
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return JSONResponse(e.body(), e.status, headers=headers)


def _guard(app: FastAPI, svc: Service) -> None:
    @app.exception_handler(Refusal)
    async def _error(request: Request, exc: Refusal) -> JSONResponse:
        return _respond(exc)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if request.url.path not in _UNGUARDED:
            try:
                authorize(svc.config.token, request.headers, svc.metrics)
            except Refusal as e:
                return _respond(e)
        if svc.closing and request.method == "POST":
            return _respond(Refusal(HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"))
        return await call_next(request)


def _stream_routes(app: FastAPI, svc: Service) -> None:
    streams = svc.registry

    @app.post("/v1/streams", status_code=HTTP_201_CREATED, summary="Open a stream, from zeros or from a snapshot",
              openapi_extra=api.OPEN, responses={HTTP_400_BAD_REQUEST: api.ERROR,
                                                 HTTP_429_TOO_MANY_REQUESTS: api.ERROR,
                                                 HTTP_503_SERVICE_UNAVAILABLE: api.ERROR})
    async def open_stream(request: Request) -> dict:
        body = await request.body()
        try:
            return {"stream_id": streams.open(body or None)}
        except StateError as e:
            raise Refusal(HTTP_400_BAD_REQUEST, "bad_snapshot", str(e)) from None

    @app.post("/v1/streams/{sid}/steps", summary="Step a stream by one chunk", openapi_extra=api.STEP,
              responses={HTTP_200_OK: api.STEP_OUT, HTTP_400_BAD_REQUEST: api.ERROR, HTTP_404_NOT_FOUND: api.ERROR,
                         HTTP_409_CONFLICT: api.ERROR, HTTP_413_CONTENT_TOO_LARGE: api.ERROR,
                         HTTP_500_INTERNAL_SERVER_ERROR: api.ERROR, HTTP_503_SERVICE_UNAVAILABLE: api.ERROR})
    async def step(sid: str, request: Request) -> Response:
        entry = streams.get(sid)
        body = await request.body()
        as_json = request.headers.get("content-type", "").startswith("application/json")
        if as_json:
            try:
                chunk = json.loads(body)["x"]
            except (ValueError, KeyError, TypeError):
                raise Refusal(HTTP_400_BAD_REQUEST, "bad_chunk", "expected JSON {\"x\": [[...], ...]}") from None
        else:
            chunk = svc.codec.decode(body)
        number = request.headers.get("x-step")
        async with entry.order:
            if number is not None and number != str(entry.next_step):
                raise Refusal(HTTP_409_CONFLICT, "out_of_order", f"expected X-Step {entry.next_step}, got {number}")
            out = await svc.step(entry, chunk)
            entry.next_step += 1
        if as_json:
            return JSONResponse({"outputs": {k: v.tolist() for k, v in out.items()}})
        return Response(svc.codec.encode(out), media_type="application/octet-stream")

    @app.delete("/v1/streams/{sid}", status_code=HTTP_204_NO_CONTENT, summary="Close a stream",
                responses={HTTP_404_NOT_FOUND: api.ERROR})
    async def delete(sid: str) -> Response:
        streams.get(sid)
        streams.close(sid)
        return Response(status_code=HTTP_204_NO_CONTENT)

    @app.get("/v1/streams/{sid}/snapshot", summary="The stream's state as a snapshot",
             responses={HTTP_200_OK: api.BYTES, HTTP_404_NOT_FOUND: api.ERROR})
    async def snapshot(sid: str) -> Response:
        return Response(streams.get(sid).stream.snapshot(), media_type="application/octet-stream")


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
