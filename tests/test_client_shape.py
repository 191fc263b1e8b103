"""A client's step returns ``(time, features)``: the width asked of the server's ``/v1/model`` when the caller
gives none, as the client's docstring says (it returned flat arrays); a description that gives no width, or a reply
that does not fit it, is an error, never a reply of another shape."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("websockets")

import asyncio  # noqa: E402

import numpy as np  # noqa: E402
from fake_edge import FakeEdgeServer, described  # noqa: E402
from probe_servers import GRU_CELL, LSTM, ModelServer  # noqa: E402

from edge_rnn.client import AsyncHttpStream, HttpStream, ServiceError, SyncWebSocketStream, WebSocketStream  # noqa: E402
from edge_rnn.client._width import MAX_SIZE, width_of  # noqa: E402
from edge_rnn.client._wire import http_base  # noqa: E402
from edge_rnn.errors import EdgeRnnError  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402

X = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)


def _steps(kind: str, url: str, chunks: list[np.ndarray], **kw) -> list[np.ndarray]:
    if kind in ("http", "sync_ws"):
        with (HttpStream if kind == "http" else SyncWebSocketStream)(url, **kw) as s:
            return [s.step(c) for c in chunks]

    async def run() -> list[np.ndarray]:
        s = await (AsyncHttpStream if kind == "async_http" else WebSocketStream).open(url, **kw)
        try:
            return [await s.step(c) for c in chunks]
        finally:
            await s.close()

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["http", "sync_ws", "async_http", "ws"])
def test_every_client_shapes_its_replies_by_the_servers_model(kind):
    model = StreamingModel.load(LSTM)
    want = model.step(model.open_stream(), X)["y"]
    with ModelServer(LSTM) as server:
        url = server.url.replace("http", "ws") if kind == "ws" else server.url  # either URL form
        got = _steps(kind, url, [X[:3], X[3:]])
        flat = _steps(kind, url, [X], width=60)  # a width given is used as it is: 6 x 10 values a row
    assert [g.shape for g in got] == [(3, 6), (7, 6)]
    np.testing.assert_array_equal(np.concatenate(got), want)
    assert flat[0].shape == (1, 60)


def test_a_cell_reply_is_one_row_of_its_width():
    with ModelServer(GRU_CELL) as server, HttpStream(server.url) as s:
        assert s.step(X[0]).shape == (1, 6)


@pytest.mark.parametrize("given, base", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"), ("http://h:1/", "http://h:1"),
    ("ws://h:1", "http://h:1"), ("wss://h/v1/streams/ws", "https://h"), ("https://h/", "https://h"),
    ("http://h:1/v1/streams", "http://h:1"), ("ws://h/prefix/v1/streams/ws", "http://h/prefix"),
    ("HTTP://h:1", "http://h:1"),
])
def test_the_model_is_asked_at_the_servers_http_base(given, base):
    assert http_base(given) == base


@pytest.mark.parametrize("shape, time_axis, width", [
    ([None, 2, 3], 0, 6), ([None], 0, 1), ([3, 6], 0, 6), ([6, None], 1, 6), ([6], None, 6), ([], None, 1),
    ([None, 2**16, 2**15 - 1], 0, MAX_SIZE - 2**16 + 1),
])
def test_the_width_is_the_product_of_the_dimensions_other_than_time(shape, time_axis, width):
    assert width_of({"outputs": [{"name": "y", "shape": shape, "time_axis": time_axis}]}) == width


@pytest.mark.parametrize("model, why", [
    ({}, "expected outputs"), ({"outputs": []}, "expected outputs"), ({"outputs": "x"}, "expected outputs"),
    ({"outputs": [{"shape": [None, 6]}]}, "expected outputs"),  # no time_axis: which axis is time is unknown
    ({"outputs": [{"shape": [None, None], "time_axis": 0}]}, "feature sizes fixed"),
    ({"outputs": [{"shape": [None, 6], "time_axis": 2}]}, "time_axis"),
    ({"outputs": [{"shape": [None, 6], "time_axis": True}]}, "time_axis"),
    ({"outputs": [{"shape": "6", "time_axis": None}]}, "a shape"),
    ({"outputs": [{"shape": [None, 0], "time_axis": 0}]}, "sizes in"),
    ({"outputs": [{"shape": [None, -6], "time_axis": 0}]}, "sizes in"),
    ({"outputs": [{"shape": [None, 6.0], "time_axis": 0}]}, "sizes in"),
    ({"outputs": [{"shape": [2**64], "time_axis": 0}]}, "sizes in"),  # a fixed time axis too
    ({"outputs": [{"shape": [None, 2**32, 2**32], "time_axis": 0}]}, "sizes in"),  # wrapped to 0 in int64
    ({"outputs": [{"shape": [None, 2**16, 2**16], "time_axis": 0}]}, "width"),
])
def test_a_description_that_gives_no_width_says_why(model, why):
    with pytest.raises(ValueError, match=why):
        width_of(model)


@pytest.mark.parametrize("status, body, hang, why", [
    (503, b'{"code": "overloaded", "message": "busy"}', False, "got 503 \\(overloaded: busy\\)"),
    (404, b"<html>not here</html>", False, "got 404 \\(<html>"),
    (200, b"<html>a proxy's page</html>", False, "as JSON, got b.<html>"),
    (200, described([None, None]), False, "feature sizes fixed"),
    (200, b"", True, "no answer within 0.5 s"),
])
def test_an_open_whose_model_is_not_described_fails_saying_how_to_skip_it(status, body, hang, why):
    with FakeEdgeServer(body, status=status, hang=hang) as server:
        with pytest.raises(ServiceError, match=why) as e:
            HttpStream(server.url, resume=False, timeout=0.5)
        assert "undescribed" in str(e.value) and "width=0" in str(e.value) and "\n" not in str(e.value)
        with HttpStream(server.url, resume=False, width=6) as s:  # the way round it: the width given
            assert s.step(np.zeros((2, 4), np.float32)).shape == (2, 6)
        with HttpStream(server.url, resume=False, width=0) as s:
            assert s.step(np.zeros((2, 4), np.float32)).shape == (12,)


@pytest.mark.parametrize("kind", ["http", "sync_ws", "async_http", "ws"])
def test_a_refused_token_is_the_servers_own_refusal_not_a_description_failure(kind):
    with ModelServer(LSTM, token="a-token-of-16-chars-at-least") as server:
        with pytest.raises(ServiceError, match="401 unauthorized"):
            _steps(kind, server.url, [X], token="wrong-token-0123456789")


def test_a_width_that_does_not_divide_the_reply_is_an_error_naming_both():
    with FakeEdgeServer(described([None, 5])) as server, HttpStream(server.url, resume=False) as s:
        with pytest.raises(EdgeRnnError, match="whole frames of 5 float32.* got 48 bytes \\(12 values\\)"):
            s.step(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("width", [-1, True, 1.5, "6", MAX_SIZE + 1])
def test_a_hostile_width_given_is_refused_before_any_connection(width, monkeypatch):
    import httpx

    made = []
    monkeypatch.setattr(httpx.Client, "__init__", lambda *a, **k: made.append(a))  # a client made would fail
    for make in (HttpStream, SyncWebSocketStream):
        with pytest.raises(EdgeRnnError, match="width: expected an integer in \\[0, "):
            make("http://127.0.0.1:9", width=width, resume=False)
    assert not made


@pytest.mark.parametrize("shape", [[2**64], [None, 2**32, 2**32], [None, None], [None, -1]])
def test_a_hostile_description_leaks_no_client(shape, monkeypatch):
    import httpx

    made: list[httpx.Client] = []
    real = httpx.Client.__init__

    def tracked(self, *a, **k):
        real(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(httpx.Client, "__init__", tracked)
    with FakeEdgeServer(described(shape)) as server:
        with pytest.raises(ServiceError, match="undescribed"):
            HttpStream(server.url, resume=False)
    assert made and all(c.is_closed for c in made)  # the description's own request's, closed


@pytest.mark.parametrize("kind", ["http", "sync_ws", "async_http", "ws"])
def test_a_fixed_chunk_models_reply_is_time_by_width_on_every_client(kind, tmp_path):
    onnx = pytest.importorskip("onnx")
    from edge_rnn.deploy import static_form

    static = tmp_path / "static3.onnx"
    onnx.save(static_form(onnx.load(str(LSTM)), 3), static)
    m = StreamingModel.load(static)
    s = m.open_stream()
    want = [m.step(s, X[:3])["y"], m.step(s, X[3:6])["y"]]
    with ModelServer(static) as server:
        got = _steps(kind, server.url, [X[:3], X[3:6]])
    assert [g.shape for g in got] == [(3, 6), (3, 6)]
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want))


@pytest.mark.parametrize("kind, form", [
    ("http", "ws://{}/v1/streams/ws"), ("http", "ws://{}"), ("http", "http://{}/v1/streams"),
    ("sync_ws", "http://{}/v1/streams"), ("sync_ws", "http://{}/v1/streams/ws/"), ("ws", "http://{}/v1/streams"),
    ("async_http", "ws://{}/v1/streams/ws"),
])
def test_every_client_takes_every_url_form_of_its_server(kind, form):
    with ModelServer(LSTM) as server:
        url = form.format(server.url.removeprefix("http://"))
        assert _steps(kind, url, [X[:2]])[0].shape == (2, 6)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h:1", "http://", "", "h/v1/streams/ws"])
@pytest.mark.parametrize("kind", ["http", "sync_ws"])
def test_a_url_of_no_form_a_client_takes_says_which_it_takes(url, kind):
    with pytest.raises(EdgeRnnError, match="url: expected the server's base URL, http://host:port"):
        _steps(kind, url, [X[:2]], width=0)


def test_the_client_example_in_docs_service_runs_as_written(capsys):
    import re

    from conftest import REPO

    text = (REPO / "docs" / "service.md").read_text()
    code = re.search(r"<!-- client-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    with ModelServer(LSTM) as server:
        exec(compile(code.replace("http://127.0.0.1:8000", server.url), "docs/service.md", "exec"),
             {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip() == "True"
