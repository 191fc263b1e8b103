"""The Ray Serve path's pieces on their own, without a Ray cluster (no ``ray.init``, no ``serve.run``): the stream
router, the replica's front (421 without the session header, ``GET /metrics`` merged), the metrics merge, the
application builder's arguments and ``edge-rnn serve --ray``'s flags. Each test runs in milliseconds; the tests
that start a cluster are elsewhere."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from cli_errors import invoke, one_line_error  # noqa: E402
from conftest import REPO  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata  # noqa: E402
from ray.serve._private.request_router.common import PendingRequest  # noqa: E402

from edge_rnn.errors import EdgeRnnError  # noqa: E402
from edge_rnn.service import _ray_front, _ray_metrics  # noqa: E402
from edge_rnn.service._config import ServiceConfig  # noqa: E402
from edge_rnn.service._errors import Refusal  # noqa: E402
from edge_rnn.service._metrics import Metrics  # noqa: E402
from edge_rnn.service._ray_front import ReplicaFront  # noqa: E402
from edge_rnn.service._ray_metrics import merge  # noqa: E402
from edge_rnn.service._ray_router import StreamRouter, owner_of  # noqa: E402
from edge_rnn.service.ray import HEALTH_CHECK_PERIOD, RayOptions, deployment_options  # noqa: E402

MODEL = REPO / "tests" / "data" / "lstm_layer.onnx"
TOKEN = "a-token-of-sixteen-chars"
DEPLOYMENT = DeploymentID(name="edge_rnn", app_name="edge_rnn")


# --- the router --------------------------------------------------------------------------------------------------

class FakeReplica:
    """What the router reads of Ray's RunningReplica: its id (and, for the base class's probe, its queue)."""

    def __init__(self, unique_id: str, streams: int | None = None, max_streams: int = 3):
        self.replica_id = ReplicaID(unique_id, DEPLOYMENT)
        self.routing_stats = {} if streams is None else {"streams": streams, "max_streams": max_streams}

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return 0

    def __repr__(self) -> str:
        return f"<replica {self.replica_id.unique_id}>"


def _pending(session_id: str) -> PendingRequest:
    return PendingRequest(args=[], kwargs={}, metadata=RequestMetadata(request_id="r", internal_request_id="i",
                                                                       session_id=session_id))


def _route(replicas: list[FakeReplica], session_ids: list[str | None], *, died: tuple[str, ...] = (),
           then: list[FakeReplica] | None = None) -> list[list[list[FakeReplica]]]:
    """The router's choices for ``session_ids`` (None: no pending request) once ``replicas`` are its replicas,
    those named in ``died`` reported dead (as Ray's router does when a call to one fails), then ``then`` (when
    given) the controller's next broadcast."""

    async def run() -> list[list[list[FakeReplica]]]:
        router = StreamRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN)  # the real constructor: no Ray needed
        router.update_replicas(replicas)
        for uid in died:
            router.on_replica_actor_died(ReplicaID(uid, DEPLOYMENT))
        if then is not None:
            router.update_replicas(then)
        await asyncio.sleep(0)  # the base class's queue-length probe of new replicas runs
        out = []
        for sid in session_ids:
            pending = None if sid is None else _pending(sid)
            out.append(await router.choose_replicas(router._replicas_list, pending))
            assert pending is None or not out[-1] or pending.routing_context.should_backoff  # a busy owner: wait
        return out

    return asyncio.run(run())


def _random_pick(choice: list[list[FakeReplica]], among: list[FakeReplica]) -> None:
    """``choice`` ranks every replica of ``among`` once, one a rank (a new stream's placement, fewest first)."""
    assert all(len(rank) == 1 for rank in choice), choice
    assert sorted(id(rank[0]) for rank in choice) == sorted(id(r) for r in among), choice


def test_a_stream_id_naming_a_live_replica_goes_to_that_replica_only():
    a, b, c = FakeReplica("aaaa1111"), FakeReplica("bbbb2222"), FakeReplica("cccc3333")
    choices = _route([a, b, c], ["aaaa1111.s1", "bbbb2222.s2", "cccc3333.x.y"] * 5)
    for choice, owner in zip(choices, [a, b, c] * 5):
        assert choice == [[owner]]


@pytest.mark.parametrize("sid", ["", ".", "abc", "a.b.c", "dead0000.s1", "AAAA1111.s1", " aaaa1111.s1",
                                 ".aaaa1111", "aaaa1111"])
