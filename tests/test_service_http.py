"""The HTTP routes, in process: the ASGI app driven by starlette's test client (or httpx's ASGI transport where
requests must overlap), on the committed fixtures, no socket, no torch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
with warnings.catch_warnings():  # starlette 1.x asks for httpx2 beside the httpx the client extra installs
    warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
    from starlette.testclient import TestClient
from conftest import REPO
from service_streams import MODEL_PATH, chunks, held_at, offline, until

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
    entered, gate = held_at(model)
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
