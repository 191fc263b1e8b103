"""What the service tests share: the served fixture, random chunkings of a stream, and the result of stepping the
chunks alone (what a served stream must equal exactly)."""

from __future__ import annotations

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
