"""A client's step returns ``(time, features)``: the width asked of the server's ``/v1/model`` when the caller
gives none, as the client's docstring says (it returned flat arrays)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("websockets")

import asyncio  # noqa: E402

import numpy as np  # noqa: E402
from probe_servers import GRU_CELL, LSTM, ModelServer  # noqa: E402

from edge_rnn.client import AsyncHttpStream, HttpStream, SyncWebSocketStream, WebSocketStream  # noqa: E402
from edge_rnn.client._wire import http_base, width_of  # noqa: E402
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
])
def test_the_model_is_asked_at_the_servers_http_base(given, base):
    assert http_base(given) == base


def test_a_description_without_outputs_leaves_replies_flat():
    assert width_of({}) is None and width_of({"outputs": []}) is None and width_of({"outputs": "x"}) is None
    assert width_of({"outputs": [{"shape": [None, 2, 3]}]}) == 6
    assert width_of({"outputs": [{"shape": [None]}]}) == 1  # one value a frame: (time, 1)


def test_the_client_example_in_docs_service_runs_as_written(capsys):
    import re

    from conftest import REPO

    text = (REPO / "docs" / "service.md").read_text()
    code = re.search(r"<!-- client-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    with ModelServer(LSTM) as server:
        exec(compile(code.replace("http://127.0.0.1:8000", server.url), "docs/service.md", "exec"),
             {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip() == "True"
