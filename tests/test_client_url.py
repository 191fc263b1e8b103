"""The server URL a client is given: a ``user:password@`` (which httpx sent as Basic auth in place of the token's
Bearer), a query or a fragment (which http_base kept: GET /?x=1/v1/model) are refused as URLs before any request,
and no message quotes a password or a query; a hostile answer (JSON nested past what json.loads takes) is a
ServiceError, never a RecursionError; a cell's reply is one frame. No server: every refusal comes first."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("httpx")
pytest.importorskip("websockets")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from edge_rnn.client import AsyncHttpStream, HttpStream, ServiceError, SyncWebSocketStream, WebSocketStream  # noqa: E402
from edge_rnn.client._http import _refusal  # noqa: E402
from edge_rnn.client._websocket import _error_body, _snapshot_of  # noqa: E402
from edge_rnn.client._width import output, width_from  # noqa: E402
from edge_rnn.client._wire import shown  # noqa: E402
from edge_rnn.errors import EdgeRnnError, ShapeError  # noqa: E402

SECRET = "SECRET-0123456789"
DEEP = b"[" * 100_000 + b"]" * 100_000  # past json.loads' recursion limit


def _open(kind: str, url: str) -> None:
    """Opens a stream of ``kind`` at ``url`` (port 1: nothing listens, so only a refusal before any request
    raises EdgeRnnError)."""
    if kind in ("http", "sync_ws"):
        (HttpStream if kind == "http" else SyncWebSocketStream)(url, token="T", resume=False)
        return

    async def run() -> None:
        await (AsyncHttpStream if kind == "async_http" else WebSocketStream).open(url, token="T", resume=False)

    asyncio.run(run())


@pytest.mark.parametrize("url, why", [
    (f"http://user:{SECRET}@127.0.0.1:1", "without user:password@"),
    (f"ws://user:{SECRET}@127.0.0.1:1/v1/streams/ws", "without user:password@"),
    ("http://user@127.0.0.1:1", "without user:password@"),
    (f"http://127.0.0.1:1/?token={SECRET}", "without a query or fragment"),
    (f"http://127.0.0.1:1/v1/streams?token={SECRET}", "without a query or fragment"),
    (f"ws://127.0.0.1:1/v1/streams/ws?token={SECRET}", "without a query or fragment"),
    (f"http://127.0.0.1:1#{SECRET}", "without a query or fragment"),
])
@pytest.mark.parametrize("kind", ["http", "sync_ws", "async_http", "ws"])
def test_a_url_with_userinfo_a_query_or_a_fragment_is_refused_without_its_secret(url, why, kind):
    with pytest.raises(EdgeRnnError, match=f"url: expected .*{why}") as e:
        _open(kind, url)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("url, text", [
    ("http://u:pw@h:1/p?token=t", "http://***@h:1/p?..."), ("ws://u:pw@h", "ws://***@h"), ("u:pw@h:1", "***@h:1"),
    ("http://h:1#f", "http://h:1#..."), ("http://h:1/x?a#b", "http://h:1/x?..."), ("http://h:1/a@b", "http://h:1/a@b"),
    ("https://h:1/prefix", "https://h:1/prefix"), (None, "None"),
])
def test_a_url_in_a_message_shows_no_password_and_no_query(url, text):
    assert shown(url) == text


@pytest.mark.parametrize("status", [200, 401, 404, 500])
def test_a_model_answer_nested_past_the_parser_is_undescribed(status):
    with pytest.raises(ServiceError, match="undescribed"):
        width_from(status, DEEP)


def test_a_hostile_error_body_is_the_proxys_error_not_a_recursionerror():
    e = _refusal(httpx.Response(500, content=DEEP))
    assert (e.status, e.code, e.proxied) == (500, "error", True)
    assert _error_body(DEEP.decode()) is None


@pytest.mark.parametrize("reply", [DEEP.decode(), "{}", '{"data": "not base64!"}', "[1]"])
def test_a_snapshot_answer_that_holds_none_is_a_bad_reply(reply):
    with pytest.raises(ServiceError, match="bad_reply"):
        _snapshot_of(reply)


@pytest.mark.parametrize("values, one_frame, shape", [(6, True, (1, 6)), (12, False, (2, 6)), (12, True, None),
                                                      (0, True, None)])
def test_a_cells_reply_is_exactly_one_frame(values, one_frame, shape):
    data = np.zeros(values, "<f4").tobytes()
    if shape is None:
        with pytest.raises(ShapeError, match="one frame of 6 float32"):
            output(data, 6, one_frame)
    else:
        assert output(data, 6, one_frame).shape == shape


class _NotHttp:
    """A TCP server on 127.0.0.1 that reads a request and closes without an answer (a server stopping, or a port
    that is no HTTP server): a WebSocket handshake gets no valid response. Stopped on exit."""

    def __init__(self, connections: int):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(10)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

        def serve() -> None:
            for _ in range(connections):
                try:
                    c, _ = self.sock.accept()
                except OSError:
                    return
                with c:
                    c.recv(4096)

        self.thread = threading.Thread(target=serve, daemon=True)

    def __enter__(self) -> _NotHttp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("kind", ["ws", "async_ws"])
def test_a_handshake_without_an_answer_is_a_transport_error_a_resume_reconnects_past(kind):
    """No valid HTTP answer (a server closing as it stops): websockets' InvalidHandshake, which the resuming client
    counts as the server gone (tests/test_client_resume.py), as it does an OSError; not a ServiceError."""
    from websockets.exceptions import InvalidHandshake

    from edge_rnn.client._websocket import _ws_journal

    assert _ws_journal(None, True, 10, 5.0).is_gone(InvalidHandshake("no answer"))
    with _NotHttp(1) as server, pytest.raises(InvalidHandshake):
        if kind == "ws":
            SyncWebSocketStream(server.url, width=0, resume=False)
        else:
            asyncio.run(WebSocketStream.open(server.url, width=0, resume=False))


def test_loadtest_counts_a_handshake_without_an_answer_as_an_error():
    """websockets' InvalidMessage went past loadtest's handlers and ended the whole run with a traceback."""
    import time

    from edge_rnn.loadtest import LoadResult, _stream

    result = LoadResult(1, 1)
    with _NotHttp(1) as server:
        asyncio.run(_stream(server.url, None, (10, 4), 0.1, time.perf_counter() + 1, result, 0, 0))
    assert result.errors == {"InvalidMessage": 1} and result.kept_real_time == 0  # counted: the run goes on
