"""The stream socket, in process: ``/v1/streams/ws`` driven by starlette's test client, one behaviour a test, on
the committed fixtures, no socket, no torch. What needs a real server (uvicorn's protocol refusing an oversized
frame, many connections, the drain) is in test_service_server.py."""

from __future__ import annotations

import base64
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # starlette 1.x asks for httpx2 beside the httpx the client extra installs
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from starlette.testclient import TestClient
from conftest import REPO
from service_streams import MODEL_PATH, chunks, offline, refusal, until

from edge_rnn.runtime import StreamingModel
from edge_rnn.service import ServiceConfig, create_app

WS = "/v1/streams/ws"


def _app(model: StreamingModel | None = None, **config):
    model = model or StreamingModel.load(MODEL_PATH)
    return create_app(model, ServiceConfig(**config), variant=model.variant)


def test_websocket_chunks_snapshot_reset_and_end():
    parts = chunks(np.random.default_rng(5), 12)
    with TestClient(_app()) as client, client.websocket_connect(WS) as ws:
        ys = []
        for c in parts[:2]:
            ws.send_bytes(c.tobytes())
            ys.append(np.frombuffer(ws.receive_bytes(), "<f4").reshape(-1, 6))
        ws.send_text('{"type": "snapshot"}')
        snap = base64.b64decode(json.loads(ws.receive_text())["data"])
        ws.send_text('{"type": "reset"}')
        assert json.loads(ws.receive_text()) == {"type": "reset", "ok": True}
        ws.send_bytes(parts[0].tobytes())
        again = np.frombuffer(ws.receive_bytes(), "<f4").reshape(-1, 6)
        ws.send_text('{"type": "end"}')
        end = ws.receive()
    np.testing.assert_array_equal(np.concatenate(ys), offline(parts[:2]))
    np.testing.assert_array_equal(again, offline(parts[:1]))  # reset: from zeros again
    resumed = StreamingModel.load(MODEL_PATH).restore(snap)  # the snapshot holds the state after two chunks
    assert resumed.steps == len(parts[0]) + len(parts[1])
    assert end["type"] == "websocket.close" and end["code"] == 1000


def test_a_connection_beyond_max_streams_is_refused_with_1013():
    x = chunks(np.random.default_rng(5), 12)[0]
    with TestClient(_app(max_streams=1)) as client, client.websocket_connect(WS) as ws:
        ws.send_bytes(x.tobytes())
        ws.receive_bytes()
        with client.websocket_connect(WS) as second:  # one stream too many
            assert refusal(second) == ("too_many_streams", 1013)


def test_a_missing_or_wrong_token_is_refused_with_1008():
    with TestClient(_app(token="a-token-of-sixteen-chars")) as client:
        with client.websocket_connect(WS) as ws:
            assert refusal(ws) == ("unauthorized", 1008)
        with client.websocket_connect(WS, headers={"Authorization": "Bearer wrong"}) as ws:
            assert refusal(ws) == ("unauthorized", 1008)


def test_a_chunk_after_the_stream_expired_is_refused_with_1008():
    app = _app(token="a-token-of-sixteen-chars", idle_timeout=0.3)
    auth = {"Authorization": "Bearer a-token-of-sixteen-chars"}
    with TestClient(app) as client, client.websocket_connect(WS, headers=auth) as ws:
        until(lambda: not app.svc.registry.streams)  # expires (the reaper looks every 75 ms)
        ws.send_bytes(np.ones((1, 4), np.float32).tobytes())
        assert refusal(ws) == ("unknown_stream", 1008)


def test_a_model_that_takes_no_binary_chunks_refuses_them_with_1003():
    tokens = StreamingModel.load(REPO / "tests" / "data" / "token_gru.onnx")  # int64 ids
    with TestClient(_app(tokens)) as client, client.websocket_connect(WS) as ws:
        ws.send_bytes(np.ones(3, np.float32).tobytes())
        assert refusal(ws) == ("unsupported", 1003)


@pytest.mark.parametrize("text", ["[" * 200_000, '{"type": ' * 100_000, '{"type": "end"' + "}" * 10])
def test_deep_or_broken_json_text_is_refused_with_1007(text):
    with TestClient(_app()) as client, client.websocket_connect(WS) as ws:
        ws.send_text(text)
        assert refusal(ws) == ("bad_message", 1007)


def test_an_expired_stream_closes_its_socket_without_waiting_for_a_message():
    app = _app(idle_timeout=0.3)
    with TestClient(app) as client, client.websocket_connect(WS) as ws:
        until(lambda: not app.svc.registry.streams and not app.svc.sockets, 10)  # expired, and its socket closed
        assert refusal(ws) == ("unknown_stream", 1008)


def test_an_unexpected_error_closes_with_1011_and_its_traceback_is_logged_once(caplog, monkeypatch):
    from edge_rnn.service import _socket

    monkeypatch.setattr(_socket, "_logged", set())  # none of its kind logged yet
    app = _app()

    def broken(entry, chunk):
        raise ZeroDivisionError("a bug")

    app.svc.submit = broken
    x = np.ones((1, 4), np.float32).tobytes()
    with TestClient(app) as client:
        for _ in range(3):
            with client.websocket_connect(WS) as ws:
                ws.send_bytes(x)
                assert refusal(ws) == ("internal_error", 1011)
        assert not app.svc.registry.streams  # each stream closed with its connection
    errors = [r for r in caplog.records if r.name == "edge_rnn.service"]
    assert len(errors) == 3 and [r.exc_info is not None for r in errors] == [True, False, False]
