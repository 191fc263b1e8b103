"""The Ray Serve path's replica front (421 without the session header, ``GET /metrics`` merged) and the metrics
merge, without a Ray cluster (no ``ray.init``, no ``serve.run``). Each test runs in milliseconds; the routing is in
test_service_ray_routing.py, the builder and the CLI in test_service_ray_args.py, and the tests that start a
cluster in test_service_ray.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from conftest import REPO  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from ray.serve._private.common import DeploymentID  # noqa: E402

from edge_rnn.service import _ray_front, _ray_metrics  # noqa: E402
from edge_rnn.service._config import ServiceConfig  # noqa: E402
from edge_rnn.service._metrics import Metrics  # noqa: E402
from edge_rnn.service._ray_front import ReplicaFront  # noqa: E402
from edge_rnn.service._ray_metrics import merge  # noqa: E402

MODEL = REPO / "tests" / "data" / "lstm_layer.onnx"
TOKEN = "a-token-of-sixteen-chars"
DEPLOYMENT = DeploymentID(name="edge_rnn", app_name="edge_rnn")



# --- the metrics merge -------------------------------------------------------------------------------------------

def _replica_metrics() -> dict[str, bytes | None]:
    a, b = Metrics(replica="a"), Metrics(replica="b")
    a.on_batch(3, [0.001, 0.002, 0.003], 0.004)
    a.reject("overloaded")
    a.set_active(5)
    b.on_batch(1, [0.01], 0.02)
    b.on_batch(2, [0.01, 0.01], 0.02)
    b.reject("unauthorized")
    b.reject("unauthorized")
    b.set_active(2)
    return {"b": b.exposition(), "a": a.exposition(), "gone": None}


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_the_merge_holds_each_family_once_and_every_replicas_samples_labelled():
    merged = merge(_replica_metrics())
    lines = merged.decode().splitlines()
    meta = [ln for ln in lines if ln.startswith("#")]
    assert len(meta) == len(set(meta))  # no family twice
    assert sum(ln.startswith("# TYPE edge_rnn_active_streams ") for ln in lines) == 1
    got = _samples(merged)
    assert got[("edge_rnn_active_streams", (("replica", "a"),))] == 5
    assert got[("edge_rnn_active_streams", (("replica", "b"),))] == 2
    assert got[("edge_rnn_steps_total", (("replica", "a"),))] == 3
    assert got[("edge_rnn_steps_total", (("replica", "b"),))] == 3
    assert got[("edge_rnn_batch_size_count", (("replica", "b"),))] == 2
    assert got[("edge_rnn_batch_size_sum", (("replica", "b"),))] == 3
    assert got[("edge_rnn_rejections_total", (("reason", "overloaded"), ("replica", "a")))] == 1
    assert got[("edge_rnn_rejections_total", (("reason", "unauthorized"), ("replica", "b")))] == 2
    assert got[("edge_rnn_replica_up", (("replica", "a"),))] == 1
    assert got[("edge_rnn_replica_up", (("replica", "b"),))] == 1
    assert got[("edge_rnn_replica_up", (("replica", "gone"),))] == 0
    assert all(dict(labels).get("replica") for _, labels in got)  # every sample names its replica


def test_the_merge_keeps_every_sample_of_each_replica_unchanged():
    expositions = _replica_metrics()
    merged = _samples(merge(expositions))
    for text in filter(None, expositions.values()):
        for key, value in _samples(text).items():
            assert merged[key] == value, key
    assert len(merged) == sum(len(_samples(t)) for t in filter(None, expositions.values())) + 3


def test_the_merge_of_replicas_that_all_failed_is_only_their_up_gauge():
    got = _samples(merge({"x": None, "y": None}))
    assert got == {("edge_rnn_replica_up", (("replica", "x"),)): 0, ("edge_rnn_replica_up", (("replica", "y"),)): 0}
    assert _samples(merge({})) == {}


def test_gather_asks_each_live_replica_through_its_own_session_and_reports_the_silent_ones(monkeypatch):
    asked = []

    class Handle:
        def options(self, *, session_id, method_name):
            asked.append((session_id, method_name))
            return SimpleNamespace(remote=lambda: answer(session_id))

    async def answer(session_id):
        if session_id == "bbbb.":
            raise RuntimeError("the replica died")
        if session_id == "cccc.":
            await asyncio.sleep(60)
        if session_id == "dddd.":  # a replacement the router does not know yet: another replica answers
            return b'edge_rnn_active_streams{replica="aaaa"} 3.0'
        return f'edge_rnn_active_streams{{replica="{session_id[:-1]}"}} 1.0'.encode()

    names = [{"name": f"SERVE_REPLICA::edge_rnn#edge_rnn#{r}", "namespace": "serve"}
             for r in ("cccc", "aaaa", "bbbb", "dddd")]
    names += [{"name": "SERVE_REPLICA::other#edge_rnn#zzzz", "namespace": "serve"},
              {"name": "SERVE_CONTROLLER_ACTOR", "namespace": "serve"}]
    monkeypatch.setattr(_ray_metrics.ray.util, "list_named_actors", lambda all_namespaces: names)
    monkeypatch.setattr(_ray_metrics.serve, "get_deployment_handle", lambda d, app_name: Handle())
    monkeypatch.setattr(_ray_metrics, "GATHER_TIMEOUT", 0.05)
    names += [{"name": "SERVE_REPLICA::edge_rnn#edge_rnn#mine", "namespace": "serve"}]
    got = asyncio.run(_ray_metrics.gather("edge_rnn", "edge_rnn", "mine", b"my own"))
    assert got == {"aaaa": b'edge_rnn_active_streams{replica="aaaa"} 1.0', "bbbb": None, "cccc": None, "dddd": None,
                   "mine": b"my own"}
    # each other replica through its own session; this one's without a call (to itself, it timed out at times)
    assert sorted(asked) == [("aaaa.", "exposition"), ("bbbb.", "exposition"), ("cccc.", "exposition"),
                             ("dddd.", "exposition")]


# --- the replica's front ---------------------------------------------------------------------------------------

class Inner:
    """The standalone app's stand-in: records what reaches it and answers 200 ``inner``."""

    def __init__(self, token: str | None = None):
        self.svc = SimpleNamespace(config=ServiceConfig(token=token), metrics=Metrics(replica="rrrr"), replica="rrrr")
        self.calls: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.calls.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"inner"})