def test_a_request_naming_no_live_replica_goes_to_the_replica_with_the_fewest_streams(sid):
    replicas = [FakeReplica("aaaa1111"), FakeReplica("bbbb2222"), FakeReplica("cccc3333")]
    for choice in _route(replicas, [sid] * 20):
        _random_pick(choice, replicas)


def test_a_request_without_pending_metadata_goes_to_the_replica_with_the_fewest_streams():
    replicas = [FakeReplica("aaaa1111"), FakeReplica("bbbb2222")]
    picks = _route(replicas, [None] * 20)
    for choice in picks:
        _random_pick(choice, replicas)


def test_one_replica_is_the_only_candidate():
    a = FakeReplica("aaaa1111")
    assert _route([a], ["", "zzzz.s", "aaaa1111.s"]) == [[[a]]] * 3


def test_no_replicas_no_choice():
    assert _route([], ["aaaa1111.s1", "", None]) == [[], [], []]


def test_a_replica_scaled_away_is_no_longer_chosen_and_one_added_is():
    a, b, c = FakeReplica("aaaa1111"), FakeReplica("bbbb2222"), FakeReplica("cccc3333")
    picks = _route([a, b], ["aaaa1111.s", "cccc3333.s"] * 10, then=[b, c])
    for i, choice in enumerate(picks):
        if i % 2:
            assert choice == [[c]]
        else:
            _random_pick(choice, [b, c])


def test_a_replica_reported_dead_is_not_chosen_before_the_next_broadcast():
    """Ray's router drops a replica whose call failed (on_replica_actor_died) at once; the owners map kept it, so
    every request of its streams went on to the dead replica, retried with backoff until the controller's next
    broadcast, instead of reaching a live replica (404 unknown_stream: the client resumes) at once."""
    a, b = FakeReplica("aaaa1111"), FakeReplica("bbbb2222")
    for choice in _route([a, b], ["aaaa1111.s"] * 10, died=("aaaa1111",)):
        assert choice == [[b]]


@pytest.mark.parametrize("sid, owner", [
    ("aaaa1111.s1", "aaaa1111"), ("aaaa1111.", "aaaa1111"), ("a.b.c", "a"), (".s", ""), (".", ""), ("", ""),
    ("abc", ""), ("ws", ""), ("a..b", "a"),
])
def test_owner_of(sid, owner):
    assert owner_of(sid) == owner


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
        return f"text of {session_id}".encode()

    names = [{"name": f"SERVE_REPLICA::edge_rnn#edge_rnn#{r}", "namespace": "serve"} for r in ("cccc", "aaaa", "bbbb")]
    names += [{"name": "SERVE_REPLICA::other#edge_rnn#zzzz", "namespace": "serve"},
              {"name": "SERVE_CONTROLLER_ACTOR", "namespace": "serve"}]
    monkeypatch.setattr(_ray_metrics.ray.util, "list_named_actors", lambda all_namespaces: names)
    monkeypatch.setattr(_ray_metrics.serve, "get_deployment_handle", lambda d, app_name: Handle())
    monkeypatch.setattr(_ray_metrics, "GATHER_TIMEOUT", 0.05)
    names += [{"name": "SERVE_REPLICA::edge_rnn#edge_rnn#mine", "namespace": "serve"}]
    got = asyncio.run(_ray_metrics.gather("edge_rnn", "edge_rnn", "mine", b"my own"))
    assert got == {"aaaa": b"text of aaaa.", "bbbb": None, "cccc": None, "mine": b"my own"}
    # each other replica through its own session; this one's without a call (to itself, it timed out at times)
    assert sorted(asked) == [("aaaa.", "exposition"), ("bbbb.", "exposition"), ("cccc.", "exposition")]


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


# --- the application builder's arguments --------------------------------------------------------------------------

def test_string_arguments_are_typed():
    o = RayOptions.from_args({"model": "m.onnx", "replicas": "3", "threads": "2", "max_streams": "50",
                              "max_wait_ms": "0.5", "idle_timeout": "12", "self_test": "off", "variant": "int8"})
    assert (o.model, o.replicas, o.threads, o.self_test, o.variant) == ("m.onnx", 3, 2, False, "int8")
    assert (o.config.max_streams, o.config.max_wait_ms, o.config.idle_timeout) == (50, 0.5, 12.0)
    assert type(o.config.max_streams) is int and type(o.config.idle_timeout) is float
    assert o.config.token is None and o.config.max_connections is None


