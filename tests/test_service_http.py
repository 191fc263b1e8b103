"""The HTTP routes, in process: the ASGI app driven by starlette's test client (or httpx's ASGI transport where
requests must overlap), on the committed fixtures, no socket, no torch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
with warnings.catch_warnings():  # starlette 1.x asks for httpx2 beside the httpx the client extra installs
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from starlette.testclient import TestClient
from conftest import REPO
from service_streams import MODEL_PATH, chunks, offline, until

from edge_rnn.runtime import ForeignModel, StreamingModel
from edge_rnn.service import ServiceConfig, create_app

X = np.ones((2, 4), np.float32).tobytes()  # two frames
BIN = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}


def _app(model: StreamingModel | None = None, **config):
    model = model or StreamingModel.load(MODEL_PATH)
    return create_app(model, ServiceConfig(**config), variant=model.variant)  # as `edge-rnn serve` does


@contextlib.asynccontextmanager
async def _serving(app):
    """The app started (its lifespan) and an HTTP client over it, all on this event loop."""
    async with app.api.router.lifespan_context(app.api):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test", timeout=20) as http:
            yield http


def test_http_streams_steps_errors_and_snapshot_resume_across_a_restart():
    rng = np.random.default_rng(1)
    parts = chunks(rng, 30)
    with TestClient(_app(max_streams=2)) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        assert len(sid) >= 32 and http.get("/healthz").json() == {"status": "ok"}
        ys = [np.frombuffer(http.post(f"/v1/streams/{sid}/steps", content=c.tobytes(),
                                      headers={"X-Step": str(i), **BIN}).content, "<f4")
              for i, c in enumerate(parts[:3])]
        r = http.post(f"/v1/streams/{sid}/steps", content=parts[3].tobytes(), headers={"X-Step": "7", **BIN})
        assert r.status_code == 409 and r.json()["code"] == "out_of_order"
        for bad, code in ((b"\x00" * 10, 400), (np.full((1, 4), np.inf, np.float32).tobytes(), 400)):
            assert http.post(f"/v1/streams/{sid}/steps", content=bad, headers=BIN).status_code == code
        assert http.post("/v1/streams/nope/steps", content=parts[0].tobytes(), headers=BIN).status_code == 404
        http.post("/v1/streams")
        r = http.post("/v1/streams")
        assert r.status_code == 429 and r.json()["code"] == "too_many_streams"
        snap = http.get(f"/v1/streams/{sid}/snapshot").content
        assert "edge_rnn_steps" in http.get("/metrics").text
        assert http.get("/v1/model").json()["fingerprint"]
    with TestClient(_app()) as http:  # a new server's state
        sid = http.post("/v1/streams", content=snap).json()["stream_id"]
        for c in parts[3:]:
            ys.append(np.frombuffer(http.post(f"/v1/streams/{sid}/steps", content=c.tobytes(),
                                              headers=BIN).content, "<f4"))
        assert http.post("/v1/streams", content=b"EDGERNN-SNAPSHOT garbage").status_code == 400
    np.testing.assert_array_equal(np.concatenate(ys).reshape(-1, 6), offline(parts))


def test_a_retried_x_step_sent_while_the_first_waits_is_refused_not_applied_twice():
    """Was: the X-Step check passed for both, and both were applied (the stream advanced twice, 200 twice)."""
    x = np.ones((3, 4), np.float32).tobytes()
    app = _app(max_wait_ms=300)  # the first waits in the batch window while the retry arrives

    async def main():
        async with _serving(app) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]
            first, retry = await asyncio.gather(*(http.post(f"/v1/streams/{sid}/steps", content=x,
                                                            headers={"X-Step": "0", **BIN}) for _ in range(2)))
            snap = (await http.get(f"/v1/streams/{sid}/snapshot")).content
            return first, retry, snap

    first, retry, snap = asyncio.run(main())
    assert sorted([first.status_code, retry.status_code]) == [200, 409]
    assert StreamingModel.load(MODEL_PATH).restore(snap).steps == 3  # applied once


def test_a_token_guards_every_route_but_health():
    with TestClient(_app(token="s3cret")) as http:
        assert http.post("/v1/streams").status_code == 401
        assert http.post("/v1/streams", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/healthz").status_code == 200


def test_an_idle_stream_expires_and_its_expiry_is_counted():
    app = _app(token="s3cret", idle_timeout=0.3)
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app) as http:
        sid = http.post("/v1/streams", headers=auth).json()["stream_id"]
        until(lambda: sid not in app.svc.registry.streams)  # the reaper looks every 75 ms
        r = http.post(f"/v1/streams/{sid}/steps", content=np.ones((1, 4), np.float32).tobytes(),
                      headers={**auth, **BIN})
        assert r.status_code == 404
        assert "edge_rnn_expired_streams_total 1.0" in http.get("/metrics", headers=auth).text


def test_a_full_queue_answers_503_with_retry_after_and_the_accepted_steps_still_answer():
    """The engine holds the first step until every other step has been answered: one more waits in the queue
    (max_queue=1), the other 28 are refused at once; then both accepted steps answer."""
    model = StreamingModel.load(MODEL_PATH)
    entered, gate, real = threading.Event(), threading.Event(), model.step_batch

    def held(items, **kw):
        entered.set()
        gate.wait(20)
        return real(items, **kw)

    model.step_batch = held
    app = _app(model, max_batch=1, max_queue=1, max_wait_ms=0)

    async def main():
        async with _serving(app) as http:
            ids = [(await http.post("/v1/streams")).json()["stream_id"] for _ in range(30)]
            first = asyncio.ensure_future(http.post(f"/v1/streams/{ids[0]}/steps", content=X, headers=BIN))
            try:
                assert await asyncio.to_thread(entered.wait, 20)  # the engine holds the first step
                rest = [asyncio.ensure_future(http.post(f"/v1/streams/{i}/steps", content=X, headers=BIN))
                        for i in ids[1:]]
                for answered, done in enumerate(asyncio.as_completed(rest, timeout=20), 1):
                    await done
                    if answered == len(rest) - 1:  # all but the one in the queue
                        break
            finally:
                gate.set()
            return [await first, *await asyncio.gather(*rest)]

    replies = asyncio.run(main())
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    assert sorted(codes) == [200] * 2 + [503] * 28, codes
    assert all(r.headers.get("retry-after") == "1" and r.json()["code"] == "overloaded"
               for r in replies if r.status_code == 503)


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
    model = StreamingModel.load(tmp_path / "ft.onnx", foreign=ForeignModel(time_axis=2))
    frames = np.arange(6, dtype=np.float32).reshape(2, 3)  # two frames of three features
    with TestClient(_app(model)) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        reply = http.post(f"/v1/streams/{sid}/steps", content=frames.tobytes(), headers=BIN)
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
    parts = chunks(np.random.default_rng(6), 20)
    with TestClient(_app(model)) as http:
        described = http.get("/v1/model").json()
        sid = http.post("/v1/streams").json()["stream_id"]
        ys = [np.frombuffer(http.post(f"/v1/streams/{sid}/steps", content=c.tobytes(), headers=BIN).content, "<f4")
              for c in parts]
    assert described["variant"] == "int8" and described["fingerprint"] == model.fingerprint
    assert described["fingerprint"] != StreamingModel.load(MODEL_PATH).fingerprint
    served = np.concatenate(ys).reshape(-1, 6)
    alone = StreamingModel.load(tmp_path / "bundle", variant="int8")
    s = alone.open_stream()  # dynamic int8 depends on how a stream is cut into calls: the same chunks, alone
    np.testing.assert_array_equal(served, np.concatenate([alone.step(s, c)["y"] for c in parts]))
    assert not model.batches_streams  # served one call per stream: a neighbour cannot move its outputs
    fp32 = offline(parts)
    assert 0 < np.max(np.abs(served - fp32)) < 5e-2 + 5e-2 * np.max(np.abs(fp32))  # int8, within its tolerance row


# ------------------------------------------------------------------ hostile clients, in process (issue 19)


def _steps(app, sid: str) -> int:
    """The steps the stream has taken, read from its snapshot (what a refused request must leave alone)."""
    return app.svc.model.restore(app.svc.registry.streams[sid].stream.snapshot()).steps


@pytest.mark.parametrize("content_type,kind", [
    ("application/json", "json"), ("Application/JSON", "json"), ("APPLICATION/JSON; charset=utf-8", "json"),
    ("application/json;charset=\"UTF-8\"", "json"), ("application/octet-stream", "binary"),
    (" Application/Octet-Stream ; foo=bar", "binary"), (None, 415), ("", 415), ("text/plain", 415),
    ("application/json; charset=latin-1", 415), ("application/jsonx", 415), ("multipart/form-data", 415)])
def test_the_media_type_is_read_case_insensitively_and_any_other_or_none_is_415(content_type, kind):
    """Was: anything but a type starting with the exact bytes "application/json" was stepped as raw float32 bytes,
    so `Application/JSON` (or no type) advanced the state by the ASCII of the JSON."""
    body = json.dumps({"x": [[0.5, 1, -2, 3e-3]]}).encode().ljust(32)  # whole frames: as float32, garbage
    app = _app()
    headers = {} if content_type is None else {"Content-Type": content_type}
    with TestClient(app) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        r = http.post(f"/v1/streams/{sid}/steps", content=body if kind != "binary" else X, headers=headers)
        if kind == 415:
            assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type", r.text
            assert "application/json" in r.json()["message"] and "application/octet-stream" in r.json()["message"]
            assert _steps(app, sid) == 0
        elif kind == "json":
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
            np.testing.assert_allclose(r.json()["outputs"]["y"], offline([np.array([[0.5, 1, -2, 3e-3]], "f4")]),
                                       rtol=1e-6)
        else:
            assert r.status_code == 200 and len(r.content) == 2 * 6 * 4


_NOT_A_CHUNK = {
    "strings": b'{"x": [["1", "2", "3", "4"]]}', "true": b'{"x": [[true, 1, 2, 3]]}',
    "all booleans": b'{"x": [[true, false, true, true]]}', "null": b'{"x": [[null, 1, 2, 3]]}',
    "NaN token": b'{"x": [[NaN, 1, 2, 3]]}', "Infinity token": b'{"x": [[1, -Infinity, 2, 3]]}',
    "an object inside": b'{"x": [[{"a": 1}, 1, 2, 3]]}', "an extra key": b'{"x": [[1, 2, 3, 4]], "y": 1}',
    "a repeated key": b'{"x": [[1, 2, 3, 4]], "x": [[1, 2, 3, 4]]}', "no x": b'{"y": [[1, 2, 3, 4]]}',
    "not an object": b'[[1, 2, 3, 4]]', "x a string": b'{"x": "1, 2, 3, 4"}', "ragged": b'{"x": [[1, 2, 3, 4], [1]]}',
    "65 dimensions": b'{"x": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}", "deep": b"[" * 200000,
    "deep inside x": b'{"x": ' + b"[" * 100000 + b"]" * 100000 + b"}",
    "a huge int": b'{"x": [[1' + b"0" * 400 + b', 1, 2, 3]]}',
    "an int of 5000 digits": b'{"x": [[' + b"9" * 5000 + b"]]}",
    "beyond float32": b'{"x": [[1e39, 1, 2, 3]]}', "not UTF-8": b'{"x": [[1, 2, 3, 4]], "\xff": 1}',
    "UTF-16": '{"x": [[1, 2, 3, 4]]}'.encode("utf-16"), "not JSON": b'{"x": [[1, 2, 3, 4]]', "empty": b"",
    "wrong width": b'{"x": [[1, 2, 3]]}', "no frames": b'{"x": []}'}


@pytest.mark.parametrize("name", list(_NOT_A_CHUNK))
def test_a_json_chunk_takes_numbers_only_anything_else_is_400_bad_chunk_and_the_state_is_unchanged(name):
    """Was: strings and booleans were stepped as numbers ("1" -> 1.0, true -> 1.0, null -> NaN refused as NaN),
    '[' * 200000 was an HTTP 500 (RecursionError), a huge int or 65 dimensions a numpy error."""
    app = _app()
    with TestClient(app, raise_server_exceptions=False) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        r = http.post(f"/v1/streams/{sid}/steps", content=_NOT_A_CHUNK[name], headers=JSON)
        assert r.status_code == 400 and r.json()["code"] == "bad_chunk", r.text
        assert _steps(app, sid) == 0
        ok = http.post(f"/v1/streams/{sid}/steps", json={"x": [[1, 2.5, 3, 4]]}, headers={"X-Step": "0"})
        assert ok.status_code == 200, ok.text  # a refused step did not count either


def test_token_ids_in_json_are_integers_within_range_and_the_reply_is_every_output():
    model = StreamingModel.load(REPO / "tests" / "data" / "token_gru.onnx")
    app = _app(model)
    with TestClient(app) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        for bad in ([1.5, 2], [1.0], [True, 2], [2 ** 63], [-(2 ** 63) - 1], ["3"]):
            r = http.post(f"/v1/streams/{sid}/steps", json={"x": bad})
            assert r.status_code == 400 and r.json()["code"] == "bad_chunk", (bad, r.text)
        r = http.post(f"/v1/streams/{sid}/steps", json={"x": {"ids": [1, 2, 3]}})
        assert r.status_code == 200, r.text
        assert np.asarray(r.json()["outputs"]["logits"]).shape == (3, 40)
        assert _steps(app, sid) == 3


def test_a_json_body_over_max_message_bytes_is_413_and_so_is_one_whose_reply_would_be():
    """Was: with a 65,536-byte limit, JSON bodies of 1.37 MB were stepped and answered 200 (binary got 413)."""
    app = _app(max_message_bytes=65536)
    rows = np.ones((4000, 4), np.float32).tolist()
    with TestClient(app) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        r = http.post(f"/v1/streams/{sid}/steps", content=json.dumps({"x": rows}).encode(), headers=JSON)
        assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
        assert r.headers["connection"] == "close"
        # 5,000 bytes of JSON, but 600 steps of 6 outputs could take up to 25 bytes a value in the reply
        r = http.post(f"/v1/streams/{sid}/steps", content=json.dumps({"x": [[1, 2, 3, 4]] * 600}).encode(),
                      headers=JSON)
        assert r.status_code == 413 and r.json()["code"] == "too_large" and "reply" in r.json()["message"], r.text
        assert _steps(app, sid) == 0
        assert http.post(f"/v1/streams/{sid}/steps", json={"x": [[1, 2, 3, 4]] * 100}).status_code == 200


def test_a_snapshot_body_larger_than_any_snapshot_of_the_model_is_413_before_it_is_read():
    app = _app()
    with TestClient(app) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        snap = http.get(f"/v1/streams/{sid}/snapshot").content
        r = http.post("/v1/streams", content=snap + b"\0" * 8192)
        assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
        assert http.post("/v1/streams", content=snap).status_code == 201


def _held(model: StreamingModel):
    """The model with its engine held on the first batch until ``gate`` is set; ``entered`` once it is."""
    entered, gate, real = threading.Event(), threading.Event(), model.step_batch

    def held(items, **kw):
        entered.set()
        gate.wait(20)
        return real(items, **kw)

    model.step_batch = held
    return entered, gate


@pytest.mark.parametrize("max_queue,refused", [(1024, (429, "stream_busy")), (2, (503, "overloaded"))])
def test_steps_waiting_for_their_stream_count_against_the_limits_before_their_body_is_read(max_queue, refused):
    """Was: with --max-queue 4, 120 concurrent steps of one stream all waited on its lock, outside the queue, and
    all were answered 200. Now a stream has at most 4 steps in flight (429 beyond), and the steps waiting for
    their stream's turn count against --max-batch + --max-queue (503 beyond), decided before the body is read."""
    model = StreamingModel.load(MODEL_PATH)
    entered, gate = _held(model)
    app = _app(model, max_batch=1, max_queue=max_queue, max_wait_ms=0)
    bodies_read = []

    async def main():
        async with _serving(app) as http:
            sid = (await http.post("/v1/streams")).json()["stream_id"]

            async def body(i):
                bodies_read.append(i)
                yield X

            first = asyncio.ensure_future(http.post(f"/v1/streams/{sid}/steps", content=body(0), headers=BIN))
            try:
                assert await asyncio.to_thread(entered.wait, 20)  # the engine holds the first step
                rest = [asyncio.ensure_future(http.post(f"/v1/streams/{sid}/steps", content=body(i), headers=BIN))
                        for i in range(1, 20)]
                await asyncio.sleep(0.2)
                while sum(f.done() for f in rest) < len(rest) - min(3, max_queue):  # the refused ones are answered
                    await asyncio.sleep(0.01)
            finally:
                gate.set()
            replies = [await first, *await asyncio.gather(*rest)]
            return replies, _steps(app, sid)

    replies, steps = asyncio.run(main())
    codes = [r.status_code for r in replies]
    admitted = 1 + min(3, max_queue)  # the one in the engine and the ones waiting their turn
    assert codes.count(200) == admitted and codes.count(refused[0]) == 20 - admitted, codes
    assert all(r.json()["code"] == refused[1] and r.headers["retry-after"] == "1"
               for r in replies if r.status_code != 200)
    assert len(bodies_read) == admitted and steps == 2 * admitted  # refused before their body was read


