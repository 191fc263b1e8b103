"""serve --allow-nonfinite and JSON chunks: NaN and Inf go through JSON as they go through binary (JSON's literals
NaN, Infinity and -Infinity, as Python's json writes them, and a float literal beyond float64); refused, each says
one clean "expected X, got Y". In process: starlette's test client over the app."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from service_streams import MODEL_PATH  # noqa: E402
from test_service_http import BIN, JSON, TestClient, _app  # noqa: E402

from edge_rnn.runtime import StreamingModel  # noqa: E402

_NOT_FINITE = {  # the body, the chunk it means, and how the refusal names it
    "NaN": (b'{"x": [[NaN, 1, 2, 3]]}', [[np.nan, 1, 2, 3]], "NaN"),
    "Infinity": (b'{"x": [[1, Infinity, 2, 3], [0, 0, 0, 0]]}', [[1, np.inf, 2, 3], [0, 0, 0, 0]], "Infinity"),
    "-Infinity": (b'{"x": [[1, 2, 3, -Infinity]]}', [[1, 2, 3, -np.inf]], "-Infinity"),
    "1e999": (b'{"x": [[1e999, 1, 2, 3]]}', [[np.inf, 1, 2, 3]], "1e999"),
    "json.dumps": (json.dumps({"x": [[float("nan"), float("-inf"), 0.5, 1]]}).encode(),
                   [[np.nan, -np.inf, 0.5, 1]], "NaN"),
}


def _step(http, body: bytes, headers: dict) -> tuple[int, dict | bytes]:
    sid = http.post("/v1/streams").json()["stream_id"]
    r = http.post(f"/v1/streams/{sid}/steps", content=body, headers=headers)
    return r.status_code, (r.json() if headers is JSON or r.status_code != 200 else r.content)


def _numbers(values: list) -> np.ndarray:
    """A JSON reply's values as numbers: NaN and Inf come as the strings "NaN", "Infinity", "-Infinity"."""
    named = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
    return np.array([[named.get(v, v) for v in row] for row in values], np.float32)


@pytest.mark.parametrize("name", list(_NOT_FINITE))
def test_allow_nonfinite_lets_nan_and_inf_through_json_as_through_binary(name):
    """Was: serve --allow-nonfinite still refused them in JSON (400 bad_chunk), only binary let them through."""
    body, chunk, _ = _NOT_FINITE[name]
    with TestClient(_app(StreamingModel.load(MODEL_PATH, allow_nonfinite=True))) as http:
        status, reply = _step(http, body, JSON)
        assert status == 200, reply
        status, binary = _step(http, np.array(chunk, np.float32).tobytes(), BIN)
        assert status == 200, binary
    got = _numbers(reply["outputs"]["y"])
    want = np.frombuffer(binary, np.float32).reshape(got.shape)
    np.testing.assert_array_equal(got, want)  # the same numbers, NaN where NaN


@pytest.mark.parametrize("name", list(_NOT_FINITE))
def test_without_allow_nonfinite_json_nan_and_inf_are_one_clean_refusal(name):
    """Was: 'expected JSON {"x": ...} of finite numbers, got expected finite numbers, got NaN'."""
    body, _, shown = _NOT_FINITE[name]
    with TestClient(_app()) as http:
        status, reply = _step(http, body, JSON)
    assert status == 400 and reply["code"] == "bad_chunk", reply
    assert reply["message"] == f"x: expected finite numbers, got {shown} (serve --allow-nonfinite lets NaN and Inf " \
                               "through)"


@pytest.mark.parametrize(("body", "message"), [
    (b'{"x": [[1, 2, 3, 4]], "x": [[1, 2, 3, 4]]}', "expected each JSON key once, got 'x' twice"),
    (b'{"x": [[' + b"9" * 5000 + b"]]}", "x: expected integers of at most 4300 digits, got one of 5000"),
    (b'{"x": [[1, 2, 3, 4]]', "expected JSON {\"x\": ...}, got text that does not parse as JSON ("),  # + json's words
])
@pytest.mark.parametrize("allow", [False, True], ids=["default", "allow_nonfinite"])
def test_json_refusals_say_expected_once(body, message, allow):
    with TestClient(_app(StreamingModel.load(MODEL_PATH, allow_nonfinite=allow))) as http:
        status, reply = _step(http, body, JSON)
    assert status == 400 and reply["code"] == "bad_chunk", reply
    assert reply["message"].startswith(message) and reply["message"].count("expected") == 1, reply
