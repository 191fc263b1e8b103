"""Ray Serve's routing of a stream's requests to the replica that holds its state (the ``ray`` extra).

A stream's id starts with the id of the replica that opened it and a dot
(``abcd1234.<random>``). A request that names its stream in the header
``X-Session-Id`` (Ray Serve's session header, which the proxy hands to the
router) goes to that replica, and only to it: while the replica is busy the
request waits for it, as a step of that stream must. Every other request (a
new stream, a WebSocket, ``/v1/model``) goes to the less loaded of two replicas
drawn at random (power of two choices, Ray Serve's default). A stream whose
replica is gone (dead, or scaled away) is sent to any replica, which answers
404 ``unknown_stream``: its client resumes it from its last checkpoint.

Replica ids are never reused, and a replica added does not move a stream:
unlike a hash ring over stream ids (Ray's experimental
``ConsistentHashRouter``), which remaps about 1/N of the streams whenever
the N replicas change, and so loses their state.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

__all__ = ["StreamRouter", "owner_of", "STATS_PERIOD"]

STATS_PERIOD = 1.0  # seconds between a replica's reports of its open streams (Ray's default: 10)


def owner_of(stream_id: str) -> str:
    """The id of the replica that opened ``stream_id`` ("" when it names none)."""
    head, dot, _ = stream_id.partition(".")
    return head if dot else ""


class StreamRouter(ConsistentHashRouter):
    """Ray Serve's consistent-hash router, keyed by the replica named in the stream id rather than by a hash.

    The base class's request loop is kept: it hands each request the replica chosen for it (never another
    request's), and keeps retrying, with backoff, a replica that is full."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._owners: dict[str, Any] = {}  # replica id -> the replica, as the last broadcast named them
        self._sent: dict[str, int] = {}  # replica id -> requests without a stream sent to it since its last report

    def update_replicas(self, replicas: list[Any]) -> None:
        super().update_replicas(replicas)
        self._owners = {r.replica_id.unique_id: r for r in replicas}
        self._sent = {}  # the broadcast carries the replicas' reports: what was sent before is in them
    def on_replica_actor_died(self, replica_id: Any) -> None:
        """A call to the replica failed: its streams' requests go to a live replica (404 ``unknown_stream``, so
        their clients resume) at once, rather than wait for the controller's next broadcast of the replicas."""
        super().on_replica_actor_died(replica_id)
        self._owners.pop(replica_id.unique_id, None)

    async def choose_replicas(self, candidate_replicas: list[Any], pending_request: Any = None) -> list[list[Any]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True
            owner = self._owners.get(owner_of(pending_request.metadata.session_id or ""))
            if owner is not None:
                return [[owner]]
        return self._fewest_streams(candidate_replicas)

    def _fewest_streams(self, candidates: list[Any]) -> list[list[Any]]:
        """Every replica, one per rank: those with room for a stream first, each group fewest streams first
        (ties in random order). A replica that has not reported yet counts as empty, with room."""
        loads = {r.replica_id.unique_id: self._load(r) for r in candidates}
        ranked = list(candidates)
        random.shuffle(ranked)
        ranked.sort(key=lambda r: loads[r.replica_id.unique_id])
        first = ranked[0].replica_id.unique_id
        self._sent[first] = self._sent.get(first, 0) + 1  # counted as it goes: a burst of opens spreads
        return [[r] for r in ranked]

    def _load(self, replica: Any) -> tuple[bool, int]:
        """(full, streams): as the replica last reported, plus what this router sent it since."""
        stats = getattr(replica, "routing_stats", None) or {}
        streams, most = stats.get("streams"), stats.get("max_streams")
        streams = (streams if isinstance(streams, int) else 0) + self._sent.get(replica.replica_id.unique_id, 0)
        return (isinstance(most, int) and streams >= most, streams)
