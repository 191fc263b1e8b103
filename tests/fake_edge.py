"""An edge-rnn look-alike over plain HTTP (stdlib and numpy only), for the client's tests and probes: a hostile,
slow or mismatched server whose every answer the test chooses."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

__all__ = ["FakeEdgeServer", "described"]

NOT_FOUND = b'{"code": "not_found", "message": ""}'


def described(shape: list, time_axis: int | None = 0) -> bytes:
    """A ``GET /v1/model`` answer whose primary output ``y`` has ``shape`` and ``time_axis``."""
    return json.dumps({"outputs": [{"name": "y", "dtype": "float32", "shape": shape, "time_axis": time_axis}]}).encode()


class FakeEdgeServer:
    """On 127.0.0.1, in a thread, stopped on exit: ``GET /v1/model`` answers ``status`` with ``model`` (bytes as
    they are, a dict as JSON), after waiting until the test ends when ``hang``; ``POST /v1/streams`` opens stream
    ``s1``, whose steps answer ``reply`` float32 values; any other path is a 404. Every request's method, path and
    ``Authorization`` header is kept in ``seen``."""

    def __init__(self, model: bytes | dict, reply: int = 12, *, status: int = 200, hang: bool = False):
        fake = self
        self.seen: list[tuple[str, str, str | None]] = []
        self.release = threading.Event()
        body = json.dumps(model).encode() if isinstance(model, dict) else model

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, code: int, payload: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _note(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.seen.append((self.command, self.path, self.headers.get("Authorization")))

            def do_GET(self):  # noqa: N802
                self._note()
                if self.path != "/v1/model":
                    return self._send(404, NOT_FOUND)
                if hang:
                    fake.release.wait(10)
                return self._send(status, body)

            def do_POST(self):  # noqa: N802
                self._note()
                if self.path == "/v1/streams":
                    return self._send(201, b'{"stream_id": "s1"}')
                if self.path == "/v1/streams/s1/steps":
                    return self._send(200, np.arange(reply, dtype="<f4").tobytes(), "application/octet-stream")
                return self._send(404, NOT_FOUND)

            def do_DELETE(self):  # noqa: N802
                self._note()
                self._send(204, b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeEdgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
