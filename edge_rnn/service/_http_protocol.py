"""uvicorn's httptools HTTP protocol, bounded in time and memory whatever a client sends or fails to read.

uvicorn holds a connection that never finishes its request for ever: it arms
its keep-alive timeout only after a response, buffers a request's headers
without limit, and parses every pipelined request a read holds at once. Here
(the server's :class:`~edge_rnn.service.ServiceConfig` in
:attr:`HttpProtocol.limits`):

- a connection beyond ``max_connections`` open ones is answered 503 at once
  and closed, before anything is read (a WebSocket handshake too): the process
  never runs out of file descriptors;
- a request's headers (the WebSocket handshake's too) must arrive within
  ``header_timeout`` seconds of its first byte, or of the connection's opening;
  then 408 and the connection closed. More than :data:`MAX_HEADER_BYTES` of
  them, or more than :data:`MAX_HEADER_FIELDS` fields, get 431, however the
  bytes are split into reads;
- a request's body must end within ``message_timeout`` seconds of its headers:
  then 408 (if the app has not answered yet), and the app's ``receive`` says the
  client is gone;
- bytes are parsed a piece at a time, and while :data:`MAX_PIPELINED` requests
  wait behind the one being answered the rest stays unparsed and the socket is
  not read: pipelined requests cost a few requests' memory, answered in order;
- bytes that do not parse as HTTP after a request are answered 400 (and the
  connection closed) once the answers of the requests before them are written;
- writes blocked for ``write_timeout`` seconds (a client not reading its
  response) drop the connection, and a closing connection gets as long to take
  what is left (:class:`~edge_rnn.service._connection.BoundedTransport`).

What the server chooses not to read (a body the app has not taken yet, a
pipelined request) does not count against the client. The warnings a client
can cause (a malformed request, a refused connection) are logged at most once
per :data:`LOG_EVERY` seconds each, with the count of those not logged.
"""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from edge_rnn.service._config import ServiceConfig
from edge_rnn.service._connection import BoundedTransport, Deadline
from edge_rnn.service._errors import Refusal

__all__ = ["HttpProtocol", "MAX_HEADER_BYTES", "MAX_HEADER_FIELDS", "MAX_PIPELINED", "LOG_EVERY"]

MAX_HEADER_BYTES = 1 << 16  # a request line and headers, all together
# the service's clients send under 15 fields; 100 is nginx's and Apache's default (LimitRequestFields): each field
# costs the server a few hundred bytes of Python objects, 20000 tiny ones in 64 KiB would cost megabytes
MAX_HEADER_FIELDS = 100
MAX_PIPELINED = 8  # requests parsed ahead of the one being answered; the rest waits unparsed, the socket unread
LOG_EVERY = 10.0  # seconds between two log lines of one warning a client can cause
_PIECE = 1 << 10  # bytes parsed at once outside a body of known length: at most ~60 requests begin in one piece
_BODY_PIECE = 1 << 14  # bytes parsed at once in a chunked body


