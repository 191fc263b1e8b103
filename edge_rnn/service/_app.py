"""The HTTP and WebSocket server over the batching engine (FastAPI on uvicorn; the ``serve`` extra).

``create_app(model, ...)`` returns the ASGI app. One WebSocket connection is one
stream; over HTTP a stream is created, stepped, snapshotted and deleted by id.
Every step goes through the :class:`~edge_rnn.service.Batcher`, so steps of
different streams share onnxruntime calls, and onnxruntime runs off the event
loop. ``docs/service.md`` documents the protocol.

The pieces, one concern each: ``_config`` (:class:`ServiceConfig`),
``_service`` (one server's state: ``_registry`` of streams, ``_codec`` for
binary chunks, the batcher), ``_errors`` (refusals and their HTTP and
WebSocket codes, ``_status`` naming them), ``_auth`` (the token), ``_metrics``
(Prometheus), ``_routes`` and ``_openapi`` (FastAPI), ``_socket`` (the stream
socket in raw ASGI). Only ``_metrics``, ``_routes``, this module and the
uvicorn pieces (``_protocol``, ``_server``) import a web framework or
Prometheus.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from edge_rnn.runtime import StreamingModel
from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._metrics import Metrics
from edge_rnn.service._routes import add_routes
from edge_rnn.service._service import Service
from edge_rnn.service._socket import StreamSocket

__all__ = ["create_app", "ServiceConfig", "uvicorn_options"]


def create_app(model: StreamingModel, config: ServiceConfig | None = None, *,
               variant: str | None = None, replica: str | None = None) -> StreamSocket:
    """The ASGI app serving ``model``; see the module docstring. ``.api`` is the FastAPI app behind it (every
    route but the stream socket, the OpenAPI, the lifespan); ``.svc`` the server's state. ``replica`` (Ray
    Serve's replica id) starts every stream id and labels every metric."""
    metrics = Metrics(replica)
    svc = Service(model, config or ServiceConfig(), metrics, replica=replica)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start()
        yield
        await svc.stop()  # steps already accepted finish

    app = FastAPI(title="edge-rnn streaming inference", lifespan=lifespan)
    app.state.service = svc
    add_routes(app, svc, metrics, variant)
    return StreamSocket(app, svc)


def uvicorn_options(config: ServiceConfig) -> dict[str, Any]:
    """How uvicorn should run the app: the WebSocket protocol that pauses reads only when a client runs ahead,
    no per-message deflate (float32 frames barely compress; it took ~40% of the server's time), and frames
    beyond ``max_message_bytes`` refused by the protocol itself (close 1009) before they are buffered. Both
    protocols hold a connection only as long as ``config``'s timeouts allow (``_protocol``, ``_http_protocol``);
    without httptools (the serve extra installs it), uvicorn's h11 protocol serves HTTP without them (nor the
    limit of ``max_connections``, which defaults to :func:`~edge_rnn.service._server.connection_limit`)."""
    from dataclasses import replace

    from edge_rnn.service._protocol import StreamProtocol
    from edge_rnn.service._server import connection_limit

    if config.max_connections is None:
        config = replace(config, max_connections=connection_limit())

    options = {"ws": StreamProtocol.configured(config), "ws_per_message_deflate": False,
               "ws_max_size": config.max_message_bytes}
    try:
        from edge_rnn.service._http_protocol import HttpProtocol
    except ImportError:
        return options
    return {**options, "http": HttpProtocol.configured(config)}
