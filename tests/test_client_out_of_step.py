"""A call of the client interrupted between its request and its reply (a cancelled task, an ``asyncio.wait_for``
timeout, Ctrl-C), a socket closed by a refusal, and an open that fails half-way: the stream is never left out of
step with the server. A later call resumes from the checkpoint (``resume=True``) or raises ``out_of_step``; never
another chunk's output, never a 409 for ever, never a connection left open. Servers on 127.0.0.1 in threads,
stopped by the tests; the committed fixtures, no torch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("websockets")

from client_interrupts import Interrupter  # noqa: E402
from probe_servers import ModelServer, SizeLimitedSocket, either, outputs  # noqa: E402
from service_streams import chunks, until  # noqa: E402
from stream_clients import KINDS, Client, offline_snapshot  # noqa: E402

from edge_rnn.client import HttpStream, ServiceError  # noqa: E402

WS_KINDS = ["sync_ws", "ws"]


def _loop(s: Client):
    return s.loop


def _all_closed(server: ModelServer) -> None:
    until(lambda: not server.svc.registry.streams, 10)


# ------------------------------------------------------------------------------------ interrupted between the two
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no-resume"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_step_interrupted_after_its_request_went_out_never_shifts_a_later_output(monkeypatch, kind, resume):
    parts = chunks(np.random.default_rng(21), 40)
    cut = Interrupter(monkeypatch)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=4, resume=resume)
        got = [(0, s.step(parts[0]))]
        cut.arm("step")
        cut.call(_loop(s), lambda: s.s.step(parts[1]))
        if resume:
            got += [(k, s.step(parts[k])) for k in range(2, 8)]
            assert s.s.resumes == 1
        else:
            for _ in range(2):  # and again: the stream stays out of step, clearly
                with pytest.raises(ServiceError, match="out_of_step"):
                    s.step(parts[2])
        s.close()  # no error after an interrupted call
        _all_closed(server)
    applied, skipped = outputs(parts, [0, 1, *range(2, 8)]), outputs(parts, [0, *range(2, 8)])
    for k, y in got:
        assert either(y, [applied[k], skipped[k]]), f"step {k} returned another chunk's output"


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_interrupted_after_its_request_went_out_leaves_the_stream_in_step(monkeypatch, kind):
    parts = chunks(np.random.default_rng(22), 40)
    cut = Interrupter(monkeypatch)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=2)
        got = [(0, s.step(parts[0]))]
        cut.arm("snapshot")  # the checkpoint fetched after the step's answer
        cut.call(_loop(s), lambda: s.s.step(parts[1]))
        got += [(k, s.step(parts[k])) for k in range(2, 8)]
        final = s.snapshot()
        s.close()
    applied = outputs(parts, range(8))  # chunk 1 was answered, and counted, before the checkpoint was cut
    for k, y in got:
        np.testing.assert_array_equal(y, applied[k], err_msg=f"step {k}")
    assert final == offline_snapshot(parts[:8])


@pytest.mark.parametrize("kind", KINDS)
def test_a_replay_interrupted_after_its_request_went_out_leaves_the_stream_in_step(monkeypatch, kind):
    parts = chunks(np.random.default_rng(23), 40)
    cut = Interrupter(monkeypatch)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=10)
        got = [(k, s.step(parts[k])) for k in range(3)]
        for sid in list(server.svc.registry.streams):  # the server forgets the stream: step 3 resumes it
            server.svc.registry.close(sid)
        cut.arm("step", skip=1)  # step 3 itself passes (unknown_stream); the replay of chunk 0 is cut
        cut.call(_loop(s), lambda: s.s.step(parts[3]))
        got += [(k, s.step(parts[k])) for k in range(4, 9)]
        final = s.snapshot()
        s.close()
        _all_closed(server)
    skipped = outputs(parts, [0, 1, 2, *range(4, 9)])  # chunk 3's call never returned: not recorded
    for k, y in got:
        np.testing.assert_array_equal(y, skipped[k], err_msg=f"step {k}")
    assert final == offline_snapshot([*parts[:3], *parts[4:9]])


@pytest.mark.parametrize("kind", WS_KINDS)
def test_a_reset_interrupted_after_its_message_went_out_leaves_the_stream_in_step(monkeypatch, kind):
    parts = chunks(np.random.default_rng(27), 40)
    cut = Interrupter(monkeypatch)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=4)
        for c in parts[:3]:
            s.step(c)
        cut.arm("reset")
        cut.call(_loop(s), lambda: s.s.reset())
        got = [(k, s.step(parts[k])) for k in range(3, 8)]
        s.close()
    kept, reset = outputs(parts, range(8)), outputs(parts, range(3, 8))  # the reset applied or not: either is right
    for k, y in got:
        assert either(y, [kept[k], reset[k]]), f"step {k} returned another call's reply"


@pytest.mark.parametrize("kind", KINDS)
def test_an_open_interrupted_half_way_leaves_no_stream_and_no_connection(monkeypatch, kind):
    cut = Interrupter(monkeypatch)
    with ModelServer() as server:
        saved = offline_snapshot(chunks(np.random.default_rng(24), 9))
        # a fresh stream's first checkpoint, and a restore over a WebSocket, are cut once the request went out
        for snapshot, what in ((None, "snapshot"), (saved, "open" if "ws" in kind else None)):
            if what is None:
                continue
            loop = asyncio.new_event_loop() if kind in ("ws", "async_http") else None
            cut.arm(what)
            cut.call(loop, lambda: Client.OPEN[kind](server.url, width=6, snapshot=snapshot))  # noqa: B023
            assert cut.hits and not cut.kind
            if loop is not None:
                loop.close()
            _all_closed(server)  # deleted (HTTP) or closed (WebSocket): nothing left open


# ------------------------------------------------------------------------------------ the server's record is not it
def test_an_http_step_the_server_counted_and_the_client_did_not_resumes_from_the_clients_record():
    parts = chunks(np.random.default_rng(25), 30)
    with ModelServer() as server:
        s = HttpStream(server.url, width=6, checkpoint_every=10)
        ys = [s.step(c) for c in parts[:2]]
        r = httpx.post(f"{server.url}/v1/streams/{s.id}/steps", content=parts[5].tobytes(),  # another's step
                       headers={"Content-Type": "application/octet-stream", "X-Step": "2"})
        assert r.status_code == 200
        ys += [s.step(c) for c in parts[2:5]]  # 409 out_of_order: the client's record is the authority
        s.close()
    np.testing.assert_array_equal(np.concatenate(ys), np.concatenate(list(outputs(parts, range(5)).values())))
    assert s.resumes == 1


# ------------------------------------------------------------------------------------ a socket closed by a refusal
@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no-resume"])
@pytest.mark.parametrize("kind", WS_KINDS)
def test_a_websocket_closed_after_a_refusal_resumes_at_the_next_call_or_says_it_is_closed(kind, resume):
    parts = chunks(np.random.default_rng(26), 30)
    with ModelServer() as server:
        s = Client(kind, server.url, checkpoint_every=4, resume=resume)
        ys = [s.step(c) for c in parts[:2]]
        with pytest.raises(ServiceError, match="1007 bad_chunk"):  # the refusal itself, for this call
            s.step(np.ones((1, 5), np.float32))
        if resume:
            ys += [s.step(c) for c in parts[2:6]]
            np.testing.assert_array_equal(np.concatenate(ys), np.concatenate(list(outputs(parts, range(6)).values())))
            assert s.s.resumes == 1
        else:
            for _ in range(2):
                with pytest.raises(ServiceError, match="unknown_stream: .*closed") as e:
                    s.step(parts[2])
                assert e.value.code != "bad_chunk"
        s.close()
        _all_closed(server)


@pytest.mark.parametrize("kind", WS_KINDS)
def test_a_websocket_closed_1009_by_a_proxy_without_a_json_error_is_too_large(kind):
    with SizeLimitedSocket(1024) as proxy:
        s = Client(kind, proxy.url, resume=False)
        with pytest.raises(ServiceError, match="1009 too_large") as e:
            s.step(np.zeros((100, 4), np.float32))  # 1,600 bytes
        assert e.value.status == 1009 and e.value.code == "too_large"
        s.close()


# ------------------------------------------------------------------------------------ an open that fails
def test_an_http_stream_whose_open_is_refused_closes_its_connections(monkeypatch):
    made = []

    class Tracked(httpx.Client):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(httpx, "Client", Tracked)
    with ModelServer() as server:
        for resume in (True, False):
            with pytest.raises(ServiceError, match="400 bad_snapshot"):
                HttpStream(server.url, snapshot=b"EDGERNN-SNAPSHOT not one", resume=resume)
    assert len(made) == 2 and all(c.is_closed for c in made)



@pytest.mark.parametrize("resume", [True, False], ids=["resume", "no-resume"])
def test_closing_a_websocket_stream_waits_for_the_servers_close_rather_than_cut_it_short(resume):
    """A client that closed first cut the server's answer to its end message short: Ray Serve's proxy logged an
    error with a traceback for each such stream. Now the server's close 1000 comes first, on both clients."""
    from edge_rnn.client import SyncWebSocketStream, WebSocketStream

    with ModelServer() as server:
        s = SyncWebSocketStream(server.url, resume=resume)
        s.step(np.zeros((2, 4), np.float32))
        s.close()
        assert s._ws.protocol.close_rcvd is not None and s._ws.protocol.close_rcvd.code == 1000
        assert s._ws.protocol.close_rcvd_then_sent  # the server closed; the client answered

        async def run():
            a = await WebSocketStream.open(server.url, resume=resume)
            await a.step(np.zeros((2, 4), np.float32))
            await a.close()
            return a._ws.protocol

        protocol = asyncio.run(run())
        assert protocol.close_rcvd is not None and protocol.close_rcvd.code == 1000 and protocol.close_rcvd_then_sent
