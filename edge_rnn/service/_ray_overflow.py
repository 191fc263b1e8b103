"""On Ray Serve, a new HTTP stream that its replica has no room for is opened on another replica that has.

Each replica holds at most ``max_streams``. The router sends a new stream to
the replica with the fewest, as last reported (every second), so a burst of
opens can still reach a full replica while another has room. That replica
then asks the others in turn (:func:`overflow`), through the deployment's
handle and the stream router, to open the stream (:func:`open_here` on each);
the first with room opens it, and its id (which names that replica) is the
answer. Only when none has room is the open refused (429
``too_many_streams``), as the standalone server refuses it when full. A
WebSocket cannot move: its open is refused by a full replica.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from edge_rnn.service._errors import Refusal
from edge_rnn.service._ray_metrics import GATHER_TIMEOUT, handle, replicas
from edge_rnn.service._status import HTTP_400_BAD_REQUEST

__all__ = ["open_here", "overflow"]

_log = logging.getLogger("edge_rnn.service")


def open_here(svc: Any, snapshot: bytes | None) -> dict[str, str]:
    """A peer's request: a stream opened on this replica (``{"stream_id": ...}``), or why not (``{"full": ...}``,
    ``{"bad_snapshot": message}``)."""
    if svc.closing or svc.registry.full():
        return {"full": "no room"}
    try:
        return {"stream_id": svc.registry.open(snapshot)}
    except Refusal as e:  # the snapshot refused (bad_snapshot): told, not raised, across Ray
        return {e.code: e.message}


async def overflow(app_name: str, deployment: str, me: str, snapshot: bytes | None) -> str | None:
    """The id of a stream opened on another replica of the deployment with room for it (tried in random order),
    or None where none has; a snapshot they refuse is a 400 ``bad_snapshot``."""
    peers = [r for r in await asyncio.to_thread(replicas, app_name, deployment) if r != me]
    random.shuffle(peers)
    h = handle(app_name, deployment)
    for peer in peers:
        try:
            call = h.options(session_id=f"{peer}.", method_name="open_stream").remote(snapshot)
            answer = await asyncio.wait_for(call, GATHER_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - a peer dying or stuck is passed over
            _log.warning("open on replica %s: %s: %s", peer, type(e).__name__, e)
            continue
        if "stream_id" in answer:
            return answer["stream_id"]
        if "bad_snapshot" in answer:
            raise Refusal(HTTP_400_BAD_REQUEST, "bad_snapshot", answer["bad_snapshot"])
    return None
