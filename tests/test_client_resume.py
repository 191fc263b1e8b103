"""A client's stream outlives the server stream that held it: checkpoints, and a replay of the chunks since.

First the resume logic alone (edge_rnn.client._resume), driven against streams of the fixture model in process,
with one failure injected at every operation in turn; then each of the four client classes against a real server
on 127.0.0.1 (uvicorn in a thread) behind a TCP relay that can cut every connection: connections cut, the stream
dropped by the server, the server crashed and replaced, the server drained and restarted on its port. Outputs must
equal the offline run bit for bit, and the final state (and its step count) the offline state: every chunk once.
The committed fixtures, no torch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")
with warnings.catch_warnings():  # starlette 1.x asks for httpx2 beside the httpx the client extra installs
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from starlette.testclient import TestClient
from conftest import REPO  # noqa: E402
from probe_servers import ModelServer  # noqa: E402
from service_streams import MODEL_PATH, chunks, offline, refusal  # noqa: E402
from stream_clients import KINDS, Client, offline_snapshot  # noqa: E402

from edge_rnn.client import (  # noqa: E402
    HttpStream,
    ReplayDiverged,
    ServiceError,
    SyncWebSocketStream,
)
from edge_rnn.client import _resume as resume  # noqa: E402
from edge_rnn.errors import EdgeRnnError  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402
from edge_rnn.service import ServiceConfig, create_app  # noqa: E402

EVERY = 4  # steps between checkpoints in these tests
MODEL = StreamingModel.load(MODEL_PATH)


# ---------------------------------------------------------------------------------------------- the logic alone
class FakeServer:
    """Streams of the fixture by id, as a plan's operations reach them; the plan's operation number ``fail_at``
    fails with a connection reset: before it is applied ("lost"), after ("late": applied, its answer lost), after
    with every stream gone and the next ``down`` operations refused too ("crash"), or before, and the first
    operation on the new stream too ("twice": a new stream half made, given up for another)."""

    def __init__(self, fail_at: int = -1, how: str = "lost", down: int = 0):
        self.streams: dict[int, object] = {}
        self.current, self.ops, self.fail_at, self.how, self.down = -1, 0, fail_at, how, down
        self.opened = 0

    def do(self, op: tuple):
        if op[0] == "abandon":  # best effort, never fails: not counted
            return self.streams.pop(self.current, None) and None
        k, self.ops = self.ops, self.ops + 1
        if self.down > 0 and self.fail_at < k:
            self.down -= 1
            raise ConnectionRefusedError("down")
        if (k == self.fail_at and self.how in ("lost", "twice")) or (k == self.fail_at + 2 and self.how == "twice"):
            raise ConnectionResetError("lost")
        result = getattr(self, op[0])(*op[1:])
        if k == self.fail_at and self.how in ("late", "crash"):
            if self.how == "crash":
                self.streams.clear()
            raise ConnectionResetError(self.how)
        return result

    async def ado(self, op: tuple):
        return self.do(op)

    def open(self, snapshot):
        self.opened += 1
        self.current = self.opened
        self.streams[self.current] = MODEL.restore(snapshot) if snapshot else MODEL.open_stream()

    def _stream(self):
        if self.current not in self.streams:
            raise ServiceError(404, "unknown_stream", "no such stream")
        return self.streams[self.current]

    def step(self, chunk: bytes) -> bytes:
        return MODEL.step(self._stream(), np.frombuffer(chunk, "<f4").reshape(-1, 4))["y"].astype("<f4").tobytes()

    def snapshot(self) -> bytes:
        return self._stream().snapshot()


def _drive(server: FakeServer, parts: list[np.ndarray], use_async: bool, every: int = EVERY):
    j = resume.journal(None, resume=True, every=every, timeout=10, gone=(OSError,))
    server.open(None)  # the client's own open, before any plan
    if use_async:
        async def main():
            return [await resume.arun(resume.step_plan(j, c.tobytes()), server.ado) for c in parts]
        outs = asyncio.run(main())
    else:
        outs = [resume.run(resume.step_plan(j, c.tobytes()), server.do) for c in parts]
    return j, np.concatenate([np.frombuffer(o, "<f4").reshape(-1, 6) for o in outs])


@pytest.mark.parametrize("use_async", [False, True], ids=["run", "arun"])
@pytest.mark.parametrize("how", ["lost", "late", "crash", "twice"])
def test_a_failure_at_any_operation_resumes_bit_exact_and_exactly_once(monkeypatch, how, use_async):
    waits, real_sleep = [], asyncio.sleep
    monkeypatch.setattr(resume.time, "sleep", waits.append)  # the waits between tries recorded, not waited
    monkeypatch.setattr(resume.asyncio, "sleep", lambda s: real_sleep(0, waits.append(s)))
    parts = chunks(np.random.default_rng(1), 45)
    want, final = offline(parts), offline_snapshot(parts)
    total = len(parts) + len(parts) // EVERY  # the operations of an uninterrupted run: steps and checkpoints
    for fail_at in range(total):
        server = FakeServer(fail_at, how, down=3 if how == "crash" else 0)
        j, got = _drive(server, parts, use_async)
        np.testing.assert_array_equal(got, want, err_msg=f"failed at operation {fail_at}")
        assert server.snapshot() == final, f"failed at operation {fail_at}: not every chunk once"
        assert list(server.streams) == [server.current]  # the stream given up was closed
        assert j.resumes == 1 and j.last_resume_s is not None
    if how == "crash":  # the server down for three tries: tried again after 50 ms, doubling
        assert waits[:3] == [0.05, 0.1, 0.2]


def test_without_a_failure_each_checkpoint_drops_the_chunks_before_it():
    parts = chunks(np.random.default_rng(2), 40)
    server = FakeServer()
    j, got = _drive(server, parts, use_async=False)
    np.testing.assert_array_equal(got, offline(parts))
    assert len(j.entries) == len(parts) % EVERY and j.resumes == 0
    assert j.checkpoint == offline_snapshot(parts[:len(parts) - len(j.entries)])
    assert j.checkpoint_steps == sum(map(len, parts[:len(parts) - len(j.entries)]))


def test_a_replay_that_gives_another_output_raises_and_never_returns_it():
    parts = chunks(np.random.default_rng(3), 30)
    j = resume.journal(None, resume=True, every=EVERY, timeout=10, gone=(OSError,))
    server = FakeServer()
    server.open(None)
    for c in parts[:6]:
        resume.run(resume.step_plan(j, c.tobytes()), server.do)
    chunk, out = j.entries[1]
    j.entries[1] = (chunk, out[:-1] + bytes([out[-1] ^ 1]))  # one bit of an output the caller has
    server.fail_at, server.how = server.ops, "lost"
    with pytest.raises(ReplayDiverged, match="replay_diverged: chunk 1 after the checkpoint") as e:
        resume.run(resume.step_plan(j, parts[6].tobytes()), server.do)
    assert isinstance(e.value, EdgeRnnError) and e.value.code == "replay_diverged"


def test_errors_that_do_not_mean_the_server_is_gone_raise_at_once():
    j = resume.journal(None, resume=True, every=EVERY, timeout=10, gone=(OSError,))
    for status, code in ((400, "bad_chunk"), (401, "unauthorized"), (413, "too_large"), (400, "bad_snapshot"),
                         (429, "stream_busy"), (500, "inference_failed"), (1011, "inference_failed"),
                         (1007, "bad_chunk"), (1008, "unauthorized"), (1009, "too_large"), (1007, "bad_snapshot"),
                         (503, "overloaded")):  # the server's own overloaded: retried in place, no resume
        assert not j.is_gone(ServiceError(status, code, "")), (status, code)
    for status, code in ((502, "error"), (503, "shutting_down"), (504, "error"), (409, "out_of_order"),
                         (404, "unknown_stream"), (1001, "shutting_down"), (1006, "closed"), (1011, "internal_error"),
                         (1012, "closed"), (1013, "too_many_streams"), (1013, "overloaded"), (1008, "unknown_stream"),
                         (409, "out_of_step"), (1008, "out_of_step")):
        assert j.is_gone(ServiceError(status, code, "")), (status, code)
    assert j.is_gone(ServiceError(500, "error", "<html>", proxied=True)) and j.is_gone(ConnectionResetError())
    assert j.is_gone(ServiceError(503, "overloaded", "<html>", proxied=True))  # a proxy's: the server may be gone

    def refuse(op):
        raise ServiceError(400, "bad_chunk", "no")

    with pytest.raises(ServiceError, match="400 bad_chunk"):
        resume.run(resume.step_plan(j, b"x"), refuse)
    assert j.resumes == 0


class Clock:
    """``time`` for the resume logic: a sleep advances it, and is recorded."""

    def __init__(self):
        self.now, self.waits = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("retry_after,waits", [(5.0, [1.0, 1.0]), (None, [0.05, 0.1])])
def test_the_servers_own_overloaded_is_sent_again_in_place_after_retry_after(monkeypatch, retry_after, waits):
    clock, ops, refusals = Clock(), [], [2]
    monkeypatch.setattr(resume, "time", clock)
    j = resume.journal(None, resume=True, every=EVERY, timeout=10, gone=(OSError,))

    def busy(op):
        ops.append(op[0])
        if op[0] == "step" and refusals[0]:
            refusals[0] -= 1
            raise ServiceError(503, "overloaded", "retry shortly", retry_after=retry_after)
        return b"y"

    assert resume.run(resume.step_plan(j, b"x"), busy) == b"y"
    assert ops == ["step"] * 3 and clock.waits == waits and j.resumes == 0  # the same stream: no open, no abandon
    assert j.entries == [(b"x", b"y")]  # applied once


def test_an_overload_longer_than_resume_timeout_raises_it_and_never_resumes(monkeypatch):
    clock, ops = Clock(), []
    monkeypatch.setattr(resume, "time", clock)
    j = resume.journal(None, resume=True, every=EVERY, timeout=3, gone=(OSError,))

    def busy(op):
        ops.append(op[0])
        raise ServiceError(503, "overloaded", "retry shortly", retry_after=1)

    with pytest.raises(ServiceError, match="503 overloaded"):
        resume.run(resume.step_plan(j, b"x"), busy)
    assert set(ops) == {"step"} and clock.waits == [1, 1, 1] and j.resumes == 0 and not j.entries


def test_a_resume_that_fails_half_way_gives_its_new_stream_up(monkeypatch):
    monkeypatch.setattr(resume, "time", Clock())
    parts = chunks(np.random.default_rng(6), 40)
    j = resume.journal(None, resume=True, every=EVERY, timeout=3, gone=(OSError,))
    server = FakeServer()
    server.open(None)
    outs = [resume.run(resume.step_plan(j, c.tobytes()), server.do) for c in parts[:EVERY + 2]]
    server.streams.clear()  # the stream gone; the new one's replay then refused overloaded for longer than 3 s
    busy = [False]

    def do(op):
        if busy[0] and op[0] == "step":
            raise ServiceError(503, "overloaded", "retry shortly", retry_after=1)
        busy[0] = busy[0] or op[0] == "open"
        return server.do(op)

    with pytest.raises(ServiceError, match="503 overloaded"):
        resume.run(resume.step_plan(j, parts[EVERY + 2].tobytes()), do)
    assert not server.streams  # the half-replayed stream was given up: never stepped on as if whole
    outs += [resume.run(resume.step_plan(j, c.tobytes()), server.do) for c in parts[EVERY + 2:]]
    np.testing.assert_array_equal(np.concatenate([np.frombuffer(o, "<f4") for o in outs]), offline(parts).ravel())
    assert server.snapshot() == offline_snapshot(parts) and j.resumes == 1


def test_a_server_gone_for_longer_than_resume_timeout_raises_the_last_error():
    j = resume.journal(None, resume=True, every=EVERY, timeout=0.3, gone=(OSError,))

    def down(op):
        raise ConnectionRefusedError("still down")

    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match="still down"):
        resume.run(resume.step_plan(j, b"x"), down)
    assert time.monotonic() - t0 < 10  # given up after 0.3 s, generously bounded
    server = FakeServer()  # back: the same chunk sent again is applied, on a stream resumed from the journal
    server.open(None)
    x = chunks(np.random.default_rng(5), 8)[0]
    assert resume.run(resume.step_plan(j, x.tobytes()), server.do) == offline([x]).tobytes() and j.resumes == 0


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "10"])
def test_checkpoint_every_must_be_a_positive_integer(every):
    with pytest.raises(EdgeRnnError, match="checkpoint_every: expected an integer >= 1"):
        resume.journal(None, resume=True, every=every, timeout=10, gone=(OSError,))


def test_a_snapshot_header_is_read_without_the_runtime():
    snap = offline_snapshot(chunks(np.random.default_rng(4), 9))
    assert resume.snapshot_steps(snap) == 9
    assert resume.snapshot_steps(b"not a snapshot") is None and resume.snapshot_steps(snap[:20]) is None


# ---------------------------------------------------------------------------------------------- real servers
class Relay:
    """A TCP relay on a free loopback port to ``upstream``'s port. :meth:`cut` ends every connection through it at
    once; armed with :meth:`fail_next`, it ends the connection of the next request instead of passing it on
    ("lost"), or passes the request on and ends the connection instead of passing its answer back ("late": the
    step was applied, its answer is lost), as a server's death does. :attr:`upstream` may be pointed elsewhere."""

    def __init__(self, upstream: int):
        self.upstream, self.pairs, self.lock, self.armed = upstream, [], threading.Lock(), None
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:  # the relay closed
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:  # nothing listens there (a server restarting): the client sees its connection end
                client.close()
                continue
            server.settimeout(None)
            pair = (client, server)
            for end in pair:  # each piece passed on at once (Nagle's wait would add 40 ms a message)
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, "lost"), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair[::-1], "late"), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket], fails: str) -> None:
        a, b = pair
        try:
            while data := a.recv(65536):
                with self.lock:
                    failing, self.armed = self.armed == fails, None if self.armed == fails else self.armed
                if failing:
                    break
                b.sendall(data)
        except OSError:
            pass
        _reset(pair)

    def fail_next(self, how: str) -> None:
        self.armed = how

    def cut(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            _reset(pair)

    def close(self) -> None:
        self.sock.close()
        self.cut()


def _reset(pair: tuple[socket.socket, ...]) -> None:
    """End both connections of ``pair`` at once (a reset, not a polite close)."""
    for s in pair:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass




def _drop(servers: dict) -> None:
    """The server forgets every stream: the next step is a 404 ``unknown_stream`` (over a WebSocket, 1008)."""
    registry = servers["a"].svc.registry
    for sid in list(registry.streams):
        registry.close(sid)


def _crash(servers: dict) -> None:
    """Another server takes the relay's new connections and every connection is cut: the stream's server is gone."""
    servers["relay"].upstream = servers["b"].port
    servers["relay"].cut()


def _drain(servers: dict) -> None:
    """The server drains (steps answered 503 ``shutting_down``, snapshots still given), stops, and a new one starts
    on its port."""
    a = servers["a"]
    a.svc.begin_drain()

    def restart():
        time.sleep(0.3)
        a.__exit__()
        servers["b"] = ModelServer(port=a.port).__enter__()

    servers["restarter"] = threading.Thread(target=restart)
    servers["restarter"].start()


FAULTS = {"lost": lambda servers: servers["relay"].fail_next("lost"),
          "late": lambda servers: servers["relay"].fail_next("late"), "drop": _drop, "crash": _crash, "drain": _drain}


def _run(kind: str, fault: str, at: int, parts: list[np.ndarray], **kw) -> tuple[np.ndarray, bytes, Client]:
    """``parts`` stepped through the relay, ``fault`` injected before step ``at``; the outputs, the final snapshot
    and the client."""
    servers = {"a": ModelServer().__enter__(), "b": ModelServer().__enter__() if fault == "crash" else None}
    servers["relay"] = Relay(servers["a"].port)
    try:
        s = Client(kind, servers["relay"].url, checkpoint_every=EVERY, resume_timeout=30, **kw)
        ys = []
        for i, c in enumerate(parts):
            if i == at:
                FAULTS[fault](servers)
            ys.append(s.step(c))
        final = s.snapshot()
        s.close()
        return np.concatenate(ys), final, s
    finally:
        if "restarter" in servers:
            servers["restarter"].join(timeout=30)
        servers["relay"].close()
        for name in ("a", "b"):
            if servers.get(name) is not None:
                servers[name].__exit__()


CASES = [("lost", at) for at in (1, EVERY, EVERY + EVERY // 2 + 1)] + [
    ("late", EVERY + 1), ("drop", EVERY + 2), ("crash", EVERY + 3), ("drain", 2 * EVERY + 1)]


@pytest.mark.parametrize("fault,at", CASES, ids=[f"{f}-at-{at}" for f, at in CASES])
@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_resumed_after_a_failure_equals_the_offline_run_bit_for_bit_and_exactly_once(kind, fault, at):
    parts = chunks(np.random.default_rng(at), 60)
    got, final, s = _run(kind, fault, at, parts)
    np.testing.assert_array_equal(got, offline(parts))
    assert final == offline_snapshot(parts)  # the same state and step count: every chunk applied once
    assert s.s.resumes == 1 and 0 < s.s.last_resume_s < 30


@pytest.mark.parametrize("kind", KINDS)
def test_without_a_failure_a_resuming_client_equals_the_offline_run_and_never_resumes(kind):
    parts = chunks(np.random.default_rng(9), 50)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=1)  # a checkpoint after every step
        got = np.concatenate([s.step(c) for c in parts])
        final = s.snapshot()
        s.close()
        assert not server.svc.registry.streams  # closed; none left behind by the checkpoints
    np.testing.assert_array_equal(got, offline(parts))
    assert final == offline_snapshot(parts) and s.s.resumes == 0 and s.s.last_resume_s is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_tampered_output_is_found_by_the_replay(kind):
    parts = chunks(np.random.default_rng(10), 40)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=EVERY)
        for c in parts[:EVERY + 2]:
            s.step(c)
        chunk, out = s.s._journal.entries[0]
        s.s._journal.entries[0] = (chunk, out[:-4] + np.float32(1.5).tobytes())
        _drop({"a": server})
        for _ in range(2):  # and again: never a number from the stream that diverged
            with pytest.raises(ReplayDiverged, match="replay_diverged"):
                s.step(parts[EVERY + 2])
        s.close()


