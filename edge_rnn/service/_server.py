"""uvicorn's server with a drain: a stopping server first lets open streams fetch their snapshots.

The first SIGINT or SIGTERM (or :meth:`DrainingServer.handle_exit` from any
thread) does not stop uvicorn at once. The service stops taking new streams
and steps (HTTP 503, a WebSocket error ``shutting_down``; new connections
close with 1001), steps already accepted finish, and each open stream can
still fetch its snapshot (``GET /v1/streams/{id}/snapshot``, or the socket's
``{"type":"snapshot"}``). Once every stream is closed, or after the
service's ``drain_timeout``, the sockets left are closed with 1001 and uvicorn
shuts down as usual. A second signal skips what is left of the drain: uvicorn's
own shutdown begins (the bounded one below, about :data:`CLOSE_GRACE`), and a
third SIGINT stops without waiting for anything, as uvicorn does. The server
says when its drain begins (``notify``), since a quiet Ctrl-C may last the
whole ``drain_timeout``.

No client holds a stopping server up: the closing messages take at most
:data:`~edge_rnn.service._service.CLOSE_GRACE` seconds, and the connections
still open that long after uvicorn's shutdown began (a client not reading its
close, a request still sending its body) are dropped, but for HTTP requests
received whole whose answers are still being made and taken (steps accepted
finish, and are answered).

:func:`connection_limit` is the default of ``max_connections``: it raises the
process's soft open-file limit to its hard limit, where allowed, and keeps
the connections well below it, so that the server never runs out of file
descriptors (and can still open its own files, answer, and log).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import uvicorn

from edge_rnn.service._service import CLOSE_GRACE

__all__ = ["DrainingServer", "connection_limit"]

_SPARE_FDS = 64  # the process's own: the listening socket, the event loop's, onnxruntime's, logs, imports


def connection_limit() -> int:
    """The open connections this process can hold with file descriptors to spare: its soft ``RLIMIT_NOFILE``,
    first raised to the hard limit where allowed, less :data:`_SPARE_FDS` and an eighth (1024: 896)."""
    try:
        import resource
    except ImportError:  # not POSIX: no limit to read
        return 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft == resource.RLIM_INFINITY or soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            soft = soft if soft != resource.RLIM_INFINITY else 1 << 16
    return max(1, soft - max(_SPARE_FDS, soft // 8))


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Any, notify: Callable[[str], None] | None = None):
        super().__init__(config)
        self.service = service
        self.notify = notify  # called with a line to show when the drain begins (serve: stderr)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._dropper: asyncio.TimerHandle | None = None
        self.draining = False
        self.drained: tuple[int, int] | None = None  # after a drain: (streams open when it began, left at its end)

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        """A signal handler (main thread) or a call from any thread: the first drains, the next stop."""
        if self.draining:  # uvicorn's own steps, but the signal is not raised again once stopped: exit 0, as after
            self.force_exit = self.should_exit and sig == signal.SIGINT  # one signal, with the stop line
            self.should_exit = True
            return
        if self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self.service.begin_drain()
        if self.notify is not None:
            self.notify(self.drain_message(len(self.service.registry.streams)))
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        began = len(self.service.registry.streams)
        await self.service.drain(self.service.config.drain_timeout)
        self.drained = (began, len(self.service.registry.streams))
        self.should_exit = True

    def drain_message(self, streams: int) -> str:
        """What the server says when its drain begins."""
        if not streams:
            return "stopping: no open streams to drain"
        return (f"draining {streams} open stream{'s' * (streams != 1)} (up to --drain-timeout "
                f"{self.service.config.drain_timeout:g} s); Ctrl-C again to stop without waiting for them")

    def stop_message(self) -> str:
        """What the server says once it stopped: how many streams the drain let finish, and how many it closed."""
        if self.drained is None:
            return "stopped before the drain ended (a second signal)" if self.draining else "stopped"
        began, left = self.drained
        closed = f"; {left} still open were closed" if left else ""
        return f"stopped: drained {began - left} of {began} open stream{'s' * (began != 1)}{closed}"

    async def shutdown(self, sockets: Any = None) -> None:
        """uvicorn's, but the connections still open :data:`CLOSE_GRACE` seconds later are dropped (but for answers
        under way)."""
        self._dropper = asyncio.get_running_loop().call_later(CLOSE_GRACE, self._drop_connections)
        try:
            await super().shutdown(sockets)
        finally:
            self._dropper.cancel()

    def _drop_connections(self) -> None:
        answering = False
        for connection in list(self.server_state.connections):
            if getattr(connection, "answering", False):
                answering = True
                continue
            drop = getattr(connection, "drop", None) or getattr(getattr(connection, "transport", None), "abort", None)
            if drop is not None:  # the protocol's own (the app told first), else uvicorn's protocol's transport's
                drop()
        if answering:  # looked at again: one whose client stops taking its answer is dropped too
            self._dropper = asyncio.get_running_loop().call_later(CLOSE_GRACE, self._drop_connections)
