"""``GET /metrics`` on Ray Serve: every replica's metrics in one answer, each sample labelled with its replica.

Whichever replica the proxy picks answers (:func:`gather`, then :func:`merge`): it lists the deployment's live
replicas (Ray's named actors), asks each for its own exposition through
the deployment's handle (the stream router sends a request to the replica
named in its session id), and merges them family by family. A replica that
does not answer within :data:`GATHER_TIMEOUT` seconds, or for which another
replica answered (a replacement the handle's router does not know yet), is
left out, and ``edge_rnn_replica_up{replica=...}`` says so (0). Each replica's streams are
``edge_rnn_active_streams{replica=...}``.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cache
from typing import Any

import ray
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

__all__ = ["merge", "gather", "handle", "replicas", "GATHER_TIMEOUT"]

GATHER_TIMEOUT = 2.0
_log = logging.getLogger("edge_rnn.service")


def merge(expositions: dict[str, bytes | None]) -> bytes:
    """One exposition of the families in every replica's (replica id -> its text; None: it did not answer)."""
    families: dict[str, Metric] = {}
    for text in expositions.values():
        if text is None:
            continue
        for family in text_string_to_metric_families(text.decode()):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            merged.samples.extend(family.samples)
    up = GaugeMetricFamily("edge_rnn_replica_up", "1: the replica's metrics are in this answer; 0: it did not "
                           "answer in time", labels=["replica"])
    for replica, text in sorted(expositions.items()):
        up.add_metric([replica], 0.0 if text is None else 1.0)

    class _Merged:
        def collect(self) -> Any:
            yield from families.values()
            yield up

    return generate_latest(_Merged())


def replicas(app_name: str, deployment: str) -> list[str]:
    """The ids of the deployment's live replicas (Serve names each replica's actor after it)."""
    prefix = f"SERVE_REPLICA::{app_name}#{deployment}#"
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"][len(prefix):] for a in named if a["name"].startswith(prefix))


@cache
def handle(app_name: str, deployment: str) -> Any:
    """The deployment's handle, made once per process: a new handle's router waits for its list of replicas."""
    return serve.get_deployment_handle(deployment, app_name=app_name)


async def gather(app_name: str, deployment: str, me: str, own: bytes) -> dict[str, bytes | None]:
    """Each live replica's own exposition (None where it did not answer within :data:`GATHER_TIMEOUT`); this
    replica's (``me``) is ``own``."""
    h = handle(app_name, deployment)

    async def one(replica: str) -> bytes | None:
        if replica == me:  # not through the handle: a replica's call to itself there timed out, now and then
            return own
        try:
            call = h.options(session_id=f"{replica}.", method_name="exposition").remote()
            text = await asyncio.wait_for(call, GATHER_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - a replica dying or stuck is reported as down, not as an error
            _log.warning("/metrics: replica %s did not answer: %s: %s", replica, type(e).__name__, e)
            return None
        if f'replica="{replica}"'.encode() not in text:
            # the handle's router did not know the replica yet (a replacement just started) and sent the call to
            # another: that one's metrics, under this replica's name, would be wrong numbers reported as up
            _log.warning("/metrics: replica %s: another replica answered for it", replica)
            return None
        return text

    ids = await asyncio.to_thread(replicas, app_name, deployment)  # a call to Ray's GCS: off the event loop
    return dict(zip(ids, await asyncio.gather(*(one(r) for r in ids))))