@pytest.mark.parametrize("fault", ["lost", "drop"])
@pytest.mark.parametrize("kind", KINDS)
def test_with_resume_off_a_failure_raises_as_before(kind, fault):
    parts = chunks(np.random.default_rng(11), 20)
    with ModelServer() as server:
        relay = Relay(server.port)
        try:
            s = Client(kind, relay.url, resume=False)
            s.step(parts[0])
            FAULTS[fault]({"a": server, "relay": relay})
            want = httpx.TransportError if fault == "lost" and "http" in kind else ServiceError
            with pytest.raises(want) as e:
                s.step(parts[1])
            if fault == "drop":
                assert e.value.code == "unknown_stream" and e.value.status == (404 if "http" in kind else 1008)
            elif want is ServiceError:
                assert e.value.status == 1006  # no close frame
            assert s.s.resumes == 0
            try:
                s.close()
            except (httpx.TransportError, ServiceError):
                pass
        finally:
            relay.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_chunk_raises_and_is_not_resumed(kind):
    with ModelServer() as server:
        s = Client(kind, server.url)
        s.step(np.ones((2, 4), np.float32))
        with pytest.raises(ServiceError, match="bad_chunk"):
            s.step(np.ones((1, 5), np.float32))
        assert s.s.resumes == 0
        try:
            s.close()
        except ServiceError:
            pass


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_opened_from_a_snapshot_resumes_from_it(kind):
    parts = chunks(np.random.default_rng(12), 40)
    saved = offline_snapshot(parts[:3])
    with ModelServer() as server:
        s = Client(kind, server.url, snapshot=saved, checkpoint_every=50)  # no checkpoint before the failure
        ys = [s.step(c) for c in parts[3:6]]
        _drop({"a": server})
        ys += [s.step(c) for c in parts[6:]]
        final = s.snapshot()
        s.close()
    np.testing.assert_array_equal(np.concatenate(ys), offline(parts)[sum(map(len, parts[:3])):])
    assert final == offline_snapshot(parts) and s.s.resumes == 1


