"""Issue 11, the server: uvicorn on a free loopback port, real sockets, the committed fixtures, no torch."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")
from conftest import REPO  # noqa: E402

from edge_rnn.runtime import StreamingModel  # noqa: E402
from edge_rnn.service import ServiceConfig, create_app  # noqa: E402
from edge_rnn.service._app import uvicorn_options  # noqa: E402
from edge_rnn.service._server import DrainingServer  # noqa: E402

MODEL_PATH = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)


class Server:
    """uvicorn serving the fixture on 127.0.0.1 at a free port, in a thread; stopped by the test itself."""

    def __init__(self, model: StreamingModel | None = None, **config):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = ServiceConfig(**config)
        model = model or StreamingModel.load(MODEL_PATH)
        app = create_app(model, config, variant=model.variant)  # as `edge-rnn serve` does
        self.server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    **uvicorn_options(config)), app.svc)  # as `edge-rnn serve`
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in 20 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/streams/ws"


def _chunks(rng, total=40):
    x = rng.standard_normal((total, 4)).astype(np.float32)
    edges = [0]
    while edges[-1] < total:
        edges.append(min(total, edges[-1] + int(rng.integers(1, 8))))
    return [x[a:b] for a, b in zip(edges, edges[1:])]


def _offline(chunks):
    model = StreamingModel.load(MODEL_PATH)
    s = model.open_stream()
    return np.concatenate([model.step(s, c)["y"] for c in chunks])


async def _refusal(ws) -> tuple[str, int]:
    """After a refused message: the error's code (None if the server sent none) and the close code."""
    try:
        reply = await ws.recv()
    except websockets.exceptions.ConnectionClosed as e:
        return None, e.rcvd.code
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        await ws.recv()
    return json.loads(reply)["code"], closed.value.rcvd.code


def test_fifty_websocket_streams_in_random_chunks_equal_offline_results_exactly_with_one_poisoner():
    rng = np.random.default_rng(0)
    work = [_chunks(rng) for _ in range(50)]
    good = np.ones((2, 4), np.float32)

    async def client(url, chunks):
        async with websockets.connect(url) as ws:
            ys = []
            for c in chunks:
                await ws.send(c.tobytes())
                ys.append(np.frombuffer(await ws.recv(), "<f4").reshape(-1, 6))
            await ws.send('{"type": "end"}')
            return np.concatenate(ys)

    async def poisoner(url):
        """A good step, then poison, on a new connection each time: each is refused with its close code."""
        answers = []
        for bad in (np.full((2, 4), np.nan, np.float32).tobytes(), np.ones((1, 5), np.float32).tobytes(),
                    b"", "not json", '{"type": "explode"}', b"\x00" * 8192):
            async with websockets.connect(url, max_size=None) as ws:
                await ws.send(good.tobytes())
                first = np.frombuffer(await ws.recv(), "<f4").reshape(-1, 6)
                await asyncio.sleep(0.01)
                await ws.send(bad)
                answers.append(await _refusal(ws))
        return answers, first

    async def main(server):
        return await asyncio.gather(poisoner(server.ws), *(client(server.ws, c) for c in work))

    with Server(max_batch=32, max_message_bytes=4096) as server:
        (answers, first), *outs = asyncio.run(main(server))
    assert answers == [("bad_chunk", 1007)] * 3 + [("bad_message", 1007)] * 2 + [(None, 1009)], answers
    np.testing.assert_array_equal(first, _offline([good]))
    assert all(np.array_equal(o, _offline(c)) for o, c in zip(outs, work))  # none of the 50 was touched


