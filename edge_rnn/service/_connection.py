"""What bounds one connection, whichever protocol speaks on it: a close that cannot hang, and deadlines.

asyncio's ``transport.close()`` waits until the write buffer is flushed: a
client that stops reading keeps the connection, its file descriptor and its
buffer for ever. :class:`BoundedTransport` closes like the transport it wraps,
and drops (``abort``) whatever the client has not taken ``linger`` seconds
later. :class:`Deadline` is one restartable timer (a stalled message, blocked
writes). No web framework here; the uvicorn protocols (``_protocol``,
``_http_protocol``) use both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["BoundedTransport", "Deadline"]

# the transport's methods used as they are (bound once: uvicorn calls write and the reading switches per message)
_PASSED = ("write", "writelines", "write_eof", "can_write_eof", "abort", "is_closing", "is_reading", "pause_reading",
           "resume_reading", "get_extra_info", "get_protocol", "set_protocol", "get_write_buffer_size",
           "get_write_buffer_limits", "set_write_buffer_limits")


class BoundedTransport:
    """``transport``, whose :meth:`close` drops the data still unsent after ``linger`` seconds."""

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop, linger: float):
        self.inner, self._loop, self.linger = transport, loop, linger
        self._abort: asyncio.TimerHandle | None = None
        for name in _PASSED:
            setattr(self, name, getattr(transport, name))

    @classmethod
    def of(cls, transport: Any, loop: asyncio.AbstractEventLoop, linger: float) -> BoundedTransport:
        """``transport`` bounded (once: a WebSocket takes over its HTTP connection's transport as it is)."""
        return transport if isinstance(transport, cls) else cls(transport, loop, linger)

    def close(self) -> None:
        inner = self.inner
        inner.close()
        if self._abort is None and inner.get_write_buffer_size():  # a client not reading must not keep it
            self._abort = self._loop.call_later(self.linger, inner.abort)

    def __getattr__(self, name: str) -> Any:  # anything else a protocol may ask of its transport
        return getattr(self.inner, name)


class Deadline:
    """A timer calling ``expired`` ``seconds`` after :meth:`start`, unless :meth:`stop` comes first."""

    __slots__ = ("_loop", "seconds", "_expired", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, expired: Callable[[], None]):
        self._loop, self.seconds, self._expired = loop, seconds, expired
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self, seconds: float | None = None) -> None:
        """Run (again) from now, for ``seconds`` (default: :attr:`seconds`)."""
        self.stop()
        self._handle = self._loop.call_later(self.seconds if seconds is None else seconds, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._expired()
