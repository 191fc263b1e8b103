"""The server on real sockets: uvicorn on a free loopback port, for what an in-process app cannot show (uvicorn's
protocol, many connections, signals and the drain, the client library and the load generator); the committed
fixtures, no torch. The routes and the socket's messages one by one are tested in process (test_service_http.py,
test_service_websocket.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")
from service_streams import MODEL_PATH, chunks, offline, until  # noqa: E402

from edge_rnn.runtime import StreamingModel  # noqa: E402
from edge_rnn.service import ServiceConfig, create_app  # noqa: E402
from edge_rnn.service._app import uvicorn_options  # noqa: E402
from edge_rnn.service._server import DrainingServer  # noqa: E402

BIN = {"Content-Type": "application/octet-stream"}  # a step's media type: without one it is a 415


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
        self.svc = app.svc
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
    work = [chunks(rng, 40) for _ in range(50)]
    good = np.ones((2, 4), np.float32)

    async def client(url, parts):
        async with websockets.connect(url) as ws:
            ys = []
            for c in parts:
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
    np.testing.assert_array_equal(first, offline([good]))
    assert all(np.array_equal(o, offline(c)) for o, c in zip(outs, work))  # none of the 50 was touched


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
        until(lambda: httpx.get(f"{url}/readyz").status_code != 200)  # the signal handler has run
        assert httpx.get(f"{url}/readyz").status_code == 503
        assert httpx.get(f"{url}/v1/streams/{sid}/snapshot", headers=auth).content.startswith(b"EDGERNN-SNAPSHOT")
        assert httpx.post(f"{url}/v1/streams", headers=auth).json()["code"] == "shutting_down"
        proc.wait(timeout=20)  # the stream stays open: the server stops at the 2 s drain timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read()


@pytest.mark.parametrize("wait_ms", [300, 2500])  # 2500: answered after the grace connections are dropped at
def test_shutdown_with_steps_in_flight_answers_every_accepted_step(wait_ms):
    x = np.ones((2, 4), np.float32).tobytes()

    async def main(server, submitted):
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            ids = [(await http.post("/v1/streams")).json()["stream_id"] for _ in range(8)]
            steps = [asyncio.ensure_future(http.post(f"/v1/streams/{i}/steps", content=x, headers=BIN)) for i in ids]
            await asyncio.to_thread(until, lambda: len(submitted) == 8)  # all in the engine, in its batch window
            server.server.should_exit = True
            return await asyncio.gather(*steps)

    with Server(max_batch=64, max_wait_ms=wait_ms) as server:
        submitted, submit = [], server.svc.submit

        def counted(entry, chunk):
            future = submit(entry, chunk)
            submitted.append(future)
            return future

        server.svc.submit = counted
        replies = asyncio.run(main(server, submitted))
    assert [r.status_code for r in replies] == [200] * 8  # none lost, none left hanging
    assert all(np.frombuffer(r.content, "<f4").shape == (12,) for r in replies)


def test_a_stopping_server_drains_new_work_is_refused_and_open_streams_still_fetch_their_snapshots():
    import signal

    rng = np.random.default_rng(4)
    parts = chunks(rng, 10)

    async def main(server):
        async with websockets.connect(server.ws) as ws, httpx.AsyncClient(base_url=server.url) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            await http.post(f"/v1/streams/{sid}/steps", content=parts[0].tobytes(), headers=BIN)
            await ws.send(parts[0].tobytes())
            await ws.recv()
            server.server.handle_exit(signal.SIGTERM, None)  # as the signal would, from another thread
            await asyncio.to_thread(until, lambda: server.svc.closing)  # the server's loop has begun the drain
            step = await http.post(f"/v1/streams/{sid}/steps", content=parts[1].tobytes(), headers=BIN)
            fresh = await http.post("/v1/streams")
            ready = await http.get("/readyz")
            http_snap = (await http.get(f"/v1/streams/{sid}/snapshot")).content
            await ws.send(parts[1].tobytes())
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
        np.testing.assert_array_equal(model.step(s, parts[1])["y"], offline(parts[:2])[len(parts[0]):])


def test_the_client_speaks_both_transports_sync_and_async_and_resumes_from_a_snapshot():
    from edge_rnn.client import AsyncHttpStream, HttpStream, ServiceError, SyncWebSocketStream, WebSocketStream

    rng = np.random.default_rng(3)
    parts = chunks(rng, 30)
    want = offline(parts)
    with Server() as server:
        with HttpStream(server.url, width=6) as s:
            ys = [s.step(c) for c in parts[:2]]
            saved = s.snapshot()
        with HttpStream(server.url, snapshot=saved, width=6) as s:  # resumed, on a new stream id
            ys += [s.step(c) for c in parts[2:]]
        np.testing.assert_array_equal(np.concatenate(ys), want)
        with SyncWebSocketStream(server.url, width=6) as s:
            np.testing.assert_array_equal(np.concatenate([s.step(c) for c in parts]), want)
            with pytest.raises(ServiceError, match="1007 bad_chunk"):  # refused, and the connection closed
                s.step(np.zeros((1, 5), np.float32))

        async def main():
            async with await AsyncHttpStream.open(server.url, width=6) as a:
                ya = np.concatenate([await a.step(c) for c in parts])
            async with await WebSocketStream.open(server.url, width=6) as w:
                yw = np.concatenate([await w.step(c) for c in parts])
                await w.reset()
                first = await w.step(parts[0])
            return ya, yw, first

        ya, yw, first = asyncio.run(main())
        np.testing.assert_array_equal(ya, want)
        np.testing.assert_array_equal(yw, want)
        np.testing.assert_array_equal(first, want[: len(parts[0])])
        with pytest.raises(ServiceError, match="404 unknown_stream"):
            s = HttpStream(server.url, resume=False)  # with resume on, a stream unknown to the server is resumed
            s.id = "nope"
            s.step(parts[0])


def test_loadtest_paces_real_time_streams_and_reports_latency():
    from click.testing import CliRunner

    from edge_rnn.cli import main
    from edge_rnn.loadtest import loadtest

    with Server() as server:
        result = loadtest(server.url, streams=6, chunk_ms=50, frame_ms=10, duration=1.5)
        r = CliRunner().invoke(main, ["loadtest", server.url, "--streams", "2", "--chunk-ms", "50", "--duration",
                                      "1", "--min-real-time", "0"])
    # whether each stream kept real time depends on this machine's load: counted, not asserted (no wall clock)
    assert 0 <= result.kept_real_time <= 6 and not result.errors
    assert 0 < result.percentile(50) <= result.percentile(99)
    assert 6 <= len(result.latencies_ms) <= 6 * 32  # paced: never more than 1.5 s of 50 ms chunks per stream
    kept = re.search(r"(\d+)/2 streams kept real time", r.output)
    assert r.exit_code == 0 and kept and int(kept.group(1)) <= 2, r.output
