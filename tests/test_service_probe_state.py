"""What the adversarial probe of the hardened server found in a stream's state and the server's slots, in process
(httpx over ASGI, starlette's test client), on the committed fixtures, no socket, no torch: a snapshot taken while
a long chunk runs in pieces, a stream expired while its step runs, slow bodies holding the engine's slots, and a
repeated header that decides what a request means."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from service_streams import MODEL_PATH, held_at, until  # noqa: E402
from test_service_http import BIN, JSON, TestClient, X, _app, _serving  # noqa: E402

from edge_rnn.runtime import StreamingModel  # noqa: E402


def _steps(app, snapshot: bytes) -> int:
    stream = app.svc.model.restore(snapshot)
    try:
        return stream.steps
    finally:
        stream.close()


# ------------------------------------------------------------------ 1: snapshots show whole steps


@pytest.mark.parametrize("draining", [False, True])
def test_a_snapshot_fetched_while_a_long_chunk_runs_in_pieces_shows_the_state_after_the_whole_step(draining):
    """Was: with --max-batch-frames 1 a snapshot fetched between two pieces of a 6-frame chunk showed 2 steps, a
    state the stream never had between answered steps (and POST /v1/streams resumed it). Now the snapshot waits
    for the stream's turn, behind the steps admitted before it, and shows the state after the whole chunk; so it
    does while the server drains."""
    model = StreamingModel.load(MODEL_PATH)
    entered, gate = held_at(model, 3)  # two pieces applied, the third held
    app = _app(model, max_batch_frames=1, max_wait_ms=0)
    chunk = np.random.default_rng(0).standard_normal((6, 4)).astype("<f4").tobytes()

    async def main():
        async with _serving(app) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            step = asyncio.ensure_future(http.post(f"/v1/streams/{sid}/steps", content=chunk, headers=BIN))
            try:
                assert await asyncio.to_thread(entered.wait, 20)
                if draining:
                    app.svc.begin_drain()
                snap = asyncio.ensure_future(http.get(f"/v1/streams/{sid}/snapshot"))
                await asyncio.sleep(0.2)
            finally:
                gate.set()
            step, snap = await step, await snap
            after = (await http.get(f"/v1/streams/{sid}/snapshot")).content
            return step, snap, after

    step, snap, after = asyncio.run(main())
    assert step.status_code == 200 and snap.status_code == 200
    assert _steps(app, snap.content) == 6 and snap.content == after  # the state after the step, bit for bit


def test_a_snapshot_waits_for_its_streams_turn_at_most_while_the_steps_before_it_run():
    """The wait is bounded by the steps in flight: a snapshot behind a refused step (X-Step out of order) and a
    failed one (a bad chunk) is answered as soon as they are, with the state they left (unchanged)."""
    app = _app(max_wait_ms=0)

    async def main():
        async with _serving(app) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            before = (await http.get(f"/v1/streams/{sid}/snapshot")).content
            bad = http.post(f"/v1/streams/{sid}/steps", content=np.full((1, 4), np.nan, "<f4").tobytes(), headers=BIN)
            late = http.post(f"/v1/streams/{sid}/steps", content=X, headers={"X-Step": "5", **BIN})
            replies = await asyncio.wait_for(asyncio.gather(bad, late, http.get(f"/v1/streams/{sid}/snapshot")), 20)
            return before, replies

    before, (bad, late, snap) = asyncio.run(main())
    assert (bad.status_code, late.status_code, snap.status_code) == (400, 409, 200)
    assert snap.content == before


def test_a_snapshot_behind_a_step_that_outlasts_the_message_timeout_is_429_stream_busy_not_a_hang():
    """The wait for the stream's turn never outlasts --message-timeout: then 429 stream_busy with Retry-After, and
    the step behind which it waited still answers."""
    model = StreamingModel.load(MODEL_PATH)
    entered, gate = held_at(model, 1)
    app = _app(model, message_timeout=0.3, max_wait_ms=0)

    async def main():
        async with _serving(app) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            step = asyncio.ensure_future(http.post(f"/v1/streams/{sid}/steps", content=X, headers=BIN))
            try:
                assert await asyncio.to_thread(entered.wait, 20)
                snap = await asyncio.wait_for(http.get(f"/v1/streams/{sid}/snapshot"), 20)
            finally:
                gate.set()
            return snap, await step

    snap, step = asyncio.run(main())
    assert snap.status_code == 429 and snap.json()["code"] == "stream_busy" and snap.headers["retry-after"] == "1"
    assert step.status_code == 200


# ------------------------------------------------------------------ 2: a stream stepping is not idle


@pytest.mark.parametrize("where", ["running", "body"])
def test_a_stream_whose_http_step_runs_or_whose_body_arrives_longer_than_the_idle_timeout_is_not_expired(where):
    """Was: with --idle-timeout 0.3 a step held 1 s in the engine (or a body arriving for 1 s) came back 404
    unknown_stream and the stream was gone. Now a stream with a step in flight is never idle; its idle time counts
    from the end of its last step, and it expires once it is idle."""
    model = StreamingModel.load(MODEL_PATH)
    entered, gate = held_at(model, 1 if where == "running" else 0)
    app = _app(model, idle_timeout=0.3, max_wait_ms=0)

    async def slow_body():
        yield X[:16]
        await asyncio.sleep(1.0)  # more than three idle timeouts (the reaper looks every 75 ms)
        yield X[16:]

    async def main():
        async with _serving(app) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            body = X if where == "running" else slow_body()
            step = asyncio.ensure_future(http.post(f"/v1/streams/{sid}/steps", content=body, headers=BIN))
            try:
                if where == "running":
                    assert await asyncio.to_thread(entered.wait, 20)
                    await asyncio.sleep(1.0)
            finally:
                gate.set()
            step = await step
            done = time.monotonic()
            kept = sid in app.svc.registry.streams and app.svc.registry.streams[sid].last_used >= done - 0.05
            for _ in range(2000):  # then idle: expired (within 20 s)
                if sid not in app.svc.registry.streams:
                    break
                await asyncio.sleep(0.01)
            return step, kept, sid in app.svc.registry.streams

    step, kept, still_open = asyncio.run(main())
    assert step.status_code == 200, step.text
    assert kept and not still_open


def test_a_stream_whose_websocket_step_runs_longer_than_the_idle_timeout_is_not_expired():
    """Was: the socket got unknown_stream (1008) while its own step ran. Now it gets the step's outputs."""
    model = StreamingModel.load(MODEL_PATH)
    entered, gate = held_at(model, 1)
    app = _app(model, idle_timeout=0.3, max_wait_ms=0)
    with TestClient(app) as client, client.websocket_connect("/v1/streams/ws") as ws:
        try:
            ws.send_bytes(X)
            assert entered.wait(20)
            time.sleep(1.0)
        finally:
            gate.set()
        reply = ws.receive()
        assert "bytes" in reply and len(reply["bytes"]) == 2 * 6 * 4, reply
        ws.send_text('{"type": "snapshot"}')
        assert ws.receive_json()["type"] == "snapshot"
        until(lambda: not app.svc.registry.streams)  # idle now: expired


