"""What the service tests share: the served fixture, random chunkings of a stream, and the result of stepping the
chunks alone (what a served stream must equal exactly)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import cache

import numpy as np
from conftest import REPO

from edge_rnn.runtime import StreamingModel

MODEL_PATH = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)


@cache
def _model() -> StreamingModel:
    return StreamingModel.load(MODEL_PATH)


def chunks(rng: np.random.Generator, total: int) -> list[np.ndarray]:
    """``total`` random frames of the fixture, cut into chunks of 1 to 7 frames."""
    x = rng.standard_normal((total, 4)).astype(np.float32)
    edges = [0]
    while edges[-1] < total:
        edges.append(min(total, edges[-1] + int(rng.integers(1, 8))))
    return [x[a:b] for a, b in zip(edges, edges[1:])]


def offline(parts: list[np.ndarray]) -> np.ndarray:
    """The fixture's primary output for ``parts`` stepped in order on one stream of its own."""
    model = _model()
    stream = model.open_stream()
    return np.concatenate([model.step(stream, c)["y"] for c in parts])


def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    """Wait until ``condition()`` holds, checking every 10 ms; an AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {seconds} s"
        time.sleep(0.01)


def held_at(model: StreamingModel, call: int | None = None) -> tuple[threading.Event, threading.Event]:
    """``model`` with its engine held on its ``call``-th batch (None: on each) until ``gate`` is set; returns
    ``(entered, gate)``, ``entered`` set once a batch is held."""
    entered, gate, real, calls = threading.Event(), threading.Event(), model.step_batch, [0]

    def held(items, **kw):
        calls[0] += 1
        if call is None or calls[0] == call:
            entered.set()
            gate.wait(20)
        return real(items, **kw)

    model.step_batch = held
    return entered, gate


def refusal(ws) -> tuple[str | None, int]:
    """After a refused message on a test client's socket: the error's code (None if the server sent none) and the
    close code."""
    import json

    reply = ws.receive()
    if reply["type"] == "websocket.close":
        return None, reply["code"]
    closed = ws.receive()
    assert closed["type"] == "websocket.close", closed
    return json.loads(reply["text"])["code"], closed["code"]
