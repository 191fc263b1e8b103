"""What the outside probes of issue 20 share: a server of any fixture on 127.0.0.1 in a thread (stopped by the
test), and a TCP relay in front of it that can be pointed at another server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from conftest import REPO

from edge_rnn.runtime import StreamingModel
from edge_rnn.service import ServiceConfig, create_app
from edge_rnn.service._app import uvicorn_options
from edge_rnn.service._server import DrainingServer

__all__ = ["ModelServer", "LSTM", "GRU_CELL"]

LSTM = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)
GRU_CELL = REPO / "tests" / "data" / "gru_cell.onnx"  # x (4,) -> y (6,): the same frames in and out, other numbers


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """uvicorn serving ``model`` on 127.0.0.1 (at ``port``, or a free one), in a thread."""

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