# ------------------------------------------------------------------ 8: bodies being received hold no engine slot


def test_slow_bodies_hold_no_engine_slot_and_the_bytes_they_hold_are_bounded():
    """Was: with --max-batch 1 --max-queue 1, two steps whose bodies were still arriving took both slots, and
    every other client's step got 503 overloaded. Now a body counts against max-batch + max-queue once it is
    whole; bodies being received are bounded by the bytes they hold, (max-batch + max-queue) x
    max-message-bytes in all, beyond which a step is 503 overloaded and its connection closed."""
    app = _app(max_batch=1, max_queue=1, max_wait_ms=0, max_message_bytes=64)  # 128 bytes of bodies arriving

    async def main():
        gates, arrived = [asyncio.Event(), asyncio.Event()], []

        async def slow(gate: asyncio.Event):
            yield X[:16] * 3
            arrived.append(gate)
            await gate.wait()
            yield X[:16]

        async with _serving(app) as http:
            sids = [(await http.post("/v1/streams")).json()["stream_id"] for _ in range(4)]
            held = [asyncio.ensure_future(http.post(f"/v1/streams/{s}/steps", content=slow(g), headers=BIN))
                    for s, g in zip(sids, gates)]
            for _ in range(2000):
                if len(arrived) == 2:
                    break
                await asyncio.sleep(0.01)
            good = await http.post(f"/v1/streams/{sids[2]}/steps", content=X, headers=BIN)  # 96 + 32 bytes: 128
            over = await http.post(f"/v1/streams/{sids[3]}/steps", content=X * 2, headers=BIN)  # 96 + 64: too many
            answered = []
            for gate, reply in zip(gates, held):  # one at a time: each gets the engine's one queue place
                gate.set()
                answered.append(await asyncio.wait_for(reply, 20))
            again = await http.post(f"/v1/streams/{sids[3]}/steps", content=X, headers=BIN)
            return good, over, answered, again, app.svc.registry

    good, over, held, again, registry = asyncio.run(main())
    assert good.status_code == 200, good.text
    assert over.status_code == 503 and over.json()["code"] == "overloaded" and over.headers["retry-after"] == "1"
    assert over.headers["connection"] == "close"
    assert [r.status_code for r in held] == [200, 200] and again.status_code == 200, [r.text for r in held]
    assert registry.in_flight == 0 and registry.bodies.used == 0  # every slot and byte given back


