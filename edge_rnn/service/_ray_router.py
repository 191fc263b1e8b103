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

__all__ = ["StreamRouter", "owner_of"]


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

    def update_replicas(self, replicas: list[Any]) -> None:
        super().update_replicas(replicas)
        self._owners = {r.replica_id.unique_id: r for r in replicas}

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
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
