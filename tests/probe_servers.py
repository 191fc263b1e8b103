"""What the outside probes of issue 20 share: a server of any fixture on 127.0.0.1 in a thread (stopped by the
test); a WebSocket server that closes over-size messages as a proxy does; the offline outputs a stream must
equal."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np
import uvicorn
from conftest import REPO

from edge_rnn.runtime import StreamingModel
from edge_rnn.service import ServiceConfig, create_app
from edge_rnn.service._app import uvicorn_options
from edge_rnn.service._server import DrainingServer

__all__ = ["ModelServer", "SizeLimitedSocket", "LSTM", "GRU_CELL", "outputs", "either"]

LSTM = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)
GRU_CELL = REPO / "tests" / "data" / "gru_cell.onnx"  # x (4,) -> y (6,): the same frames in and out, other numbers


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """uvicorn serving ``model`` on 127.0.0.1 (at ``port``, or a free one), in a thread; stopped by the test (the
    client tests' server, the probes' too)."""

    def __init__(self, model: Path = LSTM, port: int | None = None, **config):
        self.port = port or _port()
        config = ServiceConfig(**{"drain_timeout": 3.0, **config})
        app = create_app(StreamingModel.load(model), config)
        self.server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    **uvicorn_options(config)), app.svc)
        self.svc = app.svc
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ModelServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start in 20 s"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def outputs(parts: list[np.ndarray], order: Iterable[int], model: Path = LSTM) -> dict[int, np.ndarray]:
    """The output of each chunk of ``parts`` stepped in ``order`` on one stream of its own."""
    m = _model(model)
    s = m.open_stream()
    return {k: m.step(s, parts[k])["y"] for k in order}


def either(y: np.ndarray, candidates: list[np.ndarray]) -> bool:
    """Whether ``y`` is one of ``candidates``, bit for bit."""
    return any(y.shape == c.shape and np.array_equal(y, c) for c in candidates)


@cache
def _model(path: Path) -> StreamingModel:
    return StreamingModel.load(path)


class SizeLimitedSocket:
    """A WebSocket echo server on 127.0.0.1 that closes a connection sent a message over ``limit`` bytes with 1009
    and websockets' own reason, no JSON error: what a proxy in front of the server (Ray's, at 16 MiB) does."""

    def __init__(self, limit: int):
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.server import serve

        def echo(ws) -> None:
            try:
                for message in ws:
                    ws.send(message)
            except ConnectionClosed:  # closed by the limit: what this server is for
                pass

        self.server = serve(echo, "127.0.0.1", 0, max_size=limit, compression=None)
        self.url = f"http://127.0.0.1:{self.server.socket.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SizeLimitedSocket:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(timeout=20)