def test_websocket_commands_and_each_refusal_with_its_close_code(tmp_path):
    rng = np.random.default_rng(5)
    chunks = _chunks(rng, 12)

    async def commands(server):
        async with websockets.connect(server.ws) as ws:
            ys = []
            for c in chunks[:2]:
                await ws.send(c.tobytes())
                ys.append(np.frombuffer(await ws.recv(), "<f4").reshape(-1, 6))
            await ws.send('{"type": "snapshot"}')
            snap = base64.b64decode(json.loads(await ws.recv())["data"])
            await ws.send('{"type": "reset"}')
            assert json.loads(await ws.recv()) == {"type": "reset", "ok": True}
            await ws.send(chunks[0].tobytes())
            again = np.frombuffer(await ws.recv(), "<f4").reshape(-1, 6)
            await ws.send('{"type": "end"}')
            with pytest.raises(websockets.exceptions.ConnectionClosedOK) as closed:
                await ws.recv()
            return np.concatenate(ys), snap, again, closed.value.rcvd.code

    async def refused(url, **kw):
        async with websockets.connect(url, **kw) as ws:
            return await _refusal(ws)

    with Server(max_streams=1) as server:
        ys, snap, again, end_code = asyncio.run(commands(server))

        async def two():  # the second connection is one stream too many
            async with websockets.connect(server.ws) as ws:
                await ws.send(chunks[0].tobytes())
                await ws.recv()
                return await refused(server.ws)

        too_many = asyncio.run(two())
    np.testing.assert_array_equal(ys, _offline(chunks[:2]))
    np.testing.assert_array_equal(again, _offline(chunks[:1]))  # reset: from zeros again
    resumed = StreamingModel.load(MODEL_PATH).restore(snap)  # the snapshot holds the state after two chunks
    assert resumed.steps == len(chunks[0]) + len(chunks[1])
    assert end_code == 1000 and too_many == ("too_many_streams", 1013)

    with Server(token="a-token-of-sixteen-chars", idle_timeout=0.3) as server:
        auth = {"Authorization": "Bearer a-token-of-sixteen-chars"}
        assert asyncio.run(refused(server.ws)) == ("unauthorized", 1008)
        assert asyncio.run(refused(server.ws, additional_headers={"Authorization": "Bearer wrong"})) == (
            "unauthorized", 1008)

        async def idle():
            async with websockets.connect(server.ws, additional_headers=auth) as ws:
                await asyncio.sleep(1.5)  # expires (checked every 75 ms)
                await ws.send(chunks[0].tobytes())
                return await _refusal(ws)

        assert asyncio.run(idle()) == ("unknown_stream", 1008)

    tokens = StreamingModel.load(REPO / "tests" / "data" / "token_gru.onnx")  # int64 ids: no binary chunks
    with Server(tokens) as server:
        async def binary():
            async with websockets.connect(server.ws) as ws:
                await ws.send(np.ones(3, np.float32).tobytes())
                return await _refusal(ws)

        assert asyncio.run(binary()) == ("unsupported", 1003)


def test_http_streams_steps_errors_and_snapshot_resume_across_a_restart():
    rng = np.random.default_rng(1)
    chunks = _chunks(rng, 30)
    with Server(max_streams=2) as server, httpx.Client(base_url=server.url) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        assert len(sid) >= 32 and http.get("/healthz").json() == {"status": "ok"}
        ys = [np.frombuffer(http.post(f"/v1/streams/{sid}/steps", content=c.tobytes(),
                                      headers={"X-Step": str(i)}).content, "<f4") for i, c in enumerate(chunks[:3])]
        r = http.post(f"/v1/streams/{sid}/steps", content=chunks[3].tobytes(), headers={"X-Step": "7"})
        assert r.status_code == 409 and r.json()["code"] == "out_of_order"
        for bad, code in ((b"\x00" * 10, 400), (np.full((1, 4), np.inf, np.float32).tobytes(), 400)):
            assert http.post(f"/v1/streams/{sid}/steps", content=bad).status_code == code
        assert http.post("/v1/streams/nope/steps", content=chunks[0].tobytes()).status_code == 404
        http.post("/v1/streams")
        r = http.post("/v1/streams")
        assert r.status_code == 429 and r.json()["code"] == "too_many_streams"
        snap = http.get(f"/v1/streams/{sid}/snapshot").content
        assert "edge_rnn_steps" in http.get("/metrics").text
        assert http.get("/v1/model").json()["fingerprint"]
    with Server() as server, httpx.Client(base_url=server.url) as http:  # a new server process state
        sid = http.post("/v1/streams", content=snap).json()["stream_id"]
        for c in chunks[3:]:
            ys.append(np.frombuffer(http.post(f"/v1/streams/{sid}/steps", content=c.tobytes()).content, "<f4"))
        assert http.post("/v1/streams", content=b"EDGERNN-SNAPSHOT garbage").status_code == 400
    np.testing.assert_array_equal(np.concatenate(ys).reshape(-1, 6), _offline(chunks))