def test_an_output_that_is_not_finite_is_answered_in_json_as_a_string_and_an_error_never_leaves_a_step_applied(
        tmp_path):
    """Was: a finite input whose output overflowed to Inf got HTTP 500 on the JSON path, yet the step was
    applied (its retry got 409). A model loaded with allow_nonfinite answers "Infinity" (JSON has no Inf);
    otherwise the runtime may refuse it: either way an answer is an error with the state unchanged, or 200."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "big"], ["y"]), helper.make_node("Identity", ["h0"], ["hn"])], "overflow",
        [helper.make_tensor_value_info("x", f, ["b", 3]), helper.make_tensor_value_info("h0", f, ["b", 2])],
        [helper.make_tensor_value_info("y", f, ["b", 3]), helper.make_tensor_value_info("hn", f, ["b", 2])],
        [numpy_helper.from_array(np.array([1e30, -1e30, 0.0], np.float32), "big")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "o.onnx")
    for allow in (True, False):
        model = StreamingModel.load(tmp_path / "o.onnx", allow_nonfinite=allow)
        app = _app(model)
        with TestClient(app, raise_server_exceptions=False) as http:
            sid = http.post("/v1/streams").json()["stream_id"]
            r = http.post(f"/v1/streams/{sid}/steps", json={"x": [1e10, 1e10, 1]}, headers={"X-Step": "0"})
            if allow:
                assert r.status_code == 200 and r.json() == {"outputs": {"y": ["Infinity", "-Infinity", 0.0]}}, r.text
            assert r.status_code in (200, 400), r.text
            assert _steps(app, sid) == (1 if r.status_code == 200 else 0)
            retry = http.post(f"/v1/streams/{sid}/steps", json={"x": [1, 1, 1]}, headers={"X-Step": "0"})
            assert retry.status_code == (409 if r.status_code == 200 else 200), retry.text


def _held_json(monkeypatch, name: str):
    """json.<name> held on its first call once armed (``armed.set()``), until ``release``; ``entered`` once held."""
    armed, entered, release, real = threading.Event(), threading.Event(), threading.Event(), getattr(json, name)

    def held(*args, **kw):
        if armed.is_set():
            armed.clear()
            entered.set()
            release.wait(10)
        return real(*args, **kw)

    monkeypatch.setattr(json, name, held)
    return armed, entered, release


@pytest.mark.parametrize("name", ["loads", "dumps"])
def test_json_is_parsed_and_encoded_off_the_event_loop_so_other_streams_are_answered_meanwhile(monkeypatch, name):
    """Was: json.loads, np.asarray and json.dumps of a large JSON step ran on the event loop: one 1 MB step
    stalled every other client for 0.5-0.8 s. Here the JSON work is held in the middle (its parse, or its reply)
    and another stream's step must be answered while it is held."""
    app = _app()
    big = json.dumps({"x": np.ones((2000, 4)).tolist()}).encode()
    armed, entered, release = _held_json(monkeypatch, name)

    async def main():
        async with _serving(app) as http:
            a, b = [(await http.post("/v1/streams")).json()["stream_id"] for _ in range(2)]
            armed.set()
            step = asyncio.ensure_future(http.post(f"/v1/streams/{a}/steps", content=big, headers=JSON))
            assert await asyncio.to_thread(entered.wait, 10)
            other = await asyncio.wait_for(http.post(f"/v1/streams/{b}/steps", content=X, headers=BIN), 20)
            held_meanwhile = not release.is_set()
            release.set()
            return other.status_code, held_meanwhile, (await step).status_code

    assert asyncio.run(main()) == (200, True, 200)
