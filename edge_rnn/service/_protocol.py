"""uvicorn's sans-I/O WebSocket protocol, pausing a socket's reads only when a client runs ahead, and bounded.

uvicorn pauses reading after every message it queues for the app and resumes
when the app takes it: for a stream of one message at a time, that is two
epoll calls and the event loop's reader bookkeeping per message (about a tenth
of the event loop's time at capacity, measured with py-spy; docs/performance.md).
Here the protocol's ``read_paused`` flag reads as set while fewer than
:attr:`StreamProtocol.high` messages wait, so uvicorn pauses the socket only
when that many are queued unread; memory per connection stays bounded by
``high`` messages of at most ``ws_max_size`` bytes each, one being received and
one read (at most 256 KiB) not yet parsed.

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
  a traceback at ERROR for each such message);
- a message comes in at most ``max_message_fragments`` frames (each counts, an
  empty one too), or the connection is closed with 1008 ``too_many_fragments``:
  each frame costs a few microseconds of parsing on the event loop and ~100
  bytes held until its message ends, whatever its size;
- the event loop parses at most :data:`TURN_FRAMES` frames of one connection
  (and at most one message's end) before the others get their turn: what a read
  holds beyond that waits, unparsed, for the next turn, the socket paused;
- messages received whole and not yet taken by their streams hold at most
  ``max_queued_bytes`` server-wide: beyond that, a connection with a message
  waiting is not parsed further (nor read) until its stream takes it; each
  connection still gets one message at a time, nothing is dropped or reordered.

If a uvicorn release drops the ``read_paused`` flag, the property is never read
and uvicorn's own behaviour (a pause after every message) is what runs: slower,
not wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._connection import BoundedTransport, Deadline
from edge_rnn.service._status import WS_1007_INVALID_FRAME_PAYLOAD_DATA, WS_1008_POLICY_VIOLATION

__all__ = ["StreamProtocol", "TURN_FRAMES"]

TURN_FRAMES = 256  # frames of one connection parsed per turn of the event loop (~1 ms at ~4 us a frame)


class _Budget:
    """Bytes of the messages queued unread, over one server's connections."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0


def _next_cut(buf: Sequence[int], skip: int, frames: int) -> tuple[int, int, int]:
    """How much of ``buf`` (client frames, the current one's next ``skip`` bytes first) to parse at once: at most
    ``frames`` frames, and no more than one message's end, never a frame's header cut. (the bytes, the bytes of
    the last frame still to come beyond them, the frames begun)."""
    n, pos, begun = len(buf), skip, 0
    while pos < n and begun < frames:
        if pos + 2 > n:
            break
        b0, b1 = buf[pos], buf[pos + 1]
        size = b1 & 0x7F
        ext = 2 if size == 126 else 8 if size == 127 else 0
        head = 2 + ext + (4 if b1 & 0x80 else 0)
        if pos + head > n:
            break
        if ext:
            size = int.from_bytes(bytes(buf[pos + 2:pos + 2 + ext]), "big")
        pos += head + size
        begun += 1
        if b0 & 0x80 and b0 & 0x0F < 8:  # FIN on a data frame: a message ends
            break
    return (n, pos - n, begun) if pos > n else (pos, 0, begun)