def test_a_retried_x_step_sent_while_the_first_waits_is_refused_not_applied_twice():
    """Was: the X-Step check passed for both, and both were applied (the stream advanced twice, 200 twice)."""
    x = np.ones((3, 4), np.float32).tobytes()

    async def main(server):
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            first, retry = await asyncio.gather(*(http.post(f"/v1/streams/{sid}/steps", content=x,
                                                            headers={"X-Step": "0"}) for _ in range(2)))
            snap = (await http.get(f"/v1/streams/{sid}/snapshot")).content
            return first, retry, snap

    with Server(max_wait_ms=300) as server:  # the first waits in the batch window while the retry arrives
        first, retry, snap = asyncio.run(main(server))
    assert sorted([first.status_code, retry.status_code]) == [200, 409]
    assert StreamingModel.load(MODEL_PATH).restore(snap).steps == 3  # applied once


def test_a_token_guards_every_route_but_health_and_idle_streams_expire():
    with Server(token="s3cret", idle_timeout=0.3) as server, httpx.Client(base_url=server.url) as http:
        assert http.post("/v1/streams").status_code == 401
        assert http.post("/v1/streams", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/healthz").status_code == 200
        auth = {"Authorization": "Bearer s3cret"}
        sid = http.post("/v1/streams", headers=auth).json()["stream_id"]
        time.sleep(1.5)
        r = http.post(f"/v1/streams/{sid}/steps", content=np.ones((1, 4), np.float32).tobytes(), headers=auth)
        assert r.status_code == 404
        assert "edge_rnn_expired_streams_total 1.0" in http.get("/metrics", headers=auth).text



def test_the_serve_command_starts_answers_and_stops_on_sigint(tmp_path):
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text("a-token-of-sixteen-chars\n")
    proc = subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", str(MODEL_PATH), "--port", str(port),
                             "--token-file", str(tmp_path / "token"), "--drain-timeout", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, ok = time.monotonic() + 30, False
        while time.monotonic() < deadline and not ok:
            try:
                ok = httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                time.sleep(0.1)
        assert ok, proc.stderr.read() if proc.poll() is not None else "no answer in 30 s"
        auth = {"Authorization": "Bearer a-token-of-sixteen-chars"}
        sid = httpx.post(f"{url}/v1/streams", headers=auth).json()["stream_id"]
        proc.send_signal(signal.SIGINT)  # drains: the open stream may still fetch its snapshot
        time.sleep(0.5)
        assert httpx.get(f"{url}/readyz").status_code == 503
        assert httpx.get(f"{url}/v1/streams/{sid}/snapshot", headers=auth).content.startswith(b"EDGERNN-SNAPSHOT")
        assert httpx.post(f"{url}/v1/streams", headers=auth).json()["code"] == "shutting_down"
        proc.wait(timeout=20)  # the stream stays open: the server stops at the 2 s drain timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read()


def test_a_full_queue_answers_503_with_retry_after_and_the_accepted_steps_still_answer():
    x = np.ones((2, 4), np.float32).tobytes()
    model = StreamingModel.load(MODEL_PATH)
    gate, real = threading.Event(), model.step_batch

    def held(items, **kw):  # the engine is busy until the test has seen the queue overflow: no race on speed
        gate.wait(20)
        return real(items, **kw)

    model.step_batch = held

    async def main(server):
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            ids = [(await http.post("/v1/streams")).json()["stream_id"] for _ in range(30)]
            steps = [asyncio.ensure_future(http.post(f"/v1/streams/{i}/steps", content=x)) for i in ids]
            try:
                for done in asyncio.as_completed(steps, timeout=20):
                    if (await done).status_code == 503:
                        break
            finally:
                gate.set()
            return await asyncio.gather(*steps)

    with Server(model, max_batch=1, max_queue=1, max_wait_ms=0) as server:
        replies = asyncio.run(main(server))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    assert all(r.headers.get("retry-after") == "1" and r.json()["code"] == "overloaded"
               for r in replies if r.status_code == 503)


def test_shutdown_with_steps_in_flight_answers_every_accepted_step():
    x = np.ones((2, 4), np.float32).tobytes()

    async def main(server):
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            ids = [(await http.post("/v1/streams")).json()["stream_id"] for _ in range(8)]
            steps = [asyncio.ensure_future(http.post(f"/v1/streams/{i}/steps", content=x)) for i in ids]
            await asyncio.sleep(0.05)  # the steps are in the engine, waiting out the 300 ms batch window
            server.server.should_exit = True
            return await asyncio.gather(*steps)

    with Server(max_batch=64, max_wait_ms=300) as server:
        replies = asyncio.run(main(server))
    assert [r.status_code for r in replies] == [200] * 8  # none lost, none left hanging
    assert all(np.frombuffer(r.content, "<f4").shape == (12,) for r in replies)


def test_a_stopping_server_drains_new_work_is_refused_and_open_streams_still_fetch_their_snapshots():
    import signal

    rng = np.random.default_rng(4)
    chunks = _chunks(rng, 10)

    async def main(server):
        async with websockets.connect(server.ws) as ws, httpx.AsyncClient(base_url=server.url) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            await http.post(f"/v1/streams/{sid}/steps", content=chunks[0].tobytes())
            await ws.send(chunks[0].tobytes())
            await ws.recv()
            server.server.handle_exit(signal.SIGTERM, None)  # as the signal would, from another thread
            await asyncio.sleep(0.3)
            step = await http.post(f"/v1/streams/{sid}/steps", content=chunks[1].tobytes())
            fresh = await http.post("/v1/streams")
            ready = await http.get("/readyz")
            http_snap = (await http.get(f"/v1/streams/{sid}/snapshot")).content
            await ws.send(chunks[1].tobytes())
            ws_step = json.loads(await ws.recv())  # refused, the connection stays open for the snapshot
            await ws.send('{"type": "snapshot"}')
            ws_snap = base64.b64decode(json.loads(await ws.recv())["data"])
            async with websockets.connect(server.ws) as late:
                late_answer = await _refusal(late)
            assert (await http.delete(f"/v1/streams/{sid}")).status_code == 204
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:  # at the drain timeout
                await ws.recv()
            return step, fresh, ready, http_snap, ws_step, ws_snap, late_answer, closed.value.rcvd.code

    with Server(drain_timeout=1.0) as server:
        step, fresh, ready, http_snap, ws_step, ws_snap, late, code = asyncio.run(main(server))
        server.thread.join(timeout=20)
        assert not server.thread.is_alive()  # the drain ended the server by itself
    assert step.status_code == 503 and step.json()["code"] == "shutting_down"
    assert fresh.status_code == 503 and ready.status_code == 503
    assert ws_step["code"] == "shutting_down" and late == ("shutting_down", 1001) and code == 1001
    model = StreamingModel.load(MODEL_PATH)
    for snap in (http_snap, ws_snap):  # each holds the state after the first chunk, and only that
        s = model.restore(snap)
        np.testing.assert_array_equal(model.step(s, chunks[1])["y"], _offline(chunks[:2])[len(chunks[0]):])


def test_the_client_speaks_both_transports_sync_and_async_and_resumes_from_a_snapshot():
    from edge_rnn.client import AsyncHttpStream, HttpStream, ServiceError, SyncWebSocketStream, WebSocketStream

    rng = np.random.default_rng(3)
    chunks = _chunks(rng, 30)
    want = _offline(chunks)
    with Server() as server:
        with HttpStream(server.url, width=6) as s:
            ys = [s.step(c) for c in chunks[:2]]
            saved = s.snapshot()
        with HttpStream(server.url, snapshot=saved, width=6) as s:  # resumed, on a new stream id
            ys += [s.step(c) for c in chunks[2:]]
        np.testing.assert_array_equal(np.concatenate(ys), want)
        with SyncWebSocketStream(server.url, width=6) as s:
            np.testing.assert_array_equal(np.concatenate([s.step(c) for c in chunks]), want)
            with pytest.raises(ServiceError, match="1007 bad_chunk"):  # refused, and the connection closed
                s.step(np.zeros((1, 5), np.float32))

        async def main():
            async with await AsyncHttpStream.open(server.url, width=6) as a:
                ya = np.concatenate([await a.step(c) for c in chunks])
            async with await WebSocketStream.open(server.url, width=6) as w:
                yw = np.concatenate([await w.step(c) for c in chunks])
                await w.reset()
                first = await w.step(chunks[0])
            return ya, yw, first

        ya, yw, first = asyncio.run(main())
        np.testing.assert_array_equal(ya, want)
        np.testing.assert_array_equal(yw, want)
        np.testing.assert_array_equal(first, want[: len(chunks[0])])
        with pytest.raises(ServiceError, match="404 unknown_stream"):
            s = HttpStream(server.url)
            s.id = "nope"
            s.step(chunks[0])


def test_loadtest_paces_real_time_streams_and_reports_latency():
    from click.testing import CliRunner

    from edge_rnn.cli import main
    from edge_rnn.loadtest import loadtest

    with Server() as server:
        result = loadtest(server.url, streams=6, chunk_ms=50, frame_ms=10, duration=1.5)
        r = CliRunner().invoke(main, ["loadtest", server.url, "--streams", "2", "--chunk-ms", "50", "--duration",
                                      "1"])
    assert result.kept_real_time == 6 and not result.errors and 0 < result.percentile(50) <= result.percentile(99)
    assert 6 * 25 <= len(result.latencies_ms) <= 6 * 32  # 1.5 s of 50 ms chunks per stream
    assert r.exit_code == 0 and "2/2 streams kept real time" in r.output, r.output


def test_binary_chunks_are_time_major_whatever_axis_the_model_keeps_time_on(tmp_path):
    """A model whose per-stream input is (features, time): the protocol's (time, features) bytes are moved there,
    and the reply comes back time first (was: reshaped as (time, features) and refused, or sent in the model's
    own order)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["h0"], ["hn"])], "ft",
        [helper.make_tensor_value_info("x", f, ["b", 3, "t"]), helper.make_tensor_value_info("h0", f, ["b", 2])],
        [helper.make_tensor_value_info("y", f, ["b", 3, "t"]), helper.make_tensor_value_info("hn", f, ["b", 2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "ft.onnx")
    model = StreamingModel.load(tmp_path / "ft.onnx", time_axis=2)
    with Server(model) as server:
        frames = np.arange(6, dtype=np.float32).reshape(2, 3)  # two frames of three features
        with httpx.Client(base_url=server.url) as http:
            sid = http.post("/v1/streams").json()["stream_id"]
            reply = http.post(f"/v1/streams/{sid}/steps", content=frames.tobytes())
        assert reply.status_code == 200, reply.text
        np.testing.assert_array_equal(np.frombuffer(reply.content, "<f4").reshape(2, 3), frames)


def _routes(spec: dict) -> dict:
    """What the OpenAPI says of each route, without what a FastAPI release may word differently."""
    out = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            out[f"{method.upper()} {path}"] = (
                op.get("summary"), sorted(p["name"] for p in op.get("parameters", [])),
                sorted(op.get("requestBody", {}).get("content", {})),
                {code: sorted(r.get("content", {})) for code, r in op.get("responses", {}).items()})
    return out


def test_the_committed_openapi_is_the_one_the_server_generates():
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    app = create_app(StreamingModel.load(MODEL_PATH))
    assert _routes(app.api.openapi()) == _routes(committed), (
        "docs/openapi.json is stale: regenerate it with the command in docs/service.md")
    steps = _routes(committed)["POST /v1/streams/{sid}/steps"]
    assert steps[1] == ["X-Step", "sid"] and steps[2] == ["application/json", "application/octet-stream"]
    assert {"200", "400", "404", "409", "413", "500", "503"} <= set(steps[3])


def test_a_bundles_int8_variant_is_served_and_says_which_it_is(tmp_path):
    pytest.importorskip("onnx")
    from edge_rnn.deploy import package

    package(MODEL_PATH, tmp_path / "bundle", variants=("fp32", "int8"), steps=2000)
    model = StreamingModel.load(tmp_path / "bundle", variant="int8")
    chunks = _chunks(np.random.default_rng(6), 20)
    with Server(model) as server, httpx.Client(base_url=server.url) as http:
        described = http.get("/v1/model").json()
        sid = http.post("/v1/streams").json()["stream_id"]
        ys = [np.frombuffer(http.post(f"/v1/streams/{sid}/steps", content=c.tobytes()).content, "<f4")
              for c in chunks]
    assert described["variant"] == "int8" and described["fingerprint"] == model.fingerprint
    assert described["fingerprint"] != StreamingModel.load(MODEL_PATH).fingerprint
    served = np.concatenate(ys).reshape(-1, 6)
    alone = StreamingModel.load(tmp_path / "bundle", variant="int8")
    s = alone.open_stream()  # dynamic int8 depends on how a stream is cut into calls: the same chunks, alone
    np.testing.assert_array_equal(served, np.concatenate([alone.step(s, c)["y"] for c in chunks]))
    assert not model.batches_streams  # served one call per stream: a neighbour cannot move its outputs
    fp32 = _offline(chunks)
    assert 0 < np.max(np.abs(served - fp32)) < 5e-2 + 5e-2 * np.max(np.abs(fp32))  # int8, within its tolerance row