@pytest.mark.parametrize("kind", ["ws", "sync_ws"])
def test_a_websocket_stream_reset_and_then_resumed_starts_from_zeros(kind):
    parts = chunks(np.random.default_rng(17), 40)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=EVERY)
        for c in parts[:EVERY + 1]:  # a checkpoint, and a chunk after it, before the reset
            s.step(c)
        s._call(s.s.reset())
        ys = [s.step(c) for c in parts[EVERY + 1:EVERY + 3]]
        _drop({"a": server})
        ys += [s.step(c) for c in parts[EVERY + 3:]]
        final = s.snapshot()
        s.close()
    np.testing.assert_array_equal(np.concatenate(ys), offline(parts[EVERY + 1:]))
    assert final == offline_snapshot(parts[EVERY + 1:]) and s.s.resumes == 1


def test_http_requests_about_a_stream_carry_its_id_for_a_router():
    seen = []

    def record(request):
        seen.append((request.method, request.url.path, request.headers.get("x-session-id")))

    with ModelServer() as server:
        s = HttpStream(server.url, width=6, checkpoint_every=2)
        s._http.event_hooks = {"request": [record]}
        for c in chunks(np.random.default_rng(13), 12)[:3]:
            s.step(c)
        s.snapshot()
        s.close()
    assert seen and all(sid == s.id and path.startswith(f"/v1/streams/{s.id}") for _, path, sid in seen), seen
    assert {m for m, _, _ in seen} == {"POST", "GET", "DELETE"}


