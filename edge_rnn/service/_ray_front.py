"""A replica's ASGI app on Ray Serve: the standalone server's, behind two checks of its own.

- A request about a stream (``/v1/streams/{id}/...``) must name the stream in
  ``X-Session-Id``: Ray Serve routes by that header alone (the proxy does not
  read paths), so without it the request would reach the stream's replica
  only by chance. It is refused, always and on every replica, with 421
  ``session_header_missing``, once the request is authorized; so is one with
  a second session header naming anything else (Ray's proxy routes by the
  last it finds, and takes ``X_Session_Id`` for it too).
- Paths are read below the ``root_path`` Ray hands the app under a route
  prefix, as the app routes them.
- ``GET /metrics`` answers for every replica of the deployment
  (:mod:`~edge_rnn.service._ray_metrics`).
"""

from __future__ import annotations

import json
from typing import Any

from ray.serve._private.constants import SERVE_SESSION_ID

from edge_rnn.service._auth import ScopeHeaders, authorize
from edge_rnn.service._body import single_headers
from edge_rnn.service._errors import Refusal
from edge_rnn.service._ray_metrics import gather, merge

__all__ = ["ReplicaFront", "SESSION_HEADER"]

# Ray Serve's session header: x-session-id unless the cluster sets RAY_SERVE_SESSION_ID_HEADER_KEY (then a client
# that sends X-Session-Id, as edge_rnn.client does, is refused 421 rather than routed by chance)
SESSION_HEADER = SERVE_SESSION_ID.lower()
_SESSION_KEY = SESSION_HEADER.replace("-", "_")  # Ray's proxy matches the name without case, "-" as "_"
_STREAMS = "/v1/streams/"
_MISDIRECTED = 421


class ReplicaFront:
    """``inner`` (the app of :func:`~edge_rnn.service._app.create_app`), served as one replica of
    ``deployment`` in the Serve application ``app_name``."""

    def __init__(self, inner: Any, app_name: str, deployment: str):
        self.inner, self.svc = inner, inner.svc
        self.app_name, self.deployment = app_name, deployment

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        path = _route_path(scope)
        sid = _stream_of(path)
        if sid is None and not (path == "/metrics" and scope.get("method") == "GET"):
            return await self.inner(scope, receive, send)
        try:
            single_headers(scope.get("headers", ()))  # as the app checks first: two Authorization headers are a 400
            authorize(self.svc.config.token, ScopeHeaders(scope), self.svc.metrics)
            named = _sessions(scope)
            if sid is not None and (not named or any(n != sid for n in named)):
                raise Refusal(_MISDIRECTED, "session_header_missing", "expected the header X-Session-Id: <the "
                              "stream's id> on every request about a stream: Ray Serve routes the request to the "
                              "stream's replica by it")
        except Refusal as e:
            return await _answer(send, e.status, json.dumps(e.body()).encode(), "application/json")
        if sid is not None:
            return await self.inner(scope, receive, send)
        every = await gather(self.app_name, self.deployment, self.svc.replica, self.own())
        await _answer(send, 200, merge(every), "text/plain; version=0.0.4")

    def own(self) -> bytes:
        """This replica's metrics alone."""
        return self.svc.metrics.exposition()


def _route_path(scope: dict) -> str:
    """The path below the app's ``root_path`` (Ray sets it to the route prefix and keeps it in ``path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):]
    return path


def _sessions(scope: dict) -> list[str]:
    """Every value of the session header, by the rule Ray's proxy finds it with."""
    return [v.decode("latin-1") for k, v in scope.get("headers", ())
            if k.decode("latin-1").lower().replace("-", "_") == _SESSION_KEY]


def _stream_of(path: str) -> str | None:
    """The stream id in ``/v1/streams/{id}`` or ``/v1/streams/{id}/...`` (None for other paths, and for the
    stream socket ``/v1/streams/ws``)."""
    if not path.startswith(_STREAMS):
        return None
    sid = path[len(_STREAMS):].split("/", 1)[0]
    return sid if sid and sid != "ws" else None


async def _answer(send: Any, status: int, body: bytes, media: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
