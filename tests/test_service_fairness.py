"""Long chunks run in pieces (issue 19, item 4): one reply per chunk over either transport, in process; and on a
real server (uvicorn on a free loopback port), one client sending the largest chunks the server takes, back to back,
beside 20 small streams. The committed fixture, no torch."""

from __future__ import annotations

import asyncio
import json
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")
with warnings.catch_warnings():  # starlette 1.x asks for httpx2 beside the httpx the client extra installs
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from starlette.testclient import TestClient
import test_service_server as served  # noqa: E402  (its Server; imported as a module so its tests are not re-collected)
from service_streams import MODEL_PATH  # noqa: E402

from edge_rnn.runtime import StreamingModel  # noqa: E402
from edge_rnn.service import ServiceConfig, create_app  # noqa: E402

SMALL_STREAMS, SMALL_STEPS, WARM_UP = 20, 200, 5
MAX_BYTES = ServiceConfig().max_message_bytes  # the default limit: 1 MiB, 65,536 frames of the fixture


def _pieces_stepped(model: StreamingModel, x: np.ndarray) -> np.ndarray:
    """The primary output of ``x`` stepped on a fresh stream in consecutive pieces of 64 frames (the default
    max_batch_frames), the last one shorter: what the server must answer for ``x``, bit for bit."""
    stream = model.open_stream()
    return np.concatenate([model.step(stream, x[a:a + 64])["y"] for a in range(0, len(x), 64)])


def test_a_long_chunk_is_answered_once_with_its_pieces_outputs_over_either_transport():
    model = StreamingModel.load(MODEL_PATH)
    rng = np.random.default_rng(11)
    binary, listed = (rng.standard_normal((n, 4)).astype(np.float32) for n in (1000, 150))
    with TestClient(create_app(model, ServiceConfig())) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        by_http = http.post(f"/v1/streams/{sid}/steps", content=binary.tobytes(),
                            headers={"content-type": "application/octet-stream"})
        sid2 = http.post("/v1/streams").json()["stream_id"]
        by_json = http.post(f"/v1/streams/{sid2}/steps", content=json.dumps({"x": listed.tolist()}),
                            headers={"content-type": "application/json"})
        with http.websocket_connect("/v1/streams/ws") as ws:
            ws.send_bytes(binary.tobytes())
            by_ws = ws.receive_bytes()
            ws.send_text('{"type": "snapshot"}')
            assert json.loads(ws.receive_text())["type"] == "snapshot"  # one reply for the chunk, then this one
    expected = _pieces_stepped(model, binary)
    assert by_http.status_code == 200 and np.array_equal(np.frombuffer(by_http.content, "<f4").reshape(-1, 6),
                                                         expected)
    assert np.array_equal(np.frombuffer(by_ws, "<f4").reshape(-1, 6), expected)
    assert by_json.status_code == 200
    assert np.array_equal(np.asarray(by_json.json()["outputs"]["y"], np.float32),
                          _pieces_stepped(model, listed))


async def _small(url: str, frame: int, frames: int, seed: int, latencies: list[float]) -> None:
    """One small stream: steps of ``frames`` frames of ``frame`` floats, each sent once the last reply came; their
    round trips."""
    x = np.random.default_rng(seed).standard_normal((frames, frame)).astype(np.float32).tobytes()
    async with websockets.connect(url) as ws:
        for i in range(SMALL_STEPS + WARM_UP):
            start = time.perf_counter()
            await ws.send(x)
            await ws.recv()
            if i >= WARM_UP:
                latencies.append(time.perf_counter() - start)


async def _large(url: str, frame: int, replies: list[int], done: asyncio.Event) -> None:
    """The largest chunks the server takes, each sent as soon as the last reply came, until ``done``; each reply's
    size."""
    chunk = np.random.default_rng(99).standard_normal((MAX_BYTES // (4 * frame), frame)).astype(np.float32)
    chunk = chunk.tobytes()
    async with websockets.connect(url, max_size=None) as ws:
        while not done.is_set():
            await ws.send(chunk)
            replies.append(len(await ws.recv()))


async def _p99(server: served.Server, large: bool) -> tuple[float, list[int]]:
    """The small streams' p99 round trip in seconds, with or without the large client; the large replies' sizes."""
    latencies: list[float] = []
    replies: list[int] = []
    done = asyncio.Event()
    frame = server.svc.codec.frame[0]
    heavy = asyncio.ensure_future(_large(server.ws, frame, replies, done)) if large else None
    if heavy is not None:
        deadline = time.monotonic() + 20
        while not replies:  # the large client runs back to back before the small streams start
            assert time.monotonic() < deadline and not heavy.done(), "the large client got no reply in 20 s"
            await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*(_small(server.ws, frame, 1 if i % 2 else 10, i, latencies)
                                            for i in range(SMALL_STREAMS))), 120)
    done.set()
    if heavy is not None:
        await asyncio.wait_for(heavy, 60)
    return float(np.percentile(latencies, 99)), replies


def _whole_run(model: StreamingModel) -> float:
    """Seconds one largest chunk takes stepped whole (the median of three): what a small step waited behind."""
    chunk = np.zeros((MAX_BYTES // 16, 4), np.float32)
    model.step(model.open_stream(), chunk)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.step(model.open_stream(), chunk)
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def test_a_client_sending_the_largest_chunks_back_to_back_costs_small_streams_little():
    """Was: each chunk ran whole in one batch, and every small step queued behind it waited the whole run: here
    the small streams' p99 went from ~6 ms to 67-131 ms beside 1 MiB chunks of 65,536 frames (a ~55 ms run).
    Now such a chunk runs in pieces of 64 frames beside the small steps. The bound: twice the small streams'
    p99 without the large client, measured first on the same server, plus half the chunk's whole run."""
    run = _whole_run(StreamingModel.load(MODEL_PATH))
    with served.Server() as server:
        control, _ = asyncio.run(_p99(server, large=False))
        loaded, replies = asyncio.run(_p99(server, large=True))
    print(f"chunk run whole {run * 1e3:.1f} ms; small streams' p99 {control * 1e3:.1f} ms alone, "
          f"{loaded * 1e3:.1f} ms beside {len(replies)} largest chunks")
    assert len(replies) >= 2 and set(replies) == {MAX_BYTES // 16 * 6 * 4}  # each a whole chunk's outputs
    assert loaded <= 2 * control + run / 2