def test_a_restore_message_over_the_servers_limit_is_refused_clearly():
    snap = offline_snapshot(chunks(np.random.default_rng(14), 9))
    with ModelServer(max_message_bytes=len(snap)) as server:  # the base64 JSON is longer than the snapshot
        with pytest.raises(ServiceError, match="1009 too_large: the snapshot as a restore message"):
            SyncWebSocketStream(server.url, snapshot=snap, resume=False)


# ---------------------------------------------------------------------------------------------- the restore command
def _ws(**config):
    app = create_app(StreamingModel.load(MODEL_PATH), ServiceConfig(**config))
    return TestClient(app), app.svc


def test_the_restore_command_replaces_the_connections_state_and_keeps_one_slab_row():
    parts = chunks(np.random.default_rng(15), 30)
    snap = offline_snapshot(parts[:4])
    client, svc = _ws()
    with client, client.websocket_connect("/v1/streams/ws") as ws:
        ws.send_bytes(parts[0].tobytes())  # some state first: the restore replaces it
        ws.receive_bytes()
        rows = len(svc.model._slab)
        ws.send_text(json.dumps({"type": "restore", "data": base64.b64encode(snap).decode()}))
        answer = json.loads(ws.receive_text())
        assert len(svc.model._slab) == rows and len(svc.registry.streams) == 1
        ys = []
        for c in parts[4:]:
            ws.send_bytes(c.tobytes())
            ys.append(np.frombuffer(ws.receive_bytes(), "<f4").reshape(-1, 6))
        ws.send_text('{"type": "snapshot"}')
        final = base64.b64decode(json.loads(ws.receive_text())["data"])
    assert answer == {"type": "restore", "ok": True, "steps": sum(map(len, parts[:4]))}
    np.testing.assert_array_equal(np.concatenate(ys), offline(parts)[sum(map(len, parts[:4])):])
    assert final == offline_snapshot(parts)


