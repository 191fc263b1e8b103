"""uvicorn's sans-I/O WebSocket protocol, pausing a socket's reads only when a client runs ahead.

uvicorn pauses reading after every message it queues for the app and resumes
when the app takes it: for a stream of one message at a time, that is two
epoll calls and the event loop's reader bookkeeping per message (about a tenth
of the event loop's time at capacity, measured with py-spy; docs/performance.md).
Here the protocol's ``read_paused`` flag reads as set while fewer than
:attr:`StreamProtocol.high` messages wait, so uvicorn pauses the socket only
when that many are queued unread; memory per connection stays bounded by
``high`` messages of at most ``ws_max_size`` bytes each.

If a uvicorn release drops the flag, the property is never read and uvicorn's
own behaviour (a pause after every message) is what runs: slower, not wrong.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["StreamProtocol"]


class StreamProtocol(WebSocketsSansIOProtocol):
    high = 4  # messages a client may have queued unread before its socket is paused

    @property  # type: ignore[override]
    def read_paused(self) -> bool:
        queue = getattr(self, "queue", None)
        return self._paused or (queue is not None and queue.qsize() < self.high)

    @read_paused.setter
    def read_paused(self, value: bool) -> None:
        self._paused = value
