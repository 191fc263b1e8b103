"""How many streams a change of replicas moves, with Ray Serve's consistent-hash router over stream ids, and with
edge-rnn's StreamRouter (the replica named in the stream id). No cluster: Ray's own ring code, on 20,000 random
stream ids. A moved stream lands on a replica without its state, so its client must resume it.

    python benchmarks/routing_remap.py
"""

from __future__ import annotations

import logging
import secrets
import warnings

warnings.filterwarnings("ignore")
logging.getLogger("ray.serve").setLevel(logging.WARNING)

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, ReplicaID  # noqa: E402
from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter  # noqa: E402

DEPLOYMENT = DeploymentID(name="edge_rnn", app_name="edge_rnn")


def ring_owners(ids: list[str], replicas: list[ReplicaID]) -> dict[str, str]:
    router = ConsistentHashRouter(DEPLOYMENT, DeploymentHandleSource.UNKNOWN)
    router._rebuild_ring(frozenset(replicas))
    return {s: router._lookup_ranked_replicas(s)[0].unique_id for s in ids}


def main() -> None:
    ids = [secrets.token_urlsafe(24) for _ in range(20_000)]
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(9)]
    print("| change | hash ring over stream ids: streams moved | replica id in the stream id: streams moved |")
    print("|---|---|---|")
    for n in (2, 3, 4, 8):
        before, grown = ring_owners(ids, replicas[:n]), ring_owners(ids, replicas[:n + 1])
        moved = sum(before[s] != grown[s] for s in ids) / len(ids)
        print(f"| {n} -> {n + 1} replicas (one added) | {moved:.1%} | 0% |")
        if n > 2:
            shrunk = ring_owners(ids, replicas[1:n])
            lost = sum(before[s] == "r0" for s in ids) / len(ids)
            moved = sum(before[s] != shrunk[s] for s in ids) / len(ids)
            print(f"| {n} -> {n - 1} replicas (one removed) | {moved:.1%} | {lost:.1%} (the removed one's) |")


if __name__ == "__main__":
    main()
