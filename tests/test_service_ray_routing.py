"""The Ray Serve path's routing without a Ray cluster: a stream's requests to its replica, a new stream to the
replica with the fewest, and a full replica opening an HTTP stream on another. Each test runs in milliseconds."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from conftest import REPO  # noqa: E402
from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID, RequestMetadata  # noqa: E402
from ray.serve._private.request_router.common import PendingRequest  # noqa: E402

from edge_rnn.service._config import ServiceConfig  # noqa: E402
from edge_rnn.service._errors import Refusal  # noqa: E402
from edge_rnn.service._ray_router import StreamRouter, owner_of  # noqa: E402

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