class StreamProtocol(WebSocketsSansIOProtocol):
    high = 4  # messages a client may have queued unread before its socket is paused
    limits = ServiceConfig()  # the timeouts; :meth:`configured` gives a server's own
    budget = _Budget(limits.max_queued_bytes)
    _reading = True  # uvicorn's __init__ sets read_paused before ours runs
    _taking = False  # the stream waits for a message (in :meth:`receive`)

    @classmethod
    def configured(cls, limits: ServiceConfig) -> type[StreamProtocol]:
        """This protocol bounded by ``limits`` (uvicorn makes one protocol object per connection from a class)."""
        return type(cls.__name__, (cls,), {"limits": limits, "budget": _Budget(limits.max_queued_bytes)})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._blocked = Deadline(self.loop, self.limits.write_timeout, self.drop)
        self._message = Deadline(self.loop, self.limits.message_timeout, self._message_late)
        self._unfed = bytearray()  # read, not parsed yet (past this turn's frames, or the server's bounds)
        self._skip = 0  # bytes of the frame being received still to come after what was parsed
        self._turn: asyncio.Handle | None = None  # the parsing left for a later turn, scheduled
        self._fragments = 0  # of the message being received
        self._held = 0  # bytes of this connection's messages queued unread (in :attr:`budget`)

    @property  # type: ignore[override]
    def read_paused(self) -> bool:  # uvicorn's, read after a close is sent (then it resumes reading)
        return not self._reading

    @read_paused.setter
    def read_paused(self, value: bool) -> None:
        if not value and not self._reading:  # uvicorn resumes reading next: parse what waits, then settle
            self._reading = True
            self._wake()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(BoundedTransport.of(transport, self.loop, self.limits.write_timeout))

    def connection_lost(self, exc: Exception | None) -> None:
        self._blocked.stop()
        self._message.stop()
        if self._turn is not None:
            self._turn.cancel()
        self._unfed.clear()
        self._take(self._held)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client is not taking what it is sent: read nothing more from it (a ping would be answered)."""
        super().pause_writing()
        self._read(False)
        self._blocked.start()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._blocked.stop()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if not self.handshake_initiated:  # the upgrade request, handed over whole by the HTTP protocol
            super().data_received(data)
            self._settle()
            return
        if not self._unfed and self._turn is None and self._parsing():
            cut, skip, _ = _next_cut(data, self._skip, TURN_FRAMES)
            if cut == len(data):  # the usual case: all of it, now
                self._skip = skip
                super().data_received(data)
                self._settle()
                return
        self._unfed += data
        self._feed()

    def _feed(self) -> None:
        """Parse what was read, within this turn's frames and the server's bounds; the rest waits."""
        self._turn = None
        buf, frames = self._unfed, TURN_FRAMES
        while buf and frames > 0 and self._parsing():
            cut, self._skip, begun = _next_cut(buf, self._skip, frames)
            if not cut:  # a frame's header not whole yet: more bytes first
                break
            chunk = buf[:cut]
            del buf[:cut]
            frames -= max(begun, 1)
            super().data_received(chunk)
            if self.transport.is_closing():
                buf.clear()
                return
        self._settle(more=frames <= 0 and bool(buf))

    def _parsing(self) -> bool:
        """Whether what this client sent may be parsed now: its replies taken, fewer than :attr:`high` of its
        messages waiting; and while the server's messages waiting pass their budget, only for a stream that
        waits for its next message (none queued, none being stepped)."""
        if not self.writable.is_set():
            return False
        if self.close_sent:  # its messages are dropped from now on
            return True
        waiting = self.queue.qsize()
        if waiting >= self.high:
            return False
        return self.budget.used < self.budget.limit or (waiting == 0 and self._taking)

    def _settle(self, *, more: bool = False) -> None:
        """Read on only while what is read can be parsed; ``more``: frames wait for the next turn."""
        if more and self._turn is None:
            self._turn = self.loop.call_soon(self._feed)
        self._read(self._turn is None and self._parsing())  # what waits then is a frame's header begun
        conn = self.conn
        if conn.current_size is None and not conn.reader.buffer and not self._unfed:  # no message begun
            self._message.stop()
        elif not self._message.running:
            self._message.start()

    def _read(self, on: bool) -> None:
        if on != self._reading:
            self._reading = on
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _wake(self) -> None:
        """Parse what waits, and read again if that is all, at the next turn."""
        if self._turn is None:
            self._turn = self.loop.call_soon(self._feed)

    def _take(self, size: int) -> None:
        size = min(size, self._held)
        self._held -= size
        self.budget.used -= size

    def handle_text(self, event: Any) -> None:
        self._fragments = 1
        super().handle_text(event)

    def handle_bytes(self, event: Any) -> None:
        self._fragments = 1
        super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        self._fragments += 1
        if self._fragments > self.limits.max_message_fragments:
            self._fail(WS_1008_POLICY_VIOLATION, "too_many_fragments")
            return
        super().handle_cont(event)

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, but text that is not UTF-8 closes the connection with 1007 without a traceback in the log;
        the socket's reading is settled by the caller."""
        frames, self.frames = self.frames, []
        if self.close_sent:  # past the app's close: dropped, reads stay on for the client's close
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self._fail(WS_1007_INVALID_FRAME_PAYLOAD_DATA, "bad_message")
                return
            message: dict = {"type": "websocket.receive", "text": text}
            size = len(text)
        else:
            message = {"type": "websocket.receive", "bytes": data}
            size = len(data)
        self._held += size
        self.budget.used += size
        self.queue.put_nowait(message)  # type: ignore[arg-type]

    async def receive(self) -> Any:
        """uvicorn's, but what waits is parsed (and the socket read) as the server's bounds allow; and while the
        client is not taking its replies, its next message waits (its step and reply would be held too)."""
        if not self.writable.is_set():
            await self.writable.wait()  # set when the writes drain, and when the connection is lost
        queue = self.queue
        if queue.empty():  # the stream waits for its client: over the budget, this is when its socket is parsed
            self._taking = True
            if not self._reading:
                self._wake()
            message = await queue.get()
            self._taking = False
        else:
            message = queue.get_nowait()
        if self._held:
            self._take(len(message.get("bytes") or message.get("text") or b""))
        if not self._reading:
            self._wake()
        return message

    def _message_late(self) -> None:
        if not self._reading:  # not read by the server's choice: not the client's stall
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