# ------------------------------------------------------------------ 11: a header that decides the meaning, once


@pytest.mark.parametrize("name,values", [
    ("Content-Type", ["application/octet-stream", "application/json"]),
    ("Content-Type", ["application/octet-stream", "application/octet-stream"]),
    ("X-Step", ["0", "1"]),
    ("Authorization", ["Bearer s3cret-s3cret-s3cret", "Bearer other"]),
])
def test_a_repeated_header_that_decides_what_a_step_means_is_400_and_the_state_is_unchanged(name, values):
    """Was: of two Content-Type headers the first was used silently: JSON stepped as float32 frames of ASCII
    (200). Now a repeated Content-Type, X-Step, Authorization, Content-Length or Transfer-Encoding is 400
    bad_request, before the body is read."""
    app = _app(token="s3cret-s3cret-s3cret")
    auth = [("Authorization", "Bearer s3cret-s3cret-s3cret")]
    body = b'{"x":[[1,2,3,4]]'  # 16 bytes: one float32 frame of ASCII
    with TestClient(app) as http:
        sid = http.post("/v1/streams", headers=auth).json()["stream_id"]
        before = http.get(f"/v1/streams/{sid}/snapshot", headers=auth).content
        headers = [(name, v) for v in values] + [h for h in auth + [("Content-Type", BIN["Content-Type"])]
                                                 if h[0] != name]
        r = http.post(f"/v1/streams/{sid}/steps", content=body, headers=headers)
        assert r.status_code == 400 and r.json()["code"] == "bad_request", r.text
        assert name.lower() in r.json()["message"].lower()
        assert http.get(f"/v1/streams/{sid}/snapshot", headers=auth).content == before
        ok = http.post(f"/v1/streams/{sid}/steps", content=b'{"x":[[1,2,3,4]]}', headers=auth + list(JSON.items()))
        assert ok.status_code == 200


def test_a_websocket_handshake_with_a_repeated_authorization_is_refused_with_bad_request():
    """The socket's sibling: of two Authorization headers the first was used. Now the handshake is refused: the
    error bad_request, then close 1007, and no stream is opened."""
    app = _app(token="s3cret-s3cret-s3cret")
    twice = [(b"authorization", b"Bearer s3cret-s3cret-s3cret"), (b"authorization", b"Bearer other")]
    sent = []

    async def main():
        async with app.api.router.lifespan_context(app.api):
            connect = [{"type": "websocket.connect"}]

            async def receive():
                return connect.pop() if connect else {"type": "websocket.disconnect", "code": 1000}

            async def send(message):
                sent.append(message)

            scope = {"type": "websocket", "path": "/v1/streams/ws", "headers": twice, "query_string": b""}
            await asyncio.wait_for(app(scope, receive, send), 20)

    asyncio.run(main())
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"], sent
    assert '"bad_request"' in sent[1]["text"] and sent[2]["code"] == 1007 and not app.svc.registry.streams
