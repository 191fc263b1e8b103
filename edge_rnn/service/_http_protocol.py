"""uvicorn's httptools HTTP protocol, bounded in time and memory whatever a client sends or fails to read.

uvicorn holds a connection that never finishes its request for ever: it arms
its keep-alive timeout only after a response, and buffers a request's headers
without limit. Here (the server's :class:`~edge_rnn.service.ServiceConfig` in
:attr:`HttpProtocol.limits`):

- a request's headers (the WebSocket handshake's too) must arrive within
  ``header_timeout`` seconds of its first byte, or of the connection's opening;
  then 408 and the connection closed. More than :data:`MAX_HEADER_BYTES` of
  them get 431;
- a request's body must end within ``message_timeout`` seconds of its headers:
  then 408 (if the app has not answered yet), and the app's ``receive`` says the
  client is gone;
- writes blocked for ``write_timeout`` seconds (a client not reading its
  response) drop the connection, and a closing connection gets as long to take
  what is left (:class:`~edge_rnn.service._connection.BoundedTransport`).

What the server chooses not to read (a body the app has not taken yet, a
pipelined request) does not count against the client.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._connection import BoundedTransport, Deadline
from edge_rnn.service._errors import Refusal

__all__ = ["HttpProtocol", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 1 << 16  # a request line and headers, all together


class HttpProtocol(HttpToolsProtocol):
    limits = ServiceConfig()  # the timeouts; :meth:`configured` gives a server's own

    @classmethod
    def configured(cls, limits: ServiceConfig) -> type[HttpProtocol]:
        """This protocol bounded by ``limits`` (uvicorn makes one protocol object per connection from a class)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._blocked = Deadline(self.loop, self.limits.write_timeout, self.drop)
        self._request = Deadline(self.loop, self.limits.header_timeout, self._late)
        self._in_headers = False  # a request begun whose headers have not all come
        self._in_body = False  # a request whose headers came and whose body has not all come
        self._header_bytes = 0  # of the request begun, in the reads after the one it began in
        self._running: Any = None  # the request the app is answering (``cycle`` is the last one parsed)

    @property
    def answering(self) -> bool:
        """A request received whole whose answer is being made or sent, to a client taking it: a stopping server
        lets it finish (its connection then closes); a client holding anything else up is dropped."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body and \
            not self.flow.write_paused

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(BoundedTransport.of(transport, self.loop, self.limits.write_timeout))
        self._request.start(self.limits.header_timeout)  # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        self._gone()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _gone(self) -> None:
        """Tell the app its client is gone, for the request it is answering too: uvicorn tells only the last one
        parsed, so with requests pipelined the answer was written to a closed transport (a traceback with uvloop)."""
        for cycle in (self._running, self.cycle):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def data_received(self, data: bytes) -> None:
        counted = self._in_headers
        if counted and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too_large", f"expected at most "
                         f"{MAX_HEADER_BYTES} bytes of request line and headers, got more")
            return
        super().data_received(data)
        if counted and self._in_headers:  # this read was all headers
            self._header_bytes += len(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        self._request.start(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_headers, self._in_body = False, True
        self._request.start(self.limits.message_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._request.stop()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._stop()  # the WebSocket protocol takes the connection over, with bounds of its own
        super().handle_websocket_upgrade()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._blocked.start()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._blocked.stop()

    def _stop(self) -> None:
        self._blocked.stop()
        self._request.stop()

    def _late(self) -> None:
        if self.flow.read_paused:  # not read by the server's choice: not the client's stall
            self._request.start()
            return
        cycle = self.cycle
        if not self._in_body and cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # the next request's headers stall behind an answer under way: close after it
            return
        what = "body" if self._in_body else "headers"
        seconds = self.limits.message_timeout if self._in_body else self.limits.header_timeout
        self._refuse(HTTPStatus.REQUEST_TIMEOUT, "timeout", f"expected the request's {what} within {seconds:g} s")

    def _refuse(self, status: HTTPStatus, code: str, message: str) -> None:
        """Answer ``status`` with the service's JSON error (unless an answer is being written, or the request whose
        body stalls was answered already), and close the connection; the app's receive says the client is gone,
        and what it sends goes nowhere."""
        self._stop()
        self._gone()
        running = self._running
        if running is None or not running.response_started or (running.response_complete and not self._in_body):
            body = json.dumps(Refusal(status.value, code, message).body()).encode()
            head = (f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
            self.transport.write(head.encode() + body)
        self.transport.close()

    def drop(self) -> None:
        """Drop the connection (writes blocked past ``write_timeout``: the client is not reading; a stopping
        server): the app's receive says the client is gone, and what it sends goes nowhere."""
        self._gone()  # before the transport says so: uvloop may wake a blocked send before that
        self.transport.abort()