def _scope(path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] = (), kind: str = "http",
           root_path: str = "") -> dict:
    return {"type": kind, "path": path, "raw_path": path.encode(), "method": method, "headers": list(headers),
            "root_path": root_path, "query_string": b""}


def _call(front: ReplicaFront, scope: dict) -> tuple[int | None, dict, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(front(scope, receive, send))
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (start and start["status"]), dict(start["headers"]) if start else {}, body


def _front(token: str | None = None) -> tuple[ReplicaFront, Inner]:
    inner = Inner(token)
    return ReplicaFront(inner, "edge_rnn", "edge_rnn"), inner


def _misdirected(status: int, body: bytes) -> None:
    assert status == 421, (status, body)
    assert json.loads(body)["code"] == "session_header_missing"


SID = "rrrr1234.0123abcd"
STREAM_ROUTES = [(f"/v1/streams/{SID}/steps", "POST"), (f"/v1/streams/{SID}/snapshot", "GET"),
                 (f"/v1/streams/{SID}", "DELETE")]
AUTH = (b"authorization", f"Bearer {TOKEN}".encode())


@pytest.mark.parametrize("path, method", STREAM_ROUTES)
@pytest.mark.parametrize("header", [None, b"", b"rrrr1234.other", SID.upper().encode(), SID.encode() + b" ",
                                    b"rrrr1234"], ids=repr)
def test_a_stream_request_not_naming_its_stream_is_misdirected(path, method, header):
    front, inner = _front()
    headers = [] if header is None else [(b"x-session-id", header)]
    _misdirected(*_call(front, _scope(path, method, headers))[::2])
    assert inner.calls == []


@pytest.mark.parametrize("path, method", STREAM_ROUTES)
@pytest.mark.parametrize("name", [b"x-session-id", b"X-Session-Id", b"X-SESSION-ID"])
def test_a_stream_request_naming_its_stream_reaches_the_app(path, method, name):
    front, inner = _front()
    assert _call(front, _scope(path, method, [(name, SID.encode())]))[0] == 200
    assert [c["path"] for c in inner.calls] == [path]


@pytest.mark.parametrize("values", [[SID, "ssss9999.x"], ["ssss9999.x", SID], [SID, SID + "x"]])
def test_two_session_headers_that_differ_are_misdirected(values):
    """Ray's proxy routes by the last session header it finds, the front checked the first: a request with two
    (``X-Session-Id: <its stream>``, then another replica's) reached the other replica and its stream was answered
    404 unknown_stream there, as if the stream were lost."""
    front, inner = _front()
    headers = [(b"x-session-id", v.encode()) for v in values]
    _misdirected(*_call(front, _scope(f"/v1/streams/{SID}/steps", "POST", headers))[::2])
    assert inner.calls == []


def test_the_session_header_in_rays_spelling_with_an_underscore_counts():
    """Ray's proxy takes ``x_session_id`` (what a proxy that rewrites separators forwards) as the session header
    and routes by it; the front refused the very request that reached the right replica (and, with a second
    ``x-session-id`` naming the stream, let through one Ray routed elsewhere)."""
    front, inner = _front()
    path = f"/v1/streams/{SID}/steps"
    assert _call(front, _scope(path, headers=[(b"x_session_id", SID.encode())]))[0] == 200
    two = [(b"x-session-id", SID.encode()), (b"X_Session_Id", b"ssss9999.x")]
    _misdirected(*_call(front, _scope(path, headers=two))[::2])
    assert len(inner.calls) == 1


@pytest.mark.parametrize("path, method", STREAM_ROUTES)
def test_auth_is_checked_before_the_session_header(path, method):
    front, inner = _front(TOKEN)
    status, _, body = _call(front, _scope(path, method))
    assert (status, json.loads(body)["code"]) == (401, "unauthorized")
    status, _, body = _call(front, _scope(path, method, [(b"authorization", b"Bearer wrong")]))
    assert status == 401
    _misdirected(*_call(front, _scope(path, method, [AUTH]))[::2])
    assert _call(front, _scope(path, method, [AUTH, (b"x-session-id", SID.encode())]))[0] == 200
    assert len(inner.calls) == 1
    assert _sample(inner.svc.metrics.exposition(), "edge_rnn_rejections_total", reason="unauthorized") == 2


@pytest.mark.parametrize("path", [f"/v1/streams/{SID}/steps", "/metrics"])
def test_a_repeated_authorization_header_is_refused_as_the_standalone_server_refuses_it(path):
    """The standalone app answers two Authorization headers 400 bad_request whatever they hold; the front
    authorized by the first, so (first good, second bad) got the merged metrics, and (first bad) a 401."""
    front, inner = _front(TOKEN)
    for pair in ([AUTH, (b"authorization", b"Bearer wrong")], [(b"authorization", b"Bearer wrong"), AUTH]):
        status, _, body = _call(front, _scope(path, "GET", [*pair, (b"x-session-id", SID.encode())]))
        assert (status, json.loads(body)["code"]) == (400, "bad_request"), body
    assert inner.calls == []


@pytest.mark.parametrize("path, method", [
    ("/v1/streams", "POST"), ("/v1/streams/", "POST"), ("/v1/streams/ws", "GET"), ("/v1/streams//steps", "POST"),
    ("/v1/model", "GET"), ("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "POST"), ("/metrics/", "GET"),
    ("/v1/streamsX/abc.d/steps", "POST"), ("/docs", "GET"),
])
def test_requests_about_no_stream_pass_through_untouched(path, method):
    front, inner = _front(TOKEN)  # the app does its own auth: the front lets them through as they are
    scope = _scope(path, method)
    assert _call(front, scope)[0] == 200
    assert inner.calls == [scope]


def test_the_stream_socket_and_the_lifespan_pass_through():
    front, inner = _front(TOKEN)
    scopes = [_scope("/v1/streams/ws", "GET", kind="websocket"), _scope(f"/v1/streams/{SID}/steps", kind="websocket"),
              {"type": "lifespan"}]
    for scope in scopes:
        _call(front, scope)
    assert inner.calls == scopes


def test_the_socket_id_is_no_streams():
    front, inner = _front()
    assert _call(front, _scope("/v1/streams/ws/x"))[0] == 200  # the app answers it (404): "ws" is no stream's id
    assert len(inner.calls) == 1


def test_the_id_is_the_decoded_path_segment_as_the_app_routes_it():
    """The server decodes ``raw_path`` into ``path``, and the app routes by ``path``: the header must name the
    id as decoded."""
    front, inner = _front()
    scope = _scope(f"/v1/streams/{SID}/steps", headers=[(b"x-session-id", SID.encode())])
    scope["raw_path"] = f"/v1/streams/{SID.replace('.', '%2E')}/steps".encode()
    assert _call(front, scope)[0] == 200
    scope["headers"] = [(b"x-session-id", SID.replace(".", "%2E").encode())]
    _misdirected(*_call(front, scope)[::2])
    assert len(inner.calls) == 1


def test_a_non_ascii_id_cannot_be_named():
    """A header is latin-1 on the wire: an id of other characters (no stream has one) is never matched."""
    front, inner = _front()
    sid = "rrrr1234.\u00e9"
    _misdirected(*_call(front, _scope(f"/v1/streams/{sid}/steps", headers=[(b"x-session-id", sid.encode())]))[::2])
    assert inner.calls == []


def test_the_session_header_is_checked_under_a_route_prefix(gathered):
    """Under a route prefix (a Serve config's ``route_prefix: /edge``), Ray hands the app ``root_path="/edge"`` and
    the full path; the front matched the full path against ``/v1/streams/``, so it checked nothing there, and
    ``GET /metrics`` was the replica's own."""
    front, inner = _front()
    path = f"/edge/v1/streams/{SID}/steps"
    _misdirected(*_call(front, _scope(path, root_path="/edge"))[::2])
    assert _call(front, _scope(path, headers=[(b"x-session-id", SID.encode())], root_path="/edge"))[0] == 200
    assert len(inner.calls) == 1
    status, _, body = _call(front, _scope("/edge/metrics", "GET", root_path="/edge"))
    assert status == 200 and _sample(body, "edge_rnn_replica_up", replica="cccc") == 0 and len(gathered) == 1
    for other in ("/edgy/v1/streams/x.y/steps", "/v1/streams/x.y/steps/edge"):  # not below the prefix: as is
        assert _call(front, _scope(other, root_path="/edge"))[0] == (421 if other.startswith("/v1/") else 200)


def _sample(text: bytes, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
def gathered(monkeypatch):
    asked = []
    a, b = Metrics(replica="aaaa"), Metrics(replica="bbbb")
    a.set_active(3)
    b.set_active(4)

    async def gather(app_name, deployment, me, own):
        assert me == "rrrr" and b"edge_rnn_active_streams{replica=\"rrrr\"}" in own
        asked.append((app_name, deployment))
        return {"aaaa": a.exposition(), "bbbb": b.exposition(), "cccc": None}

    monkeypatch.setattr(_ray_front, "gather", gather)
    return asked


def test_get_metrics_answers_for_every_replica(gathered):
    front, inner = _front()
    status, headers, body = _call(front, _scope("/metrics", "GET"))
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
    assert int(headers[b"content-length"]) == len(body)
    assert _sample(body, "edge_rnn_active_streams", replica="aaaa") == 3
    assert _sample(body, "edge_rnn_active_streams", replica="bbbb") == 4
    assert _sample(body, "edge_rnn_replica_up", replica="cccc") == 0
    assert gathered == [("edge_rnn", "edge_rnn")] and inner.calls == []


def test_get_metrics_needs_the_token_and_gathers_nothing_without_it(gathered):
    front, inner = _front(TOKEN)
    status, _, body = _call(front, _scope("/metrics", "GET", [(b"authorization", b"Bearer nope")]))
    assert (status, json.loads(body)["code"]) == (401, "unauthorized")
    assert gathered == [] and inner.calls == []
    assert _call(front, _scope("/metrics", "GET", [AUTH]))[0] == 200
    assert len(gathered) == 1


def test_own_is_the_replicas_metrics_alone():
    front, inner = _front()
    inner.svc.metrics.set_active(7)
    assert _sample(front.own(), "edge_rnn_active_streams", replica="rrrr") == 7