@pytest.mark.parametrize("spelling, value", [("1", True), ("true", True), ("Yes", True), ("ON", True),
                                             ("0", False), ("false", False), ("no", False), ("Off", False)])
def test_bool_spellings(spelling, value):
    assert RayOptions.from_args({"model": "m", "self_test": spelling}).self_test is value


def test_typed_values_from_a_config_file_are_taken():
    o = RayOptions.from_args({"model": "m", "replicas": 2, "self_test": False, "max_wait_ms": 2, "threads": None,
                              "idle_timeout": 1.5, "variant": None})
    assert (o.replicas, o.self_test, o.config.max_wait_ms, o.threads, o.config.idle_timeout) == (2, False, 2, None,
                                                                                                1.5)
    assert RayOptions.from_args({"model": "m"}) == RayOptions(model="m")


def _refused(args: dict, *says: str) -> str:
    with pytest.raises(EdgeRnnError) as e:
        RayOptions.from_args(args)
    message = str(e.value)
    assert "\n" not in message and message.startswith("edge_rnn.service.ray:app: "), message
    assert all(s in message for s in says), message
    return message


def test_model_is_needed():
    _refused({}, "model=", "got none")
    _refused({"replicas": "2"}, "model=")


def test_an_unknown_argument_is_refused_with_the_list():
    message = _refused({"model": "m", "max_stream": "5"}, "'max_stream'", "max_streams", "replicas", "token_file")
    assert "max_connections" not in message.split("expected one of")[1]


def test_the_token_itself_is_not_an_argument():
    _refused({"model": "m", "token": "x" * 20}, "'token'")


@pytest.mark.parametrize("key", ["max_connections", "header_timeout", "message_timeout", "write_timeout",
                                 "max_message_fragments", "max_queued_bytes"])
def test_the_standalone_servers_connection_bounds_are_refused_as_the_cli_refuses_them(key):
    _refused({"model": "m", key: "5"}, key, "standalone server", "proxy holds them")


@pytest.mark.parametrize("replicas", ["0", 0, "-1"])
def test_no_replicas_is_refused(replicas):
    _refused({"model": "m", "replicas": replicas}, "replicas", "at least 1")


@pytest.mark.parametrize("key, value, kind", [("replicas", "two", "int"), ("max_streams", "1.5", "int"),
                                              ("max_wait_ms", "fast", "float"), ("self_test", "maybe", "bool"),
                                              ("threads", "", "int")])
def test_a_value_of_the_wrong_kind_is_one_line(key, value, kind):
    message = _refused({"model": "m", key: value}, key, kind, repr(value))
    assert "expected a" in message and "got" in message


@pytest.mark.parametrize("key, value", [("replicas", 2.5), ("replicas", True), ("max_streams", [1]),
                                        ("max_batch", "x"), ("self_test", 2), ("max_wait_ms", "1e400x"),
                                        ("idle_timeout", True), ("variant", 3)])
def test_a_config_files_value_of_the_wrong_type_is_refused(key, value):
    """A config file's ``replicas: 2.5`` or ``max_streams: [1]`` was taken as it was and failed later, inside a
    replica (or in Ray's deployment options)."""
    _refused({"model": "m", key: value}, key)


@pytest.mark.parametrize("key, value", [("max_streams", "0"), ("max_batch", "0"), ("max_batch", "4097"),
                                        ("max_queue", "0"), ("max_wait_ms", "-1"), ("idle_timeout", "0"),
                                        ("idle_timeout", "nan"), ("max_batch_frames", "0"),
                                        ("max_stream_inflight", "0"), ("max_message_bytes", "8"),
                                        ("threads", "0"), ("drain_timeout", "-1"), ("max_streams", -5)])
def test_a_value_the_cli_refuses_is_refused(key, value):
    """``edge-rnn serve`` bounds every limit (``--max-batch`` 1..4096, ...); the builder took any number
    (``max_batch=0``, ``idle_timeout=nan``), so ``serve run`` started replicas the CLI would refuse."""
    _refused({"model": "m", key: value}, key)


