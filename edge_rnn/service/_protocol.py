"""uvicorn's sans-I/O WebSocket protocol, pausing a socket's reads only when a client runs ahead, and bounded.

uvicorn pauses reading after every message it queues for the app and resumes
when the app takes it: for a stream of one message at a time, that is two
epoll calls and the event loop's reader bookkeeping per message (about a tenth
of the event loop's time at capacity, measured with py-spy; docs/performance.md).
Here the protocol's ``read_paused`` flag reads as set while fewer than
:attr:`StreamProtocol.high` messages wait, so uvicorn pauses the socket only
when that many are queued unread; memory per connection stays bounded by
``high`` messages of at most ``ws_max_size`` bytes each.

What one client can hold is bounded too (the server's
:class:`~edge_rnn.service.ServiceConfig` in :attr:`StreamProtocol.limits`):

- writes: once the transport's buffer passes its high-water mark (a client not
  reading its replies, or the pongs of its pings), the socket is not read until
  the buffer drains, so nothing more is answered; writes blocked for
  ``write_timeout`` seconds drop the connection, and a closing connection gets
  as long to take what is left (:class:`~edge_rnn.service._connection.BoundedTransport`);
- a message begun (a frame's header, a fragment) must end within
  ``message_timeout`` seconds of its first byte, or the connection is closed
  with 1008;
- text that is not UTF-8 closes the connection with 1007, quietly (uvicorn logs
  a traceback at ERROR for each such message).

If a uvicorn release drops the ``read_paused`` flag, the property is never read
and uvicorn's own behaviour (a pause after every message) is what runs: slower,
not wrong.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._connection import BoundedTransport, Deadline
from edge_rnn.service._status import WS_1007_INVALID_FRAME_PAYLOAD_DATA, WS_1008_POLICY_VIOLATION

__all__ = ["StreamProtocol"]


class StreamProtocol(WebSocketsSansIOProtocol):
    high = 4  # messages a client may have queued unread before its socket is paused
    limits = ServiceConfig()  # the timeouts; :meth:`configured` gives a server's own

    @classmethod
    def configured(cls, limits: ServiceConfig) -> type[StreamProtocol]:
        """This protocol bounded by ``limits`` (uvicorn makes one protocol object per connection from a class)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._blocked = Deadline(self.loop, self.limits.write_timeout, self.drop)
        self._message = Deadline(self.loop, self.limits.message_timeout, self._message_late)

    @property  # type: ignore[override]
    def read_paused(self) -> bool:
        queue = getattr(self, "queue", None)
        return self._paused or (queue is not None and queue.qsize() < self.high)

    @read_paused.setter
    def read_paused(self, value: bool) -> None:
        self._paused = value

    def connection_made(self, transport: Any) -> None:
        super().connection_made(BoundedTransport.of(transport, self.loop, self.limits.write_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        self._blocked.stop()
        self._message.stop()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client is not taking what it is sent: read nothing more from it (a ping would be answered)."""
        super().pause_writing()
        self.transport.pause_reading()
        self._blocked.start()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._blocked.stop()
        if not self._paused:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.writable.is_set():  # uvicorn resumes reading after a close is sent, whatever the writes
            self.transport.pause_reading()
        conn = self.conn
        if conn.current_size is None and not conn.reader.buffer:  # no message begun and unfinished
            self._message.stop()
        elif not self._message.running:
            self._message.start()

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, but text that is not UTF-8 closes the connection with 1007 without a traceback in the log."""
        frames, self.frames = self.frames, []
        if self.close_sent:  # past the app's close: dropped, reads stay on for the client's close
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self.curr_msg_data_type == "text":
            try:
                message: dict = {"type": "websocket.receive", "text": data.decode()}
            except UnicodeDecodeError:
                self._fail(WS_1007_INVALID_FRAME_PAYLOAD_DATA, "bad_message")
                return
        else:
            message = {"type": "websocket.receive", "bytes": data}
        self.queue.put_nowait(message)  # type: ignore[arg-type]
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    async def receive(self) -> Any:
        """uvicorn's, but the socket stays paused while writes are blocked."""
        message = await self.queue.get()
        if self._paused and self.queue.empty():
            self._paused = False
            if self.writable.is_set():
                self.transport.resume_reading()
        return message

    def _message_late(self) -> None:
        if self._paused or not self.writable.is_set():  # not read by the server's choice: not the client's stall
            self._message.start()
            return
        self._fail(WS_1008_POLICY_VIOLATION, "message_timeout")

    def _fail(self, code: int, reason: str) -> None:
        """Close with ``code`` at once, the app told it is disconnected; what the client sends next is dropped."""
        if self.close_sent or self.conn.state is not State.OPEN:
            self.transport.close()
            return
        self.conn.fail(code, reason)
        self.handle_parser_exception()  # the app's disconnect, the close frame written, the transport closed

    def drop(self) -> None:
        """Drop the connection (writes blocked past ``write_timeout``: the client is not reading; a stopping
        server): the app's next send raises ClientDisconnected, its receive gets the disconnect."""
        self.disconnected = True  # before the transport says so: uvloop may wake a blocked send before that
        self.transport.abort()