def _gru_snapshot() -> bytes:
    gru = StreamingModel.load(REPO / "tests" / "data" / "gru_cell.onnx")
    return gru.open_stream().snapshot()


def _flipped() -> bytes:
    snap = bytearray(offline_snapshot(chunks(np.random.default_rng(16), 5)))
    snap[-3] ^= 0x10
    return bytes(snap)


RESTORE_REFUSALS = {
    "another model": ({"type": "restore", "data": None}, "bad_snapshot", 1007),
    "a corrupt snapshot": ({"type": "restore", "data": None}, "bad_snapshot", 1007),
    "not base64": ({"type": "restore", "data": "%%%"}, "bad_snapshot", 1007),
    "no data": ({"type": "restore"}, "bad_message", 1007),
    "too long": ({"type": "restore", "data": "A" * 100_000}, "too_large", 1009),
}


@pytest.mark.parametrize("case", list(RESTORE_REFUSALS))
def test_the_restore_command_refuses_what_post_streams_refuses_and_leaves_the_state(case):
    message, code, close = RESTORE_REFUSALS[case]
    if message.get("data", 0) is None:
        message = {**message, "data": base64.b64encode(_gru_snapshot() if case == "another model"
                                                       else _flipped()).decode()}
    client, svc = _ws()
    with client:
        with client.websocket_connect("/v1/streams/ws") as ws:
            ws.send_bytes(np.ones((2, 4), np.float32).tobytes())
            ws.receive_bytes()
            ws.send_text(json.dumps(message))
            assert refusal(ws) == (code, close)
        assert not svc.registry.streams and len(svc.model._slab) == 0  # closed; the refused snapshot took no row
        if code == "bad_snapshot" and case != "not base64":  # the HTTP open answers the same code
            r = client.post("/v1/streams", content=base64.b64decode(message["data"]))
            assert r.status_code == 400 and r.json()["code"] == code


def test_an_unknown_command_lists_restore():
    client, _ = _ws()
    with client, client.websocket_connect("/v1/streams/ws") as ws:
        ws.send_text('{"type": "explode"}')
        reply = json.loads(ws.receive_text())
    assert reply["code"] == "bad_message" and '"restore"' in reply["message"]