class _Throttled:
    """Each message logged at most once per :data:`LOG_EVERY` seconds, saying how many were not."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warning(self, logger: logging.Logger, message: str) -> None:
        now, last = time.monotonic(), self._last.get(message)
        if last is not None and now - last < LOG_EVERY:
            self._quiet[message] = self._quiet.get(message, 0) + 1
            return
        self._last[message] = now
        quiet = self._quiet.pop(message, 0)
        logger.warning("%s%s", message, f" ({quiet} more in the last {now - last:.0f} s, not logged)" if quiet else "")


WARNINGS = _Throttled()


class _Flow(FlowControl):
    """uvicorn's flow control, but the socket stays paused while bytes received wait unparsed (uvicorn resumes it
    after every answer and as the app takes a body); it resumes once they are parsed, if it was meant to."""

    def __init__(self, transport: Any, holding: Any):
        super().__init__(transport)
        self._holding, self._deferred = holding, False

    def pause_reading(self) -> None:
        self._deferred = False
        super().pause_reading()

    def resume_reading(self) -> None:
        if self._holding():
            self._deferred = True
        else:
            super().resume_reading()

    def hold(self) -> None:
        """Pause for the bytes held (reading resumes when they are parsed, unless uvicorn paused it meanwhile)."""
        if not self.read_paused:
            self._deferred = True
        super().pause_reading()

    def release(self) -> None:
        if self._deferred:
            self._deferred = False
            super().resume_reading()


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
        self._header_bytes = 0  # of the request begun, counted by the pieces parsed
        self._fields = 0  # header fields of the request begun
        self._body_left: int | None = None  # bytes of the body arriving, where it has a Content-Length
        self._running: Any = None  # the request the app is answering (``cycle`` is the last one parsed)
        self._unparsed, self._at = b"", 0  # bytes received, parsed up to ``_at``
        self._parsing = True  # False once the parser is done with this connection (error, upgrade, refusal)
        self._bad = False  # a request that does not parse: 400 once the answers before it are written
        self._too_large: str | None = None  # why the headers were refused (431)

    @property
    def answering(self) -> bool:
        """A request received whole whose answer is being made or sent, to a client taking it: a stopping server
        lets it finish (its connection then closes); a client holding anything else up is dropped."""
        cycle = self._running
        return cycle is not None and not cycle.response_complete and not cycle.more_body and \
            not self.flow.write_paused

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(BoundedTransport.of(transport, self.loop, self.limits.write_timeout))
        self.flow = _Flow(self.transport, self._holding)
        most = self.limits.max_connections
        if most is not None and len(self.connections) > most:
            WARNINGS.warning(self.logger, f"Refused connections beyond --max-connections {most} (503).")
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "overloaded",
                         f"expected at most {most} open connections, got one more")
            return
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

    def _holding(self) -> bool:
        return self._at < len(self._unparsed)

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            return
        self._unset_keepalive_if_required()
        self._unparsed = self._unparsed[self._at:] + data if self._holding() else data
        self._at = 0
        self._parse()

    def _parse(self) -> None:
        """Parse what was received a piece at a time, until it is all parsed or enough requests wait."""
        view = memoryview(self._unparsed)
        while self._parsing and self._at < len(view):
            if len(self.pipeline) >= MAX_PIPELINED:
                self.flow.hold()
                return
            n = self._body_left if self._in_body and self._body_left else _BODY_PIECE if self._in_body else _PIECE
            piece = view[self._at:self._at + n]
            self._at += len(piece)
            self._feed(piece)
            if self._in_headers and self._parsing:
                self._header_bytes += len(piece)  # with what preceded the request in its first piece: <1 KiB more
                if self._header_bytes > MAX_HEADER_BYTES:
                    self._too_large = f"expected at most {MAX_HEADER_BYTES} bytes of request line and headers, " \
                                      "got more"
                    self._bad_request()
        view.release()
        self._unparsed, self._at = b"", 0
        self.flow.release()

    def _feed(self, piece: memoryview) -> None:
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            self._unparsed, self._at = b"", 0  # what follows a handshake in its read is dropped, as uvicorn does
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                WARNINGS.warning(self.logger, "Unsupported upgrade request.")
        except httptools.HttpParserError:
            self._bad_request()

    def _bad_request(self) -> None:
        """The bytes received do not parse (or their headers are too large): nothing more is read; answered 400
        (431) once the requests before are answered, then closed. A request whose body broke gets it at once."""
        self._parsing = False
        self.flow.pause_reading()
        status, code = HTTPStatus.BAD_REQUEST, "bad_request"
        if self._too_large is not None:
            status, code = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too_large"
        else:
            WARNINGS.warning(self.logger, "Invalid HTTP request received.")
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:  # its body does not parse
            queued = [entry for entry in self.pipeline if entry[0] is cycle]
            if not queued:
                self._refuse(status, code, "expected an HTTP/1.1 request body, got bytes that do not parse as one")
                return
            self.pipeline.remove(queued[0])
        self._bad = (status, code)
        self._answer_bad()

    def _answer_bad(self) -> None:
        running = self._running
        if self._bad and not self.pipeline and (running is None or running.response_complete):
            status, code = self._bad
            message = self._too_large or "expected an HTTP/1.1 request, got bytes that do not parse as one"
            self._refuse(status, code, message)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes, self._fields = True, 0, 0
        self._request.start(self.limits.header_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADER_FIELDS:
            self._too_large = f"expected at most {MAX_HEADER_FIELDS} header fields, got more"
            raise ValueError(self._too_large)  # the parser stops: feed_data raises
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers, self._in_body = False, True
        self._body_left = _content_length(self.headers)
        self._request.start(self.limits.message_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_left is not None:
            self._body_left -= len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body, self._body_left = False, None
        self._request.stop()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next request waiting
        if self.transport.is_closing():
            return
        if self._bad:
            self._answer_bad()
        elif self._holding():
            self._parse()  # the requests held back, up to MAX_PIPELINED again

    def handle_websocket_upgrade(self) -> None:
        self._stop()  # the WebSocket protocol takes the connection over, with bounds of its own
        self._parsing = False
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        """A stopping server: the request being answered is the last (the ones waiting are never begun)."""
        self.pipeline.clear()
        self._unparsed, self._at = b"", 0
        running = self._running
        if running is None or running.response_complete:
            self.transport.close()
        else:
            running.keep_alive = False

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
        self._parsing = False
        running = self._running
        if running is None or not running.response_started or (running.response_complete and not self._in_body):
            body = json.dumps(Refusal(status.value, code, message).body()).encode()
            retry = "retry-after: 1\r\n" if status == HTTPStatus.SERVICE_UNAVAILABLE else ""
            head = (f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n{retry}connection: close\r\n\r\n")
            self.transport.write(head.encode() + body)
            self._logged(status)
        self.transport.close()

    def _logged(self, status: HTTPStatus) -> None:
        """A refusal written here on the access log (``serve --access-log``), in uvicorn's own form: the method and
        target of a request whose headers came (its body stalled or did not parse), else ``- -`` (its headers
        stalled, were too large or did not parse; a connection refused or silent before any request)."""
        if not self.access_log:
            return
        method, target, version = "-", "-", "1.1"
        if self._in_body and "raw_path" in self.scope:
            scope = self.scope
            method, target, version = scope["method"], get_path_with_query_string(scope), scope["http_version"]
        self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr({"client": self.client}), method, target,
                                version, status.value)

    def drop(self) -> None:
        """Drop the connection (writes blocked past ``write_timeout``: the client is not reading; a stopping
        server): the app's receive says the client is gone, and what it sends goes nowhere."""
        self._gone()  # before the transport says so: uvloop may wake a blocked send before that
        self.transport.abort()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A request's Content-Length (the parser has checked it is one number), None for a chunked body."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