def test_the_token_is_read_from_token_file(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert RayOptions.from_args({"model": "m", "token_file": str(tmp_path / "token")}).config.token == TOKEN
    (tmp_path / "short").write_text("short")
    _refused({"model": "m", "token_file": str(tmp_path / "short")}, "token_file", "at least 16 characters", "got 5")
    _refused({"model": "m", "token_file": str(tmp_path / "none")}, "token_file", "no such file")
    _refused({"model": "m", "token_file": str(tmp_path)}, "token_file", "expected a file")


@pytest.mark.parametrize("path", ["", " "])
def test_an_empty_token_file_argument_is_refused_not_taken_for_no_token(path):
    """``token_file=$TOKEN_FILE`` with the variable unset served every stream to anyone."""
    _refused({"model": "m", "token_file": path}, "token_file", repr(path))


def test_a_token_file_of_null_is_no_token():
    assert RayOptions.from_args({"model": "m", "token_file": None}).config.token is None


@pytest.mark.parametrize("model", [None, 3])
def test_model_must_be_a_path(model):
    _refused({"model": model}, "model", repr(model))


def test_the_deployment_options():
    config = ServiceConfig(max_streams=300, max_batch=16, max_queue=100, drain_timeout=4.0)
    d = deployment_options(RayOptions(model="m", config=config, replicas=3, threads=2))
    assert d["num_replicas"] == 3
    assert d["max_ongoing_requests"] >= config.max_streams + config.max_batch + config.max_queue  # WS + HTTP steps
    assert d["request_router_config"].request_router_class is StreamRouter or \
        d["request_router_config"].request_router_class.endswith("StreamRouter")
    assert d["health_check_period_s"] == HEALTH_CHECK_PERIOD == 1.0
    assert d["graceful_shutdown_timeout_s"] >= config.drain_timeout
    assert d["ray_actor_options"] == {"num_cpus": 2}
    assert deployment_options(RayOptions(model="m"))["ray_actor_options"] == {"num_cpus": 1}


# --- edge-rnn serve --ray ----------------------------------------------------------------------------------------

def _usage_error(result, *says: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert all(s in result.output for s in says), result.output


@pytest.mark.parametrize("flag", [["--replicas", "2"], ["--address", "auto"]])
def test_ray_flags_without_ray_are_a_usage_error(flag):
    _usage_error(invoke("serve", MODEL, *flag), flag[0], "--ray")


@pytest.mark.parametrize("flag", [["--max-connections", "5"], ["--header-timeout", "1"], ["--message-timeout", "1"],
                                  ["--write-timeout", "1"], ["--max-message-fragments", "2"],
                                  ["--max-queued-bytes", "70000"]])
def test_standalone_only_flags_with_ray_are_a_usage_error(flag):
    _usage_error(invoke("serve", MODEL, "--ray", *flag), flag[0])


@pytest.fixture
def ray_run(monkeypatch):
    """edge_rnn.service.ray.run replaced: the options it would start Ray Serve with."""
    import edge_rnn.service.ray as ray_app

    started = []
    monkeypatch.setattr(ray_app, "run", lambda options, **kw: started.append((options, kw)))
    return started


def test_serve_ray_hands_its_options_to_ray_serve(ray_run, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    result = invoke("serve", MODEL, "--ray", "--replicas", "2", "--address", "ray://head:10001", "--max-batch", "8",
                    "--token-file", tmp_path / "token", "--port", "0")
    assert result.exit_code == 0, result.output
    [(options, kw)] = ray_run
    assert (options.replicas, options.config.max_batch, options.config.token) == (2, 8, TOKEN)
    assert options.config.max_connections is None and options.model == str(MODEL.resolve())
    assert kw["address"] == "ray://head:10001" and kw["port"] == 0


def test_serve_ray_does_not_bound_streams_by_this_processs_open_files(ray_run, monkeypatch):
    """With --ray the replicas hold the streams and Ray's proxy the connections, elsewhere; --max-streams was
    still fitted to the open-file limit of the process running the CLI (lowered to it, or refused beyond it)."""
    from edge_rnn.service import _server

    monkeypatch.setattr(_server, "connection_limit", lambda: 10)
    result = invoke("serve", MODEL, "--ray", "--max-streams", "50")
    assert result.exit_code == 0, result.output
    result = invoke("serve", MODEL, "--ray")
    assert result.exit_code == 0 and "lowered" not in result.output, result.output
    assert [o.config.max_streams for o, _ in ray_run] == [50, 1000]
    one_line_error(invoke("serve", MODEL, "--max-streams", "50"), "expected at most --max-connections 10")
    assert len(ray_run) == 2  # the standalone server still fits them to its own connections


def test_serve_ray_refuses_a_bad_token_file_as_standalone_does(ray_run, tmp_path):
    (tmp_path / "token").write_text("short")
    for ray in ([], ["--ray"]):
        one_line_error(invoke("serve", MODEL, *ray, "--token-file", tmp_path / "token"),
                       f"--token-file {tmp_path / 'token'}: expected a token of at least 16 characters, got 5")
    assert ray_run == []


# --- edge-rnn serve --ray waiting for its replicas -------------------------------------------------------------

def _status(state: str | None, app_message: str = "", deployment_message: str = ""):
    from types import SimpleNamespace as NS

    if state is None:
        return NS(applications={})
    deployments = {"edge_rnn": NS(message=deployment_message)}
    return NS(applications={"edge_rnn": NS(status=f"ApplicationStatus.{state}", message=app_message,
                                           deployments=deployments)})


def _wait(monkeypatch, states: list, timeout: float = 60.0):
    import threading

    from edge_rnn.service import ray as ray_app

    seen = iter(states)
    monkeypatch.setattr(ray_app.serve, "status", lambda: next(seen))
    monkeypatch.setattr(ray_app, "START_TIMEOUT", timeout)
    return ray_app._started(threading.Event())


def test_serve_ray_is_ready_once_the_application_runs(monkeypatch):
    assert _wait(monkeypatch, [_status(None), _status("DEPLOYING"), _status("RUNNING")]) is True


def test_replicas_that_fail_to_start_are_one_line_with_rays_reason(monkeypatch):
    with pytest.raises(EdgeRnnError) as e:
        _wait(monkeypatch, [_status("DEPLOYING"), _status("DEPLOY_FAILED", "app failed",
                                                          "The deployment failed to start:\n  Traceback ... boom")])
    assert "failed to start" in str(e.value) and "boom" in str(e.value) and "\n" not in str(e.value)


def test_replicas_never_scheduled_are_an_error_after_the_start_timeout_not_a_wait_forever(monkeypatch):
    waiting = "Deployment 'edge_rnn' has 1 replicas that have taken more than 30s to be scheduled: {'CPU': 1}"
    with pytest.raises(EdgeRnnError) as e:
        _wait(monkeypatch, [_status("DEPLOYING", deployment_message=waiting)] * 1000, timeout=0.3)
    assert "were not all up within 0 s" in str(e.value) and "to be scheduled" in str(e.value)


def test_a_signal_while_waiting_stops_the_wait(monkeypatch):
    import threading

    from edge_rnn.service import ray as ray_app

    stop = threading.Event()
    stop.set()
    monkeypatch.setattr(ray_app.serve, "status", lambda: pytest.fail("asked after the signal"))
    assert ray_app._started(stop) is False


# --- where a new stream goes ------------------------------------------------------------------------------------

def _ids(ranks: list[list[FakeReplica]]) -> list[str]:
    assert all(len(rank) == 1 for rank in ranks)
    return [rank[0].replica_id.unique_id for rank in ranks]


def test_a_new_stream_goes_to_the_replica_with_the_fewest_streams_then_the_others_in_order():
    a, b, c = FakeReplica("aaaa", 2), FakeReplica("bbbb", 0), FakeReplica("cccc", 1)
    assert _ids(_route([a, b, c], [""])[0]) == ["bbbb", "cccc", "aaaa"]


def test_a_full_replica_comes_last_whatever_its_count():
    full, busy = FakeReplica("full", 3, max_streams=3), FakeReplica("busy", 7, max_streams=10)
    assert _ids(_route([full, busy], [""])[0]) == ["busy", "full"]


def test_a_burst_of_new_streams_spreads_before_the_replicas_report_again():
    """The probe's case: 2 replicas of --max-streams 3, 6 opens at once, all reported empty: 3 each, none refused."""
    a, b = FakeReplica("aaaa", 0), FakeReplica("bbbb", 0)
    firsts = [_ids(ranks)[0] for ranks in _route([a, b], [""] * 6)]
    assert sorted(firsts) == ["aaaa"] * 3 + ["bbbb"] * 3


def test_a_report_resets_what_was_counted_since_the_last():
    """3 opens go to the empty replica; once its report counts them (3, beside 4), it is the emptier again."""

    async def run() -> list[str]:
        router = StreamRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN)
        router.update_replicas([FakeReplica("aaaa", 0, 20), FakeReplica("bbbb", 10, 20)])
        firsts = [_ids(await router.choose_replicas(router._replicas_list, _pending("")))[0] for _ in range(3)]
        router.update_replicas([FakeReplica("aaaa", 3, 20), FakeReplica("bbbb", 4, 20)])
        return firsts + [_ids(await router.choose_replicas(router._replicas_list, _pending("")))[0]]

    assert asyncio.run(run()) == ["aaaa"] * 4  # without the reset, aaaa would count 6 and bbbb come first


def test_a_stream_request_still_goes_only_to_its_replica_whatever_the_loads():
    a, b = FakeReplica("aaaa", 3, max_streams=3), FakeReplica("bbbb", 0)
    assert _route([a, b], ["aaaa.x"]) == [[[a]]]


def test_a_token_file_that_is_a_device_is_named_so_not_a_directory():
    with pytest.raises(EdgeRnnError, match="got a device, pipe or socket, not a regular file"):
        RayOptions.from_args({"model": "m", "token_file": "/dev/zero"})


def test_the_builder_caps_replicas_as_the_cli_does():
    _refused({"model": "m", "replicas": "1025"}, "replicas", "at most 1024")


# --- a full replica opens a new HTTP stream on another -----------------------------------------------------------

def _served_app(max_streams: int):
    from edge_rnn.runtime import StreamingModel
    from edge_rnn.service import create_app

    return create_app(StreamingModel.load(REPO / "tests" / "data" / "lstm_layer.onnx"),
                      ServiceConfig(max_streams=max_streams), replica="mine")


def test_a_full_replica_answers_with_the_stream_another_replica_opened():
    from starlette.testclient import TestClient

    asked = []

    async def overflow(snapshot):
        asked.append(snapshot)
        return "peer1234.opened-there"

    app = _served_app(1)
    app.svc.overflow = overflow
    with TestClient(app) as http:
        mine = http.post("/v1/streams").json()["stream_id"]  # room here: opened here, the peers not asked
        assert mine.startswith("mine.") and asked == []
        assert http.post("/v1/streams").json() == {"stream_id": "peer1234.opened-there"}
        assert asked == [None] and len(app.svc.registry.streams) == 1


def test_a_full_replica_refuses_as_before_when_no_replica_has_room():
    from starlette.testclient import TestClient

    async def overflow(snapshot):
        return None

    app = _served_app(1)
    app.svc.overflow = overflow
    with TestClient(app) as http:
        http.post("/v1/streams")
        r = http.post("/v1/streams")
        assert (r.status_code, r.json()["code"]) == (429, "too_many_streams")


def test_a_peer_opens_here_only_with_room_and_refuses_another_models_snapshot():
    from edge_rnn.runtime import StreamingModel
    from edge_rnn.service._ray_overflow import open_here

    app = _served_app(2)
    other = StreamingModel.load(REPO / "tests" / "data" / "gru_cell.onnx")
    assert "bad_snapshot" in open_here(app.svc, other.open_stream().snapshot())
    opened = open_here(app.svc, None)
    assert opened["stream_id"].startswith("mine.") and "stream_id" in open_here(app.svc, None)
    assert open_here(app.svc, None) == {"full": "no room"}
    app.svc.registry.streams.clear()
    app.svc.closing = True
    assert open_here(app.svc, None) == {"full": "no room"}


def test_overflow_asks_each_other_replica_until_one_has_room(monkeypatch):
    from edge_rnn.service import _ray_overflow

    answers = {"full0000.": {"full": "no room"}, "dead0000.": RuntimeError("gone"),
               "room0000.": {"stream_id": "room0000.s"}}
    asked = []

    class Handle:
        def options(self, *, session_id, method_name):
            assert method_name == "open_stream"
            asked.append(session_id)

            async def answer(snapshot):
                a = answers[session_id]
                if isinstance(a, Exception):
                    raise a
                return a

            return SimpleNamespace(remote=answer)

    monkeypatch.setattr(_ray_overflow, "replicas", lambda app, dep: ["mine", "full0000", "dead0000", "room0000"])
    monkeypatch.setattr(_ray_overflow, "handle", lambda app, dep: Handle())
    got = asyncio.run(_ray_overflow.overflow("edge_rnn", "edge_rnn", "mine", b"snap"))
    assert got == "room0000.s" and "mine." not in asked and "room0000." in asked
    answers["room0000."] = {"full": "no room"}
    assert asyncio.run(_ray_overflow.overflow("edge_rnn", "edge_rnn", "mine", None)) is None
    answers["room0000."] = {"bad_snapshot": "expected this model's"}
    answers["full0000."] = answers["dead0000."] = {"full": "no room"}
    with pytest.raises(Refusal) as e:
        asyncio.run(_ray_overflow.overflow("edge_rnn", "edge_rnn", "mine", b"other"))
    assert (e.value.status, e.value.code) == (400, "bad_snapshot")
